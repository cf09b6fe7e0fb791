"""Re-evaluate a finished `benchmarks/quality.py` run's policies under other evaluation settings, no retraining.

Acting is a choice separate from training: e.g. Q-based action selection (`eval.q_select_samples`) acts with
the best of K sampled actions by the critic instead of the policy's greedy action. This loads each
(method, seed) export of the run, evaluates it with its saved config plus `--set eval.FIELD=VALUE` on the same
seeded episodes, and writes the run's tables (summary, paired by seed against BC, per task) for the new
setting beside the original's means.

    .venv/bin/python benchmarks/quality_reeval.py outputs/quality --set eval.q_select_samples=16 \\
        --output outputs/quality/qselect16.md
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="output directory of a finished benchmarks/quality.py run (has results.json)")
    p.add_argument("--set", action="append", default=[], metavar="eval.FIELD=VALUE",
                   help="evaluation override (repeatable), e.g. eval.q_select_samples=16")
    p.add_argument("--methods", default="", help="comma-separated subset of the run's methods (default: all)")
    p.add_argument("--output", help="write the Markdown report here (default: RUN/reeval-<settings>.md)")
    args = p.parse_args(argv)
    overrides: dict[str, str] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if not key.startswith("eval.") or not value:
            p.error(f"--set {item!r}: expected eval.FIELD=VALUE")
        overrides[key.removeprefix("eval.")] = value
    run = Path(args.run)
    try:
        original = json.loads((run / "results.json").read_text())
    except (OSError, ValueError) as e:
        p.error(f"{run}: not a finished quality run ({e})")
    logging.basicConfig(level=logging.WARNING)
    from pac.config import Config
    from pac.evaluation import evaluate_model, load_policy_model

    methods = [m for m in original["methods"] if not args.methods or m in args.methods.split(",")]
    tasks = original["args"]["tasks"]
    results: dict[str, dict[int, dict[str, Any]]] = {}
    start = time.perf_counter()
    for method in methods:
        for seed in sorted(int(s) for s in original["methods"][method]):
            export = run / "runs" / run_name(method, seed) / "export"
            net, saved = load_policy_model(str(export))
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(saved.eval)})
            if unknown:
                p.error(f"unknown eval field(s) {unknown}")
            cfg = Config.from_dict({**saved.to_dict(), "eval": {**dataclasses.asdict(saved.eval), **{
                k: json.loads(v) if v[:1] in "0123456789-[{tfn" else v for k, v in overrides.items()}}})
            report = evaluate_model(net, cfg, name=f"{method} seed {seed}")
            results.setdefault(method, {})[seed] = {"report": report.to_dict()}
            print(f"{method} seed {seed}: {report.mean_normalized_score:.3f} (was "
                  f"{original['methods'][method][str(seed)]['report']['summary']['normalized_score_mean']:.3f})",
                  flush=True)
    settings = ", ".join(f"eval.{k}={v}" for k, v in overrides.items()) or "the run's own settings"
    command = " ".join(sys.argv[1:] if argv is None else argv)
    md = [f"# {run.name}: re-evaluated with {settings}", "",
          f"Command: `.venv/bin/python benchmarks/quality_reeval.py {command}`", "",
          f"Runtime {(time.perf_counter() - start) / 60:.1f} min. The original evaluation's means: "
          + ", ".join(f"{m} {original['summary'][m]['normalized_score_mean']:.3f}" for m in methods), "",
          *score_sections(results, tasks)]
    out = Path(args.output) if args.output else run / f"reeval-{'-'.join(f'{k}{v}' for k, v in overrides.items())}.md"
    out.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
