"""`pac train`: pretraining (or finetuning with --train.init_from) through the DeepSpeed engine.

One process:       pac train --data.dataset control --train.steps 1000
Several processes: torchrun --nproc_per_node 2 -m pac.cli train --data.dataset control --train.zero_stage 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pac.cli.common import add_config_flags, resolve_config

TRAIN_SECTIONS = ["model", "objective", "data", "train", "eval", "storage", "tracking", "cluster"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train PAC (or BC / BC+Q) on a dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, TRAIN_SECTIONS)
    p.add_argument("--parent-run-id", help="MLflow run this run continues from (finetuning lineage)")
    p.add_argument("--result-file", metavar="PATH",
                   help="also write {uri, run_id, steps} of the result as JSON to this file (pipeline output)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pac.cluster import should_submit
    from pac.training.loop import train

    cfg = resolve_config(args)
    if should_submit(cfg):  # cluster.nodes > 1: a TrainJob's processes train (pac.cluster)
        from pac.cluster import train_on_cluster

        result = train_on_cluster(cfg, parent_run_id=args.parent_run_id)
    else:
        result = train(cfg, parent_run_id=args.parent_run_id, eval_hook=_eval_hook(cfg))
    if result.preempted:
        print(f"preempted at step {result.steps}: checkpoint saved; rerun the same command to resume")
        return 143
    print(f"trained {result.steps} steps; weights: {result.export_uri}; MLflow run: {result.run_id}")
    write_result(args.result_file, result)
    return 0


def write_result(path: str | None, result: Any) -> None:
    """The pipeline's handle on a training result: the export's URI, the MLflow run, the steps done."""
    if path:
        Path(path).write_text(json.dumps({"uri": result.export_uri, "run_id": result.run_id or "",
                                          "steps": result.steps}))


def _eval_hook(cfg):  # type: ignore[no-untyped-def]
    if not cfg.train.eval_every:
        return None
    from pac.evaluation import training_eval_hook

    return training_eval_hook(cfg)
