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
from pac.workflow import return_change


def load_report(path: Path) -> Any | None:
    """The per-task seeds and returns of a `report.json` (what `return_change` pairs), or None if absent."""
    if not path.exists():
        return None
    tasks = json.loads(path.read_text())["tasks"]
    return SimpleNamespace(tasks={k: SimpleNamespace(seeds=t["seeds"], returns=t["returns"]) for k, t in tasks.items()})


def rounds(run: Path) -> int:
    return len(list((run / "improve").glob("round*/report.json")))


def pooled(values: list[float]) -> str:
    """Mean over pairs with its 95% t-interval and how many pairs are above zero."""
    mean, ci = mean_ci95(values)
    interval = f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""
    return f"{mean:+.1f}{interval}, {sum(v > 0 for v in values)}/{len(values)}"


def table(pairs: list[tuple[Path, Path]], sampled: bool) -> str:
    name = "sampled/report.json" if sampled else "report.json"
    n = min(min(rounds(p), rounds(c)) for p, c in pairs)
    head = ("| round | PAC − round 0 (per pair) | pooled | control − round 0 (per pair) | pooled | "
            "PAC − control (per pair, paired 95% CI) | pooled |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for k in range(1, n):
        cells: dict[str, list[float]] = {"pac": [], "control": [], "diff": []}
        texts: dict[str, list[str]] = {"pac": [], "control": [], "diff": []}
        for pac_run, control_run in pairs:
            runs = {"pac": pac_run, "control": control_run}
            report = {f"{arm}{r}": load_report(run / "improve" / f"round{r}" / name)
                      for arm, run in runs.items() for r in (0, k)}
            if any(v is None for v in report.values()):
                raise SystemExit(f"round {k}: {pac_run} or {control_run} has no {name} (sampled evaluation needs "
                                 "runs that collected by sampling)")
            for arm in ("pac", "control"):
                change, _ = return_change(report[f"{arm}0"], report[f"{arm}{k}"])
                cells[arm].append(change)
                texts[arm].append(f"{change:+.1f}")
            diff, ci = return_change(report[f"control{k}"], report[f"pac{k}"])
            cells["diff"].append(diff)
            texts["diff"].append(f"{diff:+.1f}" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""))
        lines.append(f"| {k} | {' / '.join(texts['pac'])} | {pooled(cells['pac'])} | "
                     f"{' / '.join(texts['control'])} | {pooled(cells['control'])} | "
                     f"{'; '.join(texts['diff'])} | {pooled(cells['diff'])} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("PAC_RUN", "CONTROL_RUN"),
                   help="run directories of one replicate pair (repeat for each pair)")
    args = p.parse_args()
    pairs = [(Path(a), Path(b)) for a, b in args.pair]
    print("greedy evaluation (return change):\n")
    print(table(pairs, sampled=False))
    if all((run / "improve" / "round0" / "sampled" / "report.json").exists() for pair in pairs for run in pair):
        print("\nsampled (collecting) policy (return change):\n")
        print(table(pairs, sampled=True))


if __name__ == "__main__":
    main()
