"""Compare self-improvement runs in replicate pairs: each pair is a PAC-rounds run and a control run (BC+Q
rounds, `--finetune-alpha 1.0`) that start from the same pretrained policy and evaluate every round on the
same episodes. Prints, per round, markdown tables of

- each arm's return change from round 0 (mean over pairs, 95% t-interval over pairs, pairs above zero), and
- PAC minus control, paired per episode within each pair, then pooled over pairs the same way,

for the greedy evaluation and, where the runs collected by sampling, for the sampled (collecting) policy.

    .venv/bin/python benchmarks/self_improvement_compare.py \\
        --pair outputs/si6-s1-a0.5 outputs/si6-s1-a1.0 --pair outputs/si6-s2-a0.5 outputs/si6-s2-a1.0

Reads `<run>/improve/round<k>/report.json` (and `.../sampled/report.json`), written by
`benchmarks/self_improvement.py` and `pac improve`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pac.evaluation import mean_ci95
from pac.workflow import format_change, return_change


def load_reports(run: Path, name: str) -> list[Any]:
    """Per round, the per-task seeds and returns of `<run>/improve/round<k>/<name>` (what `return_change` pairs)."""
    reports = []
    while (path := run / "improve" / f"round{len(reports)}" / name).exists():
        tasks = json.loads(path.read_text())["tasks"]
        reports.append(SimpleNamespace(tasks={k: SimpleNamespace(seeds=t["seeds"], returns=t["returns"])
                                              for k, t in tasks.items()}))
    if not reports:
        raise SystemExit(f"{run} has no improve/round0/{name}")
    return reports


def pooled(values: list[float]) -> str:
    """Mean over pairs with its 95% t-interval and how many pairs are above zero."""
    return f"{format_change(*mean_ci95(values))}, {sum(v > 0 for v in values)}/{len(values)}"


def load_pair(pac: Path, control: Path, name: str) -> tuple[list[Any], list[Any]]:
    """Both arms' reports, checked to be a pair: round 0 (the shared starting policy, before any arm's
    finetuning) evaluated on the same episodes with the same returns, and at least one round after it."""
    runs = load_reports(pac, name), load_reports(control, name)
    if runs[0][0].tasks != runs[1][0].tasks:
        raise SystemExit(f"{pac} and {control} differ at round 0 ({name}): not a pair (the same pretrained "
                         "policy, evaluated on the same episodes; see benchmarks/self_improvement.py --pretrained)")
    for run, reports in zip((pac, control), runs, strict=True):
        if len(reports) < 2:
            raise SystemExit(f"{run} has no finished round after round 0 ({name})")
    return runs


def table(pairs: list[tuple[Path, Path]], name: str) -> str:
    runs = [load_pair(pac, control, name) for pac, control in pairs]
    lines = ["| round | PAC − round 0 (per pair) | pooled | control − round 0 (per pair) | pooled | "
             "PAC − control (per pair, paired 95% CI) | pooled |", "|---|---|---|---|---|---|---|"]
    for k in range(1, min(min(len(pac), len(control)) for pac, control in runs)):
        pac_gain = [return_change(pac[0], pac[k])[0] for pac, _ in runs]
        control_gain = [return_change(control[0], control[k])[0] for _, control in runs]
        diffs = [return_change(control[k], pac[k]) for pac, control in runs]
        lines.append(f"| {k} | {' / '.join(f'{v:+.1f}' for v in pac_gain)} | {pooled(pac_gain)} | "
                     f"{' / '.join(f'{v:+.1f}' for v in control_gain)} | {pooled(control_gain)} | "
                     f"{'; '.join(format_change(*d) for d in diffs)} | {pooled([d[0] for d in diffs])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("PAC_RUN", "CONTROL_RUN"),
                   help="run directories of one replicate pair (repeat for each pair)")
    args = p.parse_args()
    pairs = [(Path(a), Path(b)) for a, b in args.pair]
    print("greedy evaluation (return change):\n")
    print(table(pairs, "report.json"))
    if all((run / "improve" / "round0" / "sampled" / "report.json").exists() for pair in pairs for run in pair):
        print("\nsampled (collecting) policy (return change):\n")
        print(table(pairs, "sampled/report.json"))


if __name__ == "__main__":
    main()
