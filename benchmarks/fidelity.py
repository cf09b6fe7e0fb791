"""Imitation fidelity: does BC from our code (alpha 1, beta 0, the same network) reproduce its expert?

One multi-task model is trained on the expert-only episodes of every task and evaluated closed loop on
fixed-seed episodes, beside the expert itself and the uniform random policy on the SAME seeds:

    fidelity = (R_policy - R_random) / (R_expert - R_random)      (1 = the expert's return, 0 = random)

Agreement with the expert on its own states says little (79-96% of greedy actions in the expert's bin
while every rollout failed, issue 26): only the closed-loop return counts.

The data is generated once per content (tasks, episodes, length, seed) into `--cache` and reused by
every later run (`pac.data.generate` is deterministic for a given config). `--set section.field=value`
overrides the training config (repeatable), so each ablation is one command:

    .venv/bin/python benchmarks/fidelity.py --output outputs/fidelity                      # the documented run
    .venv/bin/python benchmarks/fidelity.py --output outputs/fid-scalar --set model.proprio_encoder=scalar
    .venv/bin/python benchmarks/fidelity.py --output outputs/fid-mixed --dataset RUN/store/behaviour@v0001 \\
        --tasks jaco/reach_site --episode-steps 100                 # BC and the MLP floor on data you already have
    .venv/bin/python benchmarks/fidelity.py --output outputs/fid-finger --dataset outputs/store/benchmark \\
        --tasks finger/turn_easy --set data.qualities=expert    # a recipe's expert subset, without regenerating it
    .venv/bin/python benchmarks/fidelity.py --output /tmp/f --tasks point_mass/easy --episodes 2 \\
        --episode-steps 100 --steps 20 --eval-episodes 2                                  # plumbing smoke

Writes `results.json` and `results.md` into `--output`; runtimes are in docs/learner.md. The PAC run checkpoints
every `--checkpoint-every` steps and the same command resumes a stopped run (a long budget can span sessions);
the MLP floor, minutes at any budget here, is fitted again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from quality import start_or_resume  # this folder is on sys.path when run as a script

TASKS = ("cartpole/balance", "point_mass/easy", "reacher/easy")
RECIPE = "benchmark"  # the fidelity data are this recipe's expert episodes (its seeds and expert noise)
log = logging.getLogger("fidelity")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="outputs/fidelity", help="output directory (runs, reports, tables)")
    p.add_argument("--cache", default="outputs/benchmark-data", help="generated datasets, reused across runs")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task ids (each needs an expert)")
    p.add_argument("--episodes", type=int, default=30, help="expert episodes per task")
    add_noise_arg(p)
    p.add_argument("--episode-steps", type=int, default=1000, help="episode length (the suite's standard 1000)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--checkpoint-every", type=int, default=1000, metavar="STEPS",
                   help="checkpoint interval: a stopped run resumes from its last checkpoint when the same command "
                        "runs again (a run folder left by other settings is started afresh)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--eval-episodes", type=int, default=10, help="evaluation episodes per task")
    p.add_argument("--eval-seed", type=int, default=1000, help="evaluation seed (the data's seeds are not reused)")
    p.add_argument("--no-mlp", action="store_true", help="skip the plain 2x256 MLP floor")
    p.add_argument("--dataset", help="train on this existing dataset (local path, optionally @vNNNN; e.g. "
                                     "mixed-quality data) instead of generated expert episodes; --tasks selects")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="training config override (repeatable), e.g. model.proprio_encoder=scalar")
    args = p.parse_args(argv)
    args.expert_noise_std = resolve_noise(args.expert_noise_std)
    from pac.config import ConfigError, assignments

    try:
        assignments(args.set)  # the form only: the values are checked with the whole config
    except ConfigError as e:
        p.error(f"--set {e}")
    return args


def add_noise_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expert-noise-std", type=float,
                   help="Gaussian noise on the experts' actions, a fraction of half the range (default: the "
                        f"benchmark recipe's generate.expert_noise_std, pac/recipes/{RECIPE}.yaml; 0: the "
                        "deterministic experts)")


def resolve_noise(given: float | None) -> float:
    """`--expert-noise-std`, else the recipe's: the fidelity data are the recipe's expert episodes."""
    if given is not None:
        return given
    from importlib import resources

    from pac.config import Config, read_overrides

    recipe = resources.files("pac").joinpath(f"recipes/{RECIPE}.yaml")
    return Config.from_dict(read_overrides(str(recipe))).generate.expert_noise_std


def expert_dataset(tasks: Sequence[str], episodes: int, steps: int, cache: Path, noise: float) -> str:
    """The expert-only dataset of these tasks, generated on first use and found by content hash after."""
    from pac.config import Config, GenerateConfig, StorageConfig
    from pac.data.generate import generation_digest
    from pac.workflow import generate_dataset

    gen = GenerateConfig(tasks=list(tasks), qualities=["expert"], episodes_per_policy=episodes, episode_steps=steps,
                         expert_noise_std=noise)
    name = f"expert-{generation_digest(gen)[:12]}"  # one dataset per content: every configuration stays cached
    ref, stats = generate_dataset(Config(generate=gen, storage=StorageConfig(root=str(cache))), name)
    log.info("data: %s (%s)", ref, "generated" if stats is not None else "cached")
    return str(cache / name)


def train_config(args: argparse.Namespace, dataset: str) -> Any:
    from pac.config import Config, assignments, merge

    base = {"preset": args.preset, "seed": args.seed,
            "objective": {"alpha": 1.0, "beta": 0.0},
            "data": {"dataset": dataset, "tasks": list(args.tasks.split(","))},
            "train": {"steps": args.steps, "global_batch_size": args.batch, "micro_batch_size": args.batch,
                      "checkpoint_every": min(args.checkpoint_every, args.steps), "keep_checkpoints": 1,
                      "resume": True, "log_every": max(args.steps // 10, 1),
                      "output": str(Path(args.output).resolve() / "run")},
            "storage": {"root": str(Path(args.output).resolve())},
            "tracking": {"enabled": False}}
    return Config.from_dict(merge(base, assignments(args.set)))


def evaluate_all(export: str, floor: MlpFloor | None, tasks: Sequence[str],
                 args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Policy, MLP floor, expert and random returns per task on the same seeded episodes."""
    from pac.config import EvalConfig
    from pac.envs.experts import make_expert
    from pac.evaluation import NetworkPolicy, ScriptedSource, evaluate, load_policy_model

    net, _ = load_policy_model(export)
    cfg = EvalConfig(episodes=args.eval_episodes, num_envs=args.eval_episodes, episode_steps=args.episode_steps,
                     seed=args.eval_seed, video=False)
    policy = evaluate(NetworkPolicy(net, cfg, critic=False), list(tasks), cfg, progress=False)
    reference = evaluate(ScriptedSource(make_expert, name="expert"), list(tasks), cfg, progress=False)
    mlp = evaluate(floor, list(tasks), cfg, progress=False) if floor is not None else None
    out = {}
    for task in tasks:
        r_pol, r_exp = policy.tasks[task].return_mean, reference.tasks[task].return_mean
        r_rand = policy.tasks[task].random_return_mean
        span = max(r_exp - r_rand, 1e-9)
        out[task] = {"policy": r_pol, "expert": r_exp, "random": r_rand, "fidelity": (r_pol - r_rand) / span,
                     "policy_success": policy.tasks[task].success_rate,
                     "expert_success": reference.tasks[task].success_rate}
        if mlp is not None:
            r_mlp = mlp.tasks[task].return_mean
            out[task] |= {"mlp": r_mlp, "mlp_fidelity": (r_mlp - r_rand) / span}
    return out


class MlpFloor:
    """The floor: a plain-torch 2x256 MLP with the same categorical head, BC on the same batches.

    Same head means the same bins, the same BC targets (`objective.bc_target`) and the same greedy decoding
    (`model.action_decode`) as the PAC run, so a change of head moves both and only the network differs.

    Input: the padded, standardised state, its mask and a one-hot of the task's instruction (PAC reads the
    instruction as text). Same loader, steps, batch and learning rate as the PAC run, so only the network differs.

    `head="mse"` swaps the categorical head for the peers' deterministic one (tanh output, squared error, as
    d3rlpy's BC and TD3+BC): the floor of what a categorical head should reach (benchmarks/head_ablation.py).
    """

    def __init__(self, cfg: Any, instructions: Sequence[str], head: str = "categorical") -> None:
        import torch
        from torch import nn

        if head not in ("categorical", "mse"):
            raise ValueError(f"unknown MLP head {head!r}; use categorical or mse")
        self.cfg, self.instructions, self.head = cfg, list(instructions), head
        m = cfg.model
        inputs = 2 * m.max_proprio_dims + len(self.instructions)
        torch.manual_seed(cfg.seed)
        outputs = m.max_action_dims * (m.action_bins if head == "categorical" else 1)
        self.net = nn.Sequential(nn.Linear(inputs, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, outputs))
        self.name = "mlp-2x256"

    def features(self, proprio: Any, mask: Any, task_index: Any) -> Any:
        import torch
        import torch.nn.functional as F

        pad = self.cfg.model.max_proprio_dims - proprio.shape[1]
        x = F.pad(proprio * mask, (0, pad))
        onehot = F.one_hot(task_index, len(self.instructions)).float()
        return torch.cat([x, F.pad(mask.float(), (0, pad)), onehot], -1)

    def logits(self, x: Any) -> Any:
        m = self.cfg.model
        return self.net(x).view(-1, m.max_action_dims, m.action_bins)  # (B, A, bins)

    def fit(self, steps: int) -> float:
        import torch
        from pac.data.loader import build_loader
        from pac.inputs import tokenize
        from pac.networks import action_targets, cross_entropy

        ids, _ = tokenize(self.instructions, self.cfg.model.max_text_tokens)
        rows = {tuple(r): i for i, r in enumerate(ids.tolist())}
        loader = build_loader(self.cfg, batch_size=self.cfg.train.global_batch_size)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.cfg.train.lr, weight_decay=0.0)
        t0 = time.perf_counter()
        for step in range(steps):
            batch = loader.batch(step)
            task = torch.tensor([rows[tuple(r)] for r in batch.obs.text.tolist()])
            x = self.features(batch.obs.proprio, batch.obs.proprio_mask, task)
            a = batch.action.shape[1]
            if self.head == "mse":
                error = (torch.tanh(self.net(x)[:, :a]) - batch.action.float()) ** 2
                loss = (error * batch.action_mask).sum(-1).mean()
            else:
                m, o = self.cfg.model, self.cfg.objective
                targets = action_targets(batch.action, m.action_bins, o.bc_target, o.bc_target_sigma,
                                         m.action_bin_mu)
                loss = cross_entropy(self.logits(x)[:, :a], targets, batch.action_mask).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % max(steps // 10, 1) == 0:
                log.info("mlp floor: step %d/%d loss %.3f", step, steps, loss.item())
        return time.perf_counter() - t0

    # pac.evaluation.ActionSource
    def start(self, slot: int, env: Any, seed: int) -> None:
        pass

    def act(self, slots: Sequence[int], envs: Sequence[Any], obs: Sequence[Any]) -> Any:
        import torch
        from pac.inputs import denormalize_action, normalize_proprio, pad_rows, task_stats
        from pac.networks import decode_greedy

        proprio = [normalize_proprio(o["proprio"], task_stats(self.cfg.model, e.spec.id)) for o, e in zip(obs, envs)]
        p, pm = pad_rows(proprio)
        task = torch.tensor([self.instructions.index(e.instruction) for e in envs])
        a = envs[0].action_dim
        m = self.cfg.model
        with torch.no_grad():
            x = self.features(torch.from_numpy(p), torch.from_numpy(pm), task)
            if self.head == "mse":
                actions = torch.tanh(self.net(x)[:, :a]).numpy()
            else:
                actions = decode_greedy(self.logits(x)[:, :a], m.action_bins, m.action_decode, m.action_decode_k,
                                        m.action_bin_mu).numpy()
        return np.stack([denormalize_action(x, e.action_low, e.action_high) for x, e in zip(actions, envs)])


def markdown(result: dict[str, Any]) -> str:
    mlp = "mlp_fidelity" in next(iter(result["tasks"].values()))
    given = result.get("dataset", "")
    data = (f"dataset {given}" if given and "/expert-" not in given
            else f"{result['episodes']} expert episodes x {result['episode_steps']} steps per task"
            + (f" (expert action noise {noise})" if (noise := result.get("expert_noise_std")) else ""))
    lines = [f"BC fidelity: preset {result['preset']}, {result['steps']} steps x batch {result['batch']}, "
             f"{data}, {result['eval_episodes']} evaluation episodes per task (seed {result['eval_seed']}); overrides: "
             f"{', '.join(result['overrides']) or 'none'}; train {result['train_s']:.0f} s"
             + (f" (after resuming at step {result['resumed_from']})" if result.get("resumed_from") else ""),
             "",
             "| task | random | expert | BC (PAC net) | fidelity |" + (" MLP floor | MLP fidelity |" if mlp else ""),
             "|---|---:|---:|---:|---:|" + ("---:|---:|" if mlp else "")]
    for task, r in result["tasks"].items():
        row = f"| {task} | {r['random']:.1f} | {r['expert']:.1f} | {r['policy']:.1f} | {r['fidelity']:.2f} |"
        lines.append(row + (f" {r['mlp']:.1f} | {r['mlp_fidelity']:.2f} |" if mlp else ""))
    mean = f"| **mean** | | | | **{result['fidelity_mean']:.2f}** |"
    lines.append(mean + (f" | **{result['mlp_fidelity_mean']:.2f}** |" if mlp else ""))
    return "\n".join(lines)


def tasks_and_data(args: argparse.Namespace, prog: str) -> tuple[list[str], str] | None:
    """Logging set up, the `--tasks` list and the dataset to train on: `--dataset` as given, or the expert
    episodes generated (or found) in `--cache`. None, after printing why, when a task id is unknown."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pac.envs.registry import UnknownTaskError
    from pac.evaluation import resolve_tasks

    tasks = [t for t in args.tasks.split(",") if t]
    try:
        resolve_tasks(tasks)  # every unknown id in one error, before anything is generated
    except UnknownTaskError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None
    if args.dataset:
        base, _, version = args.dataset.partition("@")
        return tasks, str(Path(base).resolve()) + (f"@{version}" if version else "")
    return tasks, expert_dataset(tasks, args.episodes, args.episode_steps, Path(args.cache).resolve(),
                                 args.expert_noise_std)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from pac.training.loop import train

    found = tasks_and_data(args, "fidelity")
    if found is None:
        return 2
    tasks, dataset = found
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cfg = train_config(args, dataset)
    start_or_resume(cfg)
    t0 = time.perf_counter()
    trained = train(cfg)
    train_s = time.perf_counter() - t0
    if trained.preempted:
        print(f"fidelity: stopped at step {trained.steps}; the same command resumes it", file=sys.stderr)
        return 3
    resumed_from = trained.steps - len(trained.history)
    if resumed_from:
        log.info("resumed at step %d: train_s covers the last %d steps", resumed_from, len(trained.history))
    floor = None
    if not args.no_mlp:
        from pac.data.dataset import read_manifest
        from pac.training.export import load_export

        _, trained_cfg = load_export(trained.export_uri)  # the statistics the PAC run standardised with
        manifest = read_manifest(dataset, trained_cfg.storage)
        floor = MlpFloor(trained_cfg, [manifest.tasks[t].instruction for t in tasks])
        floor.fit(args.steps)
    per_task = evaluate_all(trained.export_uri, floor, tasks, args)
    result = {"preset": args.preset, "steps": args.steps, "batch": args.batch, "seed": args.seed, "dataset": dataset,
              "episodes": args.episodes, "episode_steps": args.episode_steps,
              "expert_noise_std": None if args.dataset else args.expert_noise_std, "eval_episodes": args.eval_episodes,
              "eval_seed": args.eval_seed,
              "overrides": args.set, "train_s": train_s, "resumed_from": resumed_from, "tasks": per_task,
              "fidelity_mean": float(np.mean([r["fidelity"] for r in per_task.values()]))}
    if floor is not None:
        result["mlp_fidelity_mean"] = float(np.mean([r["mlp_fidelity"] for r in per_task.values()]))
    (out / "results.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
