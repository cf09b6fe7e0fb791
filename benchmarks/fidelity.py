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

`--eval-every N` evaluates both learners every N steps on the way to `--steps`: a fidelity-against-budget curve
(`curve.png`, and a table in `results.md`) from one training run, e.g. the six-task model up to the peers' per-task
budget (120,000 steps; hours on one core):

    .venv/bin/python benchmarks/fidelity.py --output outputs/fid6-curve --tasks T1,...,T6 \\
        --steps 120000 --eval-every 20000

Writes `results.json`, `results.md` (and `curve.png` with `--eval-every`) into `--output` after every evaluation;
runtimes are in docs/learner.md. The PAC run checkpoints every `--checkpoint-every` steps and the MLP floor at every
evaluation: the same command resumes a stopped run (a long budget can span sessions), and with the default
constant learning rate a larger `--steps` continues a finished run instead of starting afresh.
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
    p.add_argument("--eval-every", type=int, default=0, metavar="STEPS",
                   help="also evaluate every STEPS steps on the way to --steps (0: only at the end); needs the "
                        "constant learning-rate schedule, so each point is the same run stopped early")
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
    if args.eval_every < 0 or args.steps < 1:
        p.error("--steps must be >= 1 and --eval-every >= 0")
    return args


def milestones(steps: int, every: int) -> list[int]:
    """The steps at which the run is evaluated: every `every` steps, and always at the end."""
    return sorted({*range(every, steps, every), steps} if every else {steps})


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


def train_config(args: argparse.Namespace, dataset: str, steps: int | None = None) -> Any:
    """The BC run's config, trained to `steps` (default `--steps`): one segment of a run evaluated on its way."""
    from pac.config import Config, assignments, merge

    steps = steps or args.steps
    base = {"preset": args.preset, "seed": args.seed,
            "objective": {"alpha": 1.0, "beta": 0.0},
            "data": {"dataset": dataset, "tasks": list(args.tasks.split(","))},
            "train": {"steps": steps, "global_batch_size": args.batch, "micro_batch_size": args.batch,
                      "checkpoint_every": min(args.checkpoint_every, steps), "keep_checkpoints": 1,
                      "resume": True, "log_every": max(args.steps // 10, 1),
                      "output": str(Path(args.output).resolve() / "run")},
            "storage": {"root": str(Path(args.output).resolve())},
            "tracking": {"enabled": False}}
    return Config.from_dict(merge(base, assignments(args.set)))


def eval_config(args: argparse.Namespace) -> Any:
    from pac.config import EvalConfig

    return EvalConfig(episodes=args.eval_episodes, num_envs=args.eval_episodes, episode_steps=args.episode_steps,
                      seed=args.eval_seed, video=False)


def expert_reference(tasks: Sequence[str], args: argparse.Namespace) -> Any:
    """The experts on the evaluation's seeded episodes (the same at every evaluation of a run: done once)."""
    from pac.envs.experts import make_expert
    from pac.evaluation import ScriptedSource, evaluate

    return evaluate(ScriptedSource(make_expert, name="expert"), list(tasks), eval_config(args), progress=False)


def evaluate_all(export: str, floor: MlpFloor | None, tasks: Sequence[str], args: argparse.Namespace,
                 reference: Any) -> dict[str, dict[str, float]]:
    """Policy, MLP floor, expert and random returns per task on the same seeded episodes."""
    from pac.evaluation import NetworkPolicy, evaluate, load_policy_model

    net, _ = load_policy_model(export)
    cfg = eval_config(args)
    policy = evaluate(NetworkPolicy(net, cfg, critic=False), list(tasks), cfg, progress=False)
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
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.train.lr, weight_decay=0.0)
        self.steps = 0  # optimizer steps taken: `fit` continues from here on the loader's next batch
        self.name = "mlp-2x256"

    def save(self, path: Path) -> None:
        """Weights, optimizer state and step count (plain tensors and numbers), written atomically."""
        import torch

        partial = path.with_suffix(".partial")
        torch.save({"steps": self.steps, "net": self.net.state_dict(), "opt": self.opt.state_dict()}, partial)
        partial.replace(path)

    def load(self, path: Path) -> None:
        import torch

        state = torch.load(path, weights_only=True)  # our own file, and still never unpickled as code
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.steps = int(state["steps"])

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
        """Train until `steps` optimizer steps in all (a fresh floor: `steps` of them); returns the seconds spent."""
        import torch
        from pac.data.loader import build_loader
        from pac.inputs import tokenize
        from pac.networks import action_targets, cross_entropy

        ids, _ = tokenize(self.instructions, self.cfg.model.max_text_tokens)
        rows = {tuple(r): i for i, r in enumerate(ids.tolist())}
        loader = build_loader(self.cfg, batch_size=self.cfg.train.global_batch_size)
        t0 = time.perf_counter()
        for step in range(self.steps, steps):
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
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.steps = step + 1
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
    if "curve" in result:  # fidelity at each evaluation on the way: PAC net (MLP floor)
        tasks = list(result["tasks"])
        lines += ["", "Fidelity on the way, PAC net" + (" (MLP floor)" if mlp else "") + ":", "",
                  "| steps | " + " | ".join(tasks) + " | mean | train s |", "|---:|" + "---:|" * (len(tasks) + 2)]
        for c in result["curve"]:
            cells = [f"{c['tasks'][t]['fidelity']:.2f}" + (f" ({c['tasks'][t]['mlp_fidelity']:.2f})" if mlp else "")
                     for t in tasks]
            mean_cell = f"{fidelity_mean(c['tasks'], 'fidelity'):.2f}" + (
                f" ({fidelity_mean(c['tasks'], 'mlp_fidelity'):.2f})" if mlp else "")
            lines.append(f"| {c['steps']} | " + " | ".join(cells) + f" | {mean_cell} | {c['train_s']:.0f} |")
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
    found = tasks_and_data(args, "fidelity")
    if found is None:
        return 2
    tasks, dataset = found
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cfg = train_config(args, dataset)
    if args.eval_every and cfg.train.lr_schedule != "constant":
        print("fidelity: --eval-every needs train.lr_schedule=constant (a decaying rate depends on the whole budget, "
              "so a point on the way would not be the same run stopped early)", file=sys.stderr)
        return 2
    # A constant rate makes a longer run the same run continued: --steps may grow across invocations.
    start_or_resume(cfg, extendable=cfg.train.lr_schedule == "constant")
    run = Path(cfg.train.output)
    curve_file = run / "curve.json"  # inside the run folder: a run started afresh forgets its curve with it
    curve = [c for c in (json.loads(curve_file.read_text()) if curve_file.exists() else []) if c["steps"] <= args.steps]
    done = {c["steps"] for c in curve}
    floor = None
    reference = None
    started_at = None  # the step this invocation resumed the run at (0: trained from scratch)
    for step in milestones(args.steps, args.eval_every):
        if step in done:
            continue
        trained, train_s, resumed_from = train_segment(args, dataset, step)
        if trained is None:
            return 3
        if trained.steps > step:  # a run trained past this point before: its weights there are gone
            log.warning("the run in %s is at step %d already: no evaluation at step %d", run, trained.steps, step)
            continue
        if floor is None and not args.no_mlp:
            floor = mlp_floor(trained.export_uri, dataset, tasks, run / "mlp-floor.pt")
        if floor is not None:
            floor.fit(step)
            floor.save(run / "mlp-floor.pt")
        reference = reference or expert_reference(tasks, args)
        per_task = evaluate_all(trained.export_uri, floor, tasks, args, reference)
        started_at = resumed_from if started_at is None else started_at
        curve.append({"steps": step, "train_s": train_s, "resumed_from": started_at, "tasks": per_task})
        write_atomic(curve_file, json.dumps(curve, indent=2))
        report(args, dataset, curve, out)
    if not curve:
        print(f"fidelity: nothing to evaluate in {run}", file=sys.stderr)
        return 2
    if done >= set(milestones(args.steps, args.eval_every)):  # everything was evaluated before: the report again
        curve[-1] = {**curve[-1], "resumed_from": curve[-1]["steps"]}
        report(args, dataset, curve, out)
    print((out / "results.md").read_text())
    return 0


def train_segment(args: argparse.Namespace, dataset: str, step: int) -> tuple[Any, float, int]:
    """Train (or resume) the run up to `step` and export it; (None, ...) when it was stopped before."""
    from pac.training.loop import train

    t0 = time.perf_counter()
    trained = train(train_config(args, dataset, step))
    train_s = time.perf_counter() - t0
    if trained.preempted:
        print(f"fidelity: stopped at step {trained.steps}; the same command resumes it", file=sys.stderr)
        return None, train_s, 0
    resumed_from = trained.steps - len(trained.history)
    if resumed_from:
        log.info("resumed at step %d: train_s covers the last %d steps", resumed_from, len(trained.history))
    return trained, train_s, resumed_from


def mlp_floor(export: str, dataset: str, tasks: Sequence[str], saved: Path) -> MlpFloor:
    """The MLP floor on the statistics the PAC run standardised with, continued from `saved` if there is one."""
    from pac.data.dataset import read_manifest
    from pac.training.export import load_export

    _, trained_cfg = load_export(export)
    manifest = read_manifest(dataset, trained_cfg.storage)
    floor = MlpFloor(trained_cfg, [manifest.tasks[t].instruction for t in tasks])
    if saved.exists():
        floor.load(saved)
    return floor


def report(args: argparse.Namespace, dataset: str, curve: list[dict[str, Any]], out: Path) -> None:
    """results.json / results.md for the latest evaluation, with the curve so far (and its plot)."""
    last = curve[-1]
    result = {"preset": args.preset, "steps": last["steps"], "batch": args.batch, "seed": args.seed,
              "dataset": dataset, "episodes": args.episodes, "episode_steps": args.episode_steps,
              "expert_noise_std": None if args.dataset else args.expert_noise_std, "eval_episodes": args.eval_episodes,
              "eval_seed": args.eval_seed, "overrides": args.set,
              "train_s": sum(c["train_s"] for c in curve), "resumed_from": last["resumed_from"],
              "tasks": last["tasks"], "fidelity_mean": fidelity_mean(last["tasks"], "fidelity")}
    if "mlp_fidelity" in next(iter(last["tasks"].values())):
        result["mlp_fidelity_mean"] = fidelity_mean(last["tasks"], "mlp_fidelity")
    if len(curve) > 1:
        result["curve"] = curve
        plot_curve(curve, result, out / "curve.png")
    write_atomic(out / "results.json", json.dumps(result, indent=2))
    write_atomic(out / "results.md", markdown(result) + "\n")


def fidelity_mean(tasks: dict[str, dict[str, float]], key: str) -> float:
    return float(np.mean([r[key] for r in tasks.values()]))


def write_atomic(path: Path, text: str) -> None:
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(text)
    partial.replace(path)


def plot_curve(curve: list[dict[str, Any]], result: dict[str, Any], path: Path) -> None:
    """Fidelity against training steps: each task (thin) and the mean (thick); the MLP floor dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [c["steps"] for c in curve]
    tasks = list(curve[-1]["tasks"])
    fig = Figure(figsize=(7.2, 4.6))
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(len(tasks))]
    for key, style, name in (("fidelity", "-", "PAC net"), ("mlp_fidelity", "--", "MLP floor")):
        if key not in curve[-1]["tasks"][tasks[0]]:
            continue
        for task, color in zip(tasks, colors):
            ax.plot(steps, [c["tasks"][task][key] for c in curve], style, color=color, lw=1, alpha=0.7,
                    label=task if key == "fidelity" else None)
        ax.plot(steps, [fidelity_mean(c["tasks"], key) for c in curve], style, color="black", lw=2.5, marker="o",
                label=f"{name}: mean")
    ax.axhline(0.9, color="gray", lw=0.8, ls=":")
    ax.set_xlabel(f"optimizer steps (batch {result['batch']}, {len(tasks)} tasks)")
    ax.set_ylabel("fidelity (0 random, 1 expert)")
    ax.set_title(f"BC fidelity against budget, preset {result['preset']}, seed {result['seed']}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))


if __name__ == "__main__":
    sys.exit(main())
