"""Subprocess driver for the training tests (run directly or under torchrun; not collected by pytest).

    python tests/training/driver.py MODE CONFIG_JSON OUT_DIR

MODE "train": train on a `SyntheticSource` slice of the global batch; write rank<r>.json with per-step losses.
MODE "partition": build the engine only; write how many parameter elements this rank holds.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from pac.config import Config
from pac.data.synthetic import SyntheticSource
from pac.training.engine import DeepSpeedEngine, init_world
from pac.training.loop import train


def main() -> None:
    mode, cfg_json, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = Config.from_dict(json.loads(cfg_json))
    world = init_world()
    out.mkdir(parents=True, exist_ok=True)
    if mode == "train":
        source = SyntheticSource(cfg.model, cfg.train.micro_batch_size, seed=cfg.seed, rank=world.rank,
                                 world_size=world.world_size)
        result = train(cfg, source=source)
        report = {"rank": world.rank, "steps": result.steps, "export": result.export_uri, "run_id": result.run_id,
                  "losses": [h["loss"] for h in result.history], "preempted": result.preempted}
    else:
        engine = DeepSpeedEngine(cfg, world)
        params = list(engine.net.parameters())
        report = {"rank": world.rank, "local": sum(p.ds_tensor.numel() for p in params),
                  "total": sum(p.ds_numel for p in params),
                  "materialised": sum(p.data.numel() for p in params),
                  "target_local": sum(p.ds_tensor.numel() for p in engine.target.parameters())}
    (out / f"rank{world.rank}.json").write_text(json.dumps(report))
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
