"""Compare self-improvement runs in replicate pairs: each pair is a PAC-rounds run and a control run (BC+Q
rounds, `--finetune-alpha 1.0`) that start from the same pretrained policy and evaluate every round on the
same episodes. Prints, per round, markdown tables of

- each arm's change from round 0 in return or success rate (`--metric`; the change paired per episode within
  a run: each run's own 95% interval, then the mean over pairs, its 95% t-interval and pairs above zero), and
- PAC minus control, paired per episode within each pair, then pooled over pairs the same way,

for the greedy evaluation and, where the runs collected by sampling, for the sampled (collecting) policy.

    .venv/bin/python benchmarks/self_improvement_compare.py \\
        --pair outputs/si6-s1-a0.5 outputs/si6-s1-a1.0 --pair outputs/si6-s2-a0.5 outputs/si6-s2-a1.0

Reads `<run>/improve/round<k>/report.json` (and `.../sampled/report.json`), written by
`benchmarks/self_improvement.py` and `pac improve`. The rounds' own evaluations are sized for a curve (tens of
episodes); `--evaluate N` first evaluates every round's policy again on N fresh episodes (`--eval-seed`, the
same episodes for every round and run, so the changes stay paired) and compares those. Each evaluation is
written to `<run>/improve/round<k>/eval-<N>-seed<S>/` (report, table, plot) as it finishes, and a rerun skips
the ones already there: a stopped comparison resumes.

    .venv/bin/python benchmarks/self_improvement_compare.py --evaluate 200 --metric success \\
        --pair outputs/si-s0 outputs/si-s0-bcq --pair outputs/si-s1 outputs/si-s1-bcq

`--plot FILE.png` also draws the curves: each arm's mean per round over the pairs, and every run's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pac.config import EvalConfig
from pac.evaluation import evaluate_model, load_policy_model, mean_ci95
from pac.workflow import format_change, return_change

log = logging.getLogger("self_improvement_compare")
FIELDS = {"return": "returns", "success": "successes"}  # --metric -> the per-episode values of a report


def reevaluate(run: Path, episodes: int, seed: int) -> str:
    """Evaluate each round's policy of `run` again on `episodes` episodes from `seed`, with the round's own
    evaluation settings otherwise (tasks, episode length, action selection), skipping rounds already done.

    Returns the report name under `improve/round<k>/` that `load_reports` then reads.
    """
    name = f"eval-{episodes}-seed{seed}"
    for round_report in sorted((run / "improve").glob("round*/report.json"), key=lambda p: int(p.parent.name[5:])):
        out = round_report.parent / name
        if (out / "report.json").exists():
            continue
        own = json.loads(round_report.read_text())  # the round's own evaluation: its policy and settings
        settings = {f.name: own["config"][f.name] for f in dataclasses.fields(EvalConfig) if f.name in own["config"]}
        eval_cfg = dataclasses.replace(EvalConfig(**settings), episodes=episodes, seed=seed, video=False,
                                       videos_per_task=0)
        net, cfg = load_policy_model(own["policy"])
        partial = out.with_name(out.name + ".partial")  # a killed evaluation never looks finished
        shutil.rmtree(partial, ignore_errors=True)
        report = evaluate_model(net, dataclasses.replace(cfg, eval=eval_cfg), output_dir=partial,
                                name=own["policy"])
        partial.rename(out)
        log.info("%s %s: %s", run.name, round_report.parent.name, "; ".join(
            f"{t}: return {r.return_mean:.1f}, success {r.success_rate}" for t, r in report.tasks.items()))
    return f"{name}/report.json"


def load_reports(run: Path, name: str) -> list[Any]:
    """Per round, the per-task seeds, returns and successes of `<run>/improve/round<k>/<name>` (what
    `return_change` pairs)."""
    reports = []
    while (path := run / "improve" / f"round{len(reports)}" / name).exists():
        tasks = json.loads(path.read_text())["tasks"]
        reports.append(SimpleNamespace(tasks={k: SimpleNamespace(seeds=t["seeds"], returns=t["returns"],
                                                                 successes=t.get("successes"))
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


def table(pairs: list[tuple[Path, Path]], name: str, metric: str = "return") -> str:
    """Per round: each arm's change from round 0 and PAC minus control, per pair with its paired 95% interval
    over episodes, and pooled over pairs. A success rate is shown in percentage points."""
    field, scale = FIELDS[metric], 100.0 if metric == "success" else 1.0
    runs = [load_pair(pac, control, name) for pac, control in pairs]
    for (pac, _), (pac_reports, _) in zip(pairs, runs, strict=True):
        if metric == "success" and any(t.successes is None for t in pac_reports[0].tasks.values()):
            raise SystemExit(f"{pac}: a task of {name} defines no success; compare --metric return")

    def change(before: Any, after: Any) -> tuple[float, tuple[float, float] | None]:
        mean, ci = return_change(before, after, field)
        return mean * scale, None if ci is None else (ci[0] * scale, ci[1] * scale)

    lines = ["| round | PAC − round 0 (per pair, paired 95% CI) | pooled | control − round 0 (per pair) | pooled | "
             "PAC − control (per pair) | pooled |", "|---|---|---|---|---|---|---|"]
    for k in range(1, min(min(len(pac), len(control)) for pac, control in runs)):
        pac_gain = [change(pac[0], pac[k]) for pac, _ in runs]
        control_gain = [change(control[0], control[k]) for _, control in runs]
        diffs = [change(control[k], pac[k]) for pac, control in runs]
        lines.append(" | ".join([f"| {k}"] + [x for gains in (pac_gain, control_gain, diffs) for x in (
            "; ".join(format_change(*g) for g in gains), pooled([g[0] for g in gains]))]) + " |")
    return "\n".join(lines)


def plot(pairs: list[tuple[Path, Path]], name: str, metric: str, path: Path) -> None:
    """The curves as a PNG: per round, each arm's mean over pairs (thick) and every pair's own run (thin)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    field, scale = FIELDS[metric], 100.0 if metric == "success" else 1.0
    runs = [load_pair(pac, control, name) for pac, control in pairs]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for arm, color, label in ((0, "tab:blue", "PAC rounds"), (1, "tab:gray", "BC+Q rounds (control)")):
        curves = [[scale * sum(sum(getattr(t, field)) / len(getattr(t, field)) for t in r.tasks.values())
                   / len(r.tasks) for r in reports[arm]] for reports in runs]
        for curve in curves:
            ax.plot(range(len(curve)), curve, color=color, alpha=0.3, lw=1)
        rounds = min(len(curve) for curve in curves)
        mean = [sum(curve[k] for curve in curves) / len(curves) for k in range(rounds)]
        ax.plot(range(rounds), mean, color=color, lw=2.5, marker="o", label=f"{label}: mean of {len(curves)}")
    ax.set_xticks(range(max(len(reports[0]) for reports in runs)))
    ax.set_xlabel("round (0: the pretrained policy)")
    ax.set_ylabel("success rate (%)" if metric == "success" else "return")
    ax.set_title(f"{metric} per round over {len(pairs)} replicate pairs (thin lines: each run)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("PAC_RUN", "CONTROL_RUN"),
                   help="run directories of one replicate pair (repeat for each pair)")
    p.add_argument("--metric", choices=sorted(FIELDS), default="return",
                   help="compare episode returns or success (a rate, in percentage points)")
    p.add_argument("--evaluate", type=int, default=0, metavar="N",
                   help="first evaluate every round's policy again on N fresh episodes per task and compare those")
    p.add_argument("--eval-seed", type=int, default=2000,
                   help="seed of the --evaluate episodes (default 2000: not the rounds' own evaluation seed)")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also draw the per-round curves of --metric into this file")
    args = p.parse_args()
    pairs = [(Path(a), Path(b)) for a, b in args.pair]
    for run in (run for pair in pairs for run in pair):
        if not (run / "improve" / "round0" / "report.json").exists():
            p.error(f"{run} has no improve/round0/report.json (a benchmarks/self_improvement.py or pac improve run)")
    if args.evaluate < 0:
        p.error("--evaluate must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.evaluate:
        name = "report.json"
        for run in (run for pair in pairs for run in pair):
            name = reevaluate(run, args.evaluate, args.eval_seed)
        print(f"greedy evaluation, {args.evaluate} episodes per task from seed {args.eval_seed} "
              f"({args.metric} change):\n")
        print(table(pairs, name, args.metric))
        if args.plot:
            plot(pairs, name, args.metric, args.plot)
        return
    print(f"greedy evaluation ({args.metric} change):\n")
    print(table(pairs, "report.json", args.metric))
    if args.plot:
        plot(pairs, "report.json", args.metric, args.plot)
    if all((run / "improve" / "round0" / "sampled" / "report.json").exists() for pair in pairs for run in pair):
        print(f"\nsampled (collecting) policy ({args.metric} change):\n")
        print(table(pairs, "sampled/report.json", args.metric))


if __name__ == "__main__":
    main()
