"""Re-evaluate a finished `benchmarks/quality.py` or `benchmarks/compare.py` run's policies under other acting
settings, no retraining.

Acting is a choice separate from training: e.g. Q-based action selection (`eval.q_select_samples`) acts with
the best of K sampled actions by the critic instead of the policy's greedy action, and the greedy decoding rule
(`model.action_decode`: argmax, mean, topk with `model.action_decode_k`) reads the same trained distribution
differently. This loads each (method, seed) export of the run, evaluates it with its saved config plus
`--set eval.FIELD=VALUE` / `--set model.action_decode[_k]=VALUE` on the same seeded episodes, and writes the
run's tables (summary, paired by seed against BC, per task) for the new setting beside the original's means.

    .venv/bin/python benchmarks/quality_reeval.py outputs/quality --set eval.q_select_samples=16 \\
        --output outputs/quality/qselect16.md
    .venv/bin/python benchmarks/quality_reeval.py outputs/compare --set model.action_decode=argmax
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quality import run_name, score_sections  # this folder is on sys.path when run as a script

# Model fields that change how a trained network acts, not what it computes.
ACTING_MODEL_FIELDS = ("action_decode", "action_decode_k")


def parse(overrides: dict[str, str]) -> dict[str, Any]:
    """Command-line values as config values: numbers, lists and booleans as JSON, anything else a string."""
    return {k: json.loads(v) if v[:1] in "0123456789-[{tfn" else v for k, v in overrides.items()}


def original_mean(runs: dict[str, dict[str, Any]]) -> float:
    """A method's mean normalised score over its seeds in the original run."""
    return sum(r["report"]["summary"]["normalized_score_mean"] for r in runs.values()) / len(runs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="output directory of a finished benchmarks/quality.py or compare.py run "
                               "(has results.json)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="acting override (repeatable): eval.FIELD or model.action_decode / model.action_decode_k, "
                        "e.g. eval.q_select_samples=16")
    p.add_argument("--methods", default="", help="comma-separated subset of the run's methods (default: all)")
    p.add_argument("--output", help="write the Markdown report here (default: RUN/reeval-<settings>.md)")
    args = p.parse_args(argv)
    overrides: dict[str, str] = {}
    decoding: dict[str, str] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key in {f"model.{f}" for f in ACTING_MODEL_FIELDS} and value:
            decoding[key.removeprefix("model.")] = value
        elif key.startswith("eval.") and value:
            overrides[key.removeprefix("eval.")] = value
        else:
            p.error(f"--set {item!r}: expected eval.FIELD=VALUE or model.action_decode[_k]=VALUE")
    run = Path(args.run)
    try:
        original = json.loads((run / "results.json").read_text())
    except (OSError, ValueError) as e:
        p.error(f"{run}: not a finished quality run ({e})")
    logging.basicConfig(level=logging.WARNING)
    from pac.config import Config
    from pac.evaluation import evaluate_model, load_policy_model

    runs = original["methods"] if "methods" in original else original["ours"]  # quality.py / compare.py
    methods = [m for m in runs if not args.methods or m in args.methods.split(",")]
    tasks = original["args"]["tasks"] if "args" in original else original["tasks"]
    results: dict[str, dict[int, dict[str, Any]]] = {}
    start = time.perf_counter()
    for method in methods:
        for seed in sorted(int(s) for s in runs[method]):
            export = runs[method][str(seed)].get("export") or run / "runs" / run_name(method, seed) / "export"
            net, saved = load_policy_model(str(export))
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(saved.eval)})
            if unknown:
                p.error(f"unknown eval field(s) {unknown}")
            cfg = Config.from_dict({**saved.to_dict(), "eval": {**dataclasses.asdict(saved.eval), **parse(overrides)},
                                    "model": {**dataclasses.asdict(saved.model), **parse(decoding)}})
            net.cfg = cfg.model  # the acting rule reads the network's config; the weights are untouched
            report = evaluate_model(net, cfg, name=f"{method} seed {seed}")
            results.setdefault(method, {})[seed] = {"report": report.to_dict()}
            print(f"{method} seed {seed}: {report.mean_normalized_score:.3f} (was "
                  f"{runs[method][str(seed)]['report']['summary']['normalized_score_mean']:.3f})",
                  flush=True)
    settings = ", ".join([*(f"eval.{k}={v}" for k, v in overrides.items()),
                          *(f"model.{k}={v}" for k, v in decoding.items())]) or "the run's own settings"
    command = " ".join(sys.argv[1:] if argv is None else argv)
    md = [f"# {run.name}: re-evaluated with {settings}", "",
          f"Command: `.venv/bin/python benchmarks/quality_reeval.py {command}`", "",
          f"Runtime {(time.perf_counter() - start) / 60:.1f} min. The original evaluation's means: "
          + ", ".join(f"{m} {original_mean(runs[m]):.3f}" for m in methods), "",
          *score_sections(results, tasks)]
    named = {**overrides, **decoding}
    out = Path(args.output) if args.output else run / f"reeval-{'-'.join(f'{k}{v}' for k, v in named.items())}.md"
    out.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
