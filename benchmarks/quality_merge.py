"""Merge several `benchmarks/quality.py` runs into one report: the same tables over the union of their
methods and training seeds, plus each method's difference from BC paired by seed.

Runs of the benchmark are independent per (method, seed) and deterministic, so one process per seed (two
at a time on a 2-core machine) gives the same numbers as one process with `--seeds 0,1,...`; this joins them.
It refuses runs whose settings differ in anything but the methods, seeds and output (a different dataset or
budget would make the comparison meaningless), and runs of one method whose resolved objectives differ (a
run made before a default changed). `DIR:BC,BC+Q` takes only those methods from a run.

    .venv/bin/python benchmarks/quality_merge.py outputs/quality-damped-s* outputs/quality-damped-bcq-* \\
        --output outputs/quality-damped.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quality import parse_args, score_sections  # this folder is on sys.path when run as a script

# Settings that may differ between merged runs. The objective flags may too: each method's resolved objective
# is compared instead (a BC run is the same BC whatever --objective n_step=... its PAC runs had).
PER_RUN = {"output", "seeds", "methods", "threads", "log_every", "objective", "pac_alpha", "bcq_beta"}
METHOD_ORDER = ("BC", "BC+Q", "PAC")
# A behaviour's parameters shape no data when the run generated none of its episodes.
BEHAVIOUR_ARGS = {
    "noisy": ("noisy_expert_prob", "noisy_action_std"),
    "damped": ("damped_scale", "damped_noise_std", "damped_expert_prob"),
}


def data_settings(args: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run that must match to merge it: the per-run ones and unused behaviours' left out."""
    unused = {k for count, keys in BEHAVIOUR_ARGS.items() if not args.get(count) for k in keys}
    return {k: v for k, v in args.items() if k not in PER_RUN | unused}


def parse_run(spec: str) -> tuple[Path, set[str] | None]:
    """`DIR` or `DIR:METHOD,...` -> (directory, the methods to take from it; None: all)."""
    path, sep, methods = spec.rpartition(":") if ":" in spec else (spec, "", "")
    return Path(path), ({m for m in methods.split(",") if m} if sep else None)


def merge(runs: Sequence[str | Path]) -> tuple[dict[str, Any], dict[str, dict[int, dict[str, Any]]]]:
    """The shared settings and {method: {seed: run}} of `runs` (directories of results.json, see `parse_run`).

    Raises:
        SystemExit: a missing results.json, runs with different settings, one method with different
            objectives, or one (method, seed) twice.
    """
    # A run made before an option existed ran with its default: compare settings with the defaults filled in.
    defaults = vars(parse_args(["--output", "-"]))
    settings: dict[str, Any] | None = None
    first = ""
    results: dict[str, dict[int, dict[str, Any]]] = {}
    where: dict[tuple[str, int], str] = {}
    objectives: dict[str, tuple[dict[str, Any], str]] = {}
    for spec in runs:
        path, take = parse_run(str(spec))
        file = path / "results.json"
        if not file.is_file():
            raise SystemExit(f"{file}: not found (a finished benchmarks/quality.py run writes it)")
        data = json.loads(file.read_text())
        shared = data_settings({**defaults, **data["args"]})
        if settings is None:
            settings, first = shared, str(path)
        elif shared != settings:
            diff = sorted(k for k in settings.keys() | shared.keys() if settings.get(k) != shared.get(k))
            raise SystemExit(f"{path}: settings differ from {first} in {', '.join(diff)}; only runs of the same "
                             "data, budget and evaluation can be merged")
        for method, by_seed in data["methods"].items():
            if take is not None and method not in take:
                continue
            for seed_text, run in by_seed.items():
                seed = int(seed_text)
                # BC's loss reads no objective field but alpha and beta, which make it BC.
                objective = {} if method == "BC" else run["objective"]
                known, source = objectives.setdefault(method, (objective, str(path)))
                if objective != known:
                    diff = sorted(k for k in known if known[k] != objective.get(k))
                    raise SystemExit(f"{method} in {path} was trained with another objective than in {source} "
                                     f"({', '.join(diff)}); take it from one of them only (DIR:METHODS)")
                if (method, seed) in where:
                    raise SystemExit(f"{method} seed {seed} is in both {where[method, seed]} and {path}")
                where[method, seed] = str(path)
                results.setdefault(method, {})[seed] = run
    if settings is None:
        raise SystemExit("name at least one run directory")
    order = sorted(results, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))
    return settings, {m: dict(sorted(results[m].items())) for m in order}


def report(settings: dict[str, Any], results: dict[str, dict[int, dict[str, Any]]], sources: Sequence[str],
           command: str) -> str:
    md = ["# Quality benchmark: merged runs", "", f"Command: `{command}`", "",
          "Runs: " + ", ".join(f"`{p}`" for p in sources), "", *score_sections(results, settings["tasks"])]
    return "\n".join(md)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="output directories of benchmarks/quality.py runs (DIR:BC,PAC: only those)")
    p.add_argument("--output", type=Path, default=None, help="write the merged markdown here (else only print)")
    args = p.parse_args(argv)
    settings, results = merge(args.runs)
    command = ".venv/bin/python benchmarks/quality_merge.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(settings, results, args.runs, command)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
