"""`pac demo`: the main job end to end on embedded defaults (no cluster, no external server).

generate -> ingest -> pretrain -> evaluate -> collect -> ingest -> finetune -> evaluate, with the
small budgets of the shipped recipe (pac/recipes/demo.yaml); flags override any value.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources

from pac.cli.common import SECTIONS, add_config_flags, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole workflow locally on embedded defaults",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, list(SECTIONS))
    p.add_argument("--output", default=None, help="run directory (default: outputs/demo/<timestamp>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pac.workflow import run_local

    if not args.config:
        args.config = str(resources.files("pac").joinpath("recipes/demo.yaml"))
    cfg = resolve_config(args)
    output = args.output or f"outputs/demo/{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    result = run_local(cfg, output, progress=not args.no_progress)
    print()
    print(result.summary())
    print(f"\ndone in {time.perf_counter() - start:.0f} s; MLflow: `mlflow ui --backend-store-uri "
          f"sqlite:///outputs/mlruns/mlflow.db` (the embedded tracking store)")
    return 0
