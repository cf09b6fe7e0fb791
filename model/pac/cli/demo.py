"""`pac demo`: the main job end to end on embedded defaults (no cluster, no external server)."""

from __future__ import annotations

import argparse
import copy
import time

import torch

from pac.cli.common import add_config_flags, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job locally on embedded defaults",
                       description="Build the model from the config and optimise the PAC objective on "
                                   "synthetic multi-embodiment transitions, printing every loss term.")
    add_config_flags(p, ["model", "objective", "train"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pac.data.synthetic import synthetic_transitions
    from pac.networks import build_model, count_parameters
    from pac.objective import Temperature, pac_loss, update_target

    cfg = resolve_config(args)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model)
    target = copy.deepcopy(net).requires_grad_(False)
    temp = Temperature(cfg.objective)
    opt = torch.optim.AdamW([*net.parameters(), *temp.parameters()], lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    batch = synthetic_transitions(cfg.model, cfg.train.micro_batch_size, seed=cfg.seed)
    print(f"{cfg.objective.method} on preset {cfg.preset} ({count_parameters(cfg.model):,} parameters), "
          f"{cfg.train.steps} steps of batch {cfg.train.micro_batch_size}")
    start = time.perf_counter()
    for step in range(1, cfg.train.steps + 1):
        loss, metrics = pac_loss(net, target, temp, batch, cfg.objective)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_target(net.parameters(), target.parameters(), step, cfg.objective)
        if step == 1 or step % cfg.train.log_every == 0 or step == cfg.train.steps:
            terms = " ".join(f"{k}={float(v):.3f}" for k, v in metrics.items())
            print(f"step {step:>5}  {terms}  ({time.perf_counter() - start:.1f}s)")
    return 0
