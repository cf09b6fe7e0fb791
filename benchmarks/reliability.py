"""The reliability report: every fault-injection trial and fuzzed input of tests/reliability, counted.

Runs the `reliability`-marked fault trials (SIGKILL of 1 and 2 ranks at random steps, the S3 server killed
mid-ingest and mid-training, the MLflow server killed mid-run, full disks) and the fuzz tests with the
`reliability` Hypothesis profile (hundreds of fresh cases per input format), collects the outcome each test
records, and writes a Markdown table:

    .venv/bin/python benchmarks/reliability.py              # ~25 min on 2 cores -> docs/reliability.md
    .venv/bin/python benchmarks/reliability.py -k sigkill   # rerun some trials: their rows replace the old ones

Each test's row is kept in docs/results/reliability-rows.jsonl, so a partial rerun (`-k`) updates its rows and
keeps the others.

Needs what the tests need (`.ci/setup`), and root (or CAP_SYS_ADMIN) for the full-disk trials, which mount a
small tmpfs; without it those rows say "skipped". Exit status: pytest's (non-zero when any trial failed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(ROOT / "docs" / "reliability.md"),
                   help="where the Markdown report goes ('-': stdout only, and the kept rows are not updated)")
    p.add_argument("--rows", default=str(ROOT / "docs" / "results" / "reliability-rows.jsonl"),
                   help="every test's latest row (JSON lines), merged with this run's")
    p.add_argument("-k", default="", help="pytest -k expression: run only the matching trials")
    p.add_argument("--profile", default="reliability", choices=["reliability", "default-tier"],
                   help="Hypothesis profile of the fuzz tests (reliability: 300 fresh cases per format)")
    return p.parse_args(argv)


def table(rows: list[dict[str, Any]], skipped: list[str]) -> str:
    lines = ["| fault or input | trials | survived | outcome | run |", "|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['trials']} | {r['survived']} | {r['outcome']} | {r.get('date', '')} |")
    lines += [f"| {name} | 0 | - | skipped: {why} | |" for name, why in (s.split(" :: ", 1) for s in skipped)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pac-reliability-") as tmp:
        report = Path(tmp) / "rows.jsonl"
        env = {**os.environ, "PAC_RELIABILITY_REPORT": str(report), "PAC_HYPOTHESIS_PROFILE": args.profile}
        cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-m", "reliability or fuzz", "-rs", "-q",
               "-p", "no:warnings", *(["-k", args.k] if args.k else [])]
        print("$", " ".join(cmd), flush=True)
        t0 = time.monotonic()
        done = subprocess.run(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        minutes = (time.monotonic() - t0) / 60
        print(done.stdout[-5000:])
        fresh = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    kept = Path(args.rows)
    rows_by_test = {r["test"]: r for r in (json.loads(line) for line in kept.read_text().splitlines())} \
        if kept.exists() else {}
    stamp = time.strftime("%Y-%m-%d")
    rows_by_test |= {r["test"]: {**r, "date": stamp, "minutes": round(minutes, 1)} for r in fresh}
    rows = list(rows_by_test.values())
    skipped = [line.split("SKIPPED ", 1)[1] for line in done.stdout.splitlines() if line.startswith("SKIPPED ")]
    skipped = [s.replace(": ", " :: ", 1) for s in skipped]
    status = "every trial passed" if done.returncode == 0 else f"pytest exit status {done.returncode}: see its output"
    text = "\n".join([
        "# Reliability: faults injected, bad input fuzzed",
        "",
        f"Made by `.venv/bin/python benchmarks/reliability.py` on {platform.machine()} with {os.cpu_count()} CPUs; "
        f"the last run ({stamp}, {minutes:.1f} min{f', -k {args.k}' if args.k else ''}): {status}. "
        "Each row is one test of "
        "`tests/reliability` (real processes, a real SeaweedFS S3 server and a real `mlflow server` on 127.0.0.1); "
        "'survived' counts the trials that lost nothing: resumed runs equal to an uninterrupted run, no partial "
        "version or checkpoint visible, every rejection a named error. The default test tier keeps one fast trial of "
        "each kind (`.venv/bin/python -m pytest`).",
        "",
        table(rows, skipped),
        "",
    ])
    if args.output != "-":
        Path(args.output).write_text(text)
        kept.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(text)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
