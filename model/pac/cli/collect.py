"""`pac collect`: run a trained policy on the robot-arm tasks and publish the episodes as a new dataset version.

    pac collect --model models:/pac-policy@champion --dataset robot-data --eval.greedy false --eval.episodes 50

Episodes go through the same rollout as `pac evaluate` (seed stream "collect": never the evaluation's
initial states), are labelled quality "policy" with the model as their policy, and are ingested as the
next immutable version of --dataset (with --append it also contains the latest version's episodes).
Prints the versioned dataset URI and a returns summary. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pac.cli.common import add_config_flags, resolve_config
from pac.cli.evaluate import start_tracker, user_errors

SECTIONS = ["eval", "data", "storage", "tracking"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="collect episodes with a trained policy into a new dataset version",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="URI",
                   help="export directory or MLflow models:/NAME@alias, models:/NAME/VERSION, runs:/RUN_ID/policy")
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help="dataset name (under storage.root) or URI, e.g. robot-data or s3://bucket/datasets/robot")
    p.add_argument("--append", action="store_true", help="the new version also contains the latest one's episodes")
    p.add_argument("--uri-file", metavar="PATH", help="also write the published URI to this file (pipeline output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_flags(p, SECTIONS)
    p.set_defaults(func=run)


@user_errors
def run(args: argparse.Namespace) -> int:
    from pac.collection import collect, collection_plans
    from pac.evaluation import check_fit, load_policy_model

    cfg = resolve_config(args)
    # The episodes' `policy`: an absolute export path (a relative one means nothing once the data moves).
    model_uri = str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model
    net, model_cfg = load_policy_model(args.model, cfg.tracking)
    plans = collection_plans(model_cfg, cfg.eval, cfg.storage)
    check_fit(net.cfg, plans)
    tracker = start_tracker(cfg, model_cfg, job="collect", model_uri=model_uri)
    status = "FAILED"
    try:
        result = collect(net, model_cfg, cfg.eval, args.dataset, model_uri=model_uri, storage=cfg.storage,
                         data=cfg.data, plans=plans, append=args.append, progress=not args.no_progress)
        if tracker is not None:
            tracker.log_metrics({f"collect/{t}/return_mean": s.return_mean for t, s in result.tasks.items()}, 0)
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.end(status)
    if args.uri_file:
        Path(args.uri_file).write_text(str(result.ref))
    print(result.table())
    print(f"\npublished {result.ref} (version {result.ref.version})")
    return 0
