"""Quality benchmark: BC vs BC+Q vs PAC on mixed-quality offline data (the paper's central claim).

One script, library APIs only (generate -> ingest -> train -> evaluate):

1. **Data.** For each task, `--random` uniform-random, `--noisy` degraded-expert, `--damped` sluggish-expert
   and `--expert` expert episodes of `--episode-steps` steps (`pac.data.generate`, fixed seeds), ingested
   into one local dataset.
   The default mix is 80% uniform-random and 20% expert episodes; `--random 0 --damped 16 --expert 4`
   makes the sub-optimal behaviour consistent and in the expert's own states, and `--damped-expert-prob 0.4`
   puts the expert's action beside the damped one in the same states (all three:
   docs/results/quality-toy-designs.md).
2. **Training.** BC (alpha=1, beta=0), BC+Q (alpha=1, beta>0) and PAC (alpha<1, the `ObjectiveConfig`
   defaults) with the SAME preset, data, seed, steps and batch size (`pac.training.loop.train`; MLflow off).
3. **Evaluation.** Each exported policy, greedy (argmax bins, no Q-based action selection), on
   `--eval-episodes` fixed-seed episodes per task (`pac.evaluation.evaluate_model`): normalised score
   `(R - R_random) / (R_max - R_random)`, as everywhere in the project.

Prints one table per task and the mean normalised score per method (with two or more seeds, also each
method's difference from BC paired by seed, with its 95% t-interval), and writes `results.json` and
`results.md` (plus the dataset, runs and per-method evaluation reports) into `--output`.
`benchmarks/quality_merge.py` joins runs made one seed per process into the same report.

    .venv/bin/python benchmarks/quality.py --output outputs/quality          # the documented run
    .venv/bin/python benchmarks/quality.py --output /tmp/q --steps 50 --tasks cartpole/balance \
        --random 1 --noisy 1 --expert 1 --eval-episodes 2 --episode-steps 50    # plumbing smoke, ~1 min

Runtime of the default run on 2 shared CPU cores: see `docs/results/quality-toy-designs.md` (it prints its own timings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Defaults of the documented run (docs/results/quality-toy-designs.md): CPU-feasible in 20-40 minutes on 2 cores.
TASKS = ("cartpole/balance", "reacher/easy", "point_mass/easy")
METHODS = ("BC", "BC+Q", "PAC")
DIAGNOSTICS = ("loss", "bc_nll", "entropy", "q_loss", "q_mean", "target_q_mean", "eta", "kl_weights",
               "q_sampled_std", "improve_loss", "bc_kept")
PROBES = ("critic_expert_pct", "critic_mirror_pct", "critic_greedy_pct", "greedy_expert_dist")

log = logging.getLogger("quality")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from pac.config import GenerateConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="outputs/quality", help="output directory (replaced if it exists)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task ids (see `pac tasks`)")
    p.add_argument("--methods", default=",".join(METHODS), help="subset of BC,BC+Q,PAC to run")
    p.add_argument("--preset", default="tiny", help="model size preset (same for every method)")
    p.add_argument("--steps", type=int, default=3000, help="training steps per method")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size per step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: train.lr of pac.config)")
    p.add_argument("--lr-schedule", default=None, choices=("constant", "cosine"),
                   help="learning-rate schedule (default: train.lr_schedule; the record in "
                        "docs/results/quality-toy-designs.md used cosine)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                   help="training precision (default: train.precision of pac.config)")
    p.add_argument("--episode-steps", type=int, default=200, help="episode length for data and evaluation")
    p.add_argument("--random", type=int, default=16, help="uniform-random episodes per task")
    p.add_argument("--noisy", type=int, default=0, help="noisy-expert episodes per task")
    p.add_argument("--damped", type=int, default=0,
                   help="damped-expert episodes per task (consistently sub-optimal in the expert's own states)")
    p.add_argument("--damped-scale", type=float, default=GenerateConfig.damped_scale,
                   help="damped policy: the expert's actions scaled by this towards the centre of the range")
    p.add_argument("--damped-noise-std", type=float, default=GenerateConfig.damped_noise_std,
                   help="damped policy: Gaussian noise on its actions (fraction of half the action range)")
    p.add_argument("--damped-expert-prob", type=float, default=GenerateConfig.damped_expert_prob,
                   help="damped policy: per-step probability of the expert's own action (the better action "
                        "beside the data's mode, in the same states)")
    p.add_argument("--expert", type=int, default=4, help="expert episodes per task")
    p.add_argument("--noisy-expert-prob", type=float, default=GenerateConfig.noisy_expert_prob,
                   help="noisy policy: probability a step uses the (noised) expert action, else uniform random")
    p.add_argument("--noisy-action-std", type=float, default=GenerateConfig.noisy_action_std,
                   help="noisy policy: Gaussian noise on expert actions (fraction of half the action range)")
    p.add_argument("--eval-episodes", type=int, default=20, help="evaluation episodes per task and method")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated episodes")
    p.add_argument("--seeds", default="0,1,2",
                   help="training seeds: every method trains once per seed (initial weights, batches, action samples)")
    p.add_argument("--eval-seed", type=int, default=1000, help="base seed of the evaluation episodes")
    p.add_argument("--pac-alpha", type=float, default=None, help="PAC's alpha (default: ObjectiveConfig's)")
    p.add_argument("--bcq-beta", type=float, default=None, help="BC+Q's beta (default: ObjectiveConfig's)")
    p.add_argument("--objective", action="append", default=[], metavar="KEY=VALUE",
                   help="override an ObjectiveConfig field for every method (repeatable), e.g. epsilon=0.05")
    p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig field of the preset for every method (repeatable), "
                        "e.g. proprio_fourier_bands=8")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: on a shared 2-core machine more threads oversubscribe and run slower)")
    p.add_argument("--log-every", type=int, default=250, help="training log interval (steps)")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="checkpoint interval (steps): a stopped run resumes from its last checkpoint")
    args = p.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.methods = [m for m in args.methods.split(",") if m]
    args.seeds = parse_seeds(p, args.seeds)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if args.random + args.noisy + args.damped + args.expert < 1:
        p.error("--random/--noisy/--damped/--expert: need at least one episode per task")
    return args


def parse_seeds(p: argparse.ArgumentParser, text: str) -> list[int]:
    """`--seeds 0,1,2` as integers; a parser error for anything else or for none."""
    try:
        seeds = [int(x) for x in text.split(",") if x]
    except ValueError:
        p.error(f"--seeds: comma-separated integers, got {text!r}")
    if not seeds:
        p.error("--seeds: name at least one seed")
    return seeds


# --------------------------------------------------------------------------------------------- data


def generate(args: argparse.Namespace, stats: Any) -> Iterator[Any]:
    """Episodes of every task and quality, with per-quality counts (one `GenerateConfig` per quality)."""
    from pac.config import GenerateConfig
    from pac.data.generate import generate_episodes

    for quality, count in (("random", args.random), ("noisy", args.noisy), ("damped", args.damped),
                           ("expert", args.expert)):
        if count == 0:
            continue
        cfg = GenerateConfig(tasks=list(args.tasks), episodes_per_policy=count, qualities=[quality],
                             episode_steps=args.episode_steps, seed=args.data_seed,
                             noisy_expert_prob=args.noisy_expert_prob, noisy_action_std=args.noisy_action_std,
                             damped_scale=args.damped_scale, damped_noise_std=args.damped_noise_std,
                             damped_expert_prob=args.damped_expert_prob)
        yield from generate_episodes(cfg, stats=stats, progress=False)


def discounted_returns(rewards: np.ndarray, discount: float) -> np.ndarray:
    """Monte-Carlo discounted return-to-go of every step (truncated at the episode's end)."""
    out = np.zeros(len(rewards), np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + discount * acc
        out[t] = acc
    return out


@dataclass
class ExpertStates:
    """States of a task's expert episodes and the expert's normalised actions there (the critic probe)."""

    instruction: str
    proprio: np.ndarray  # (N, P)
    actions: np.ndarray  # (N, A) in [-1, 1]


def build_dataset(args: argparse.Namespace, root: Path,
                  discount: float) -> tuple[str, dict[str, Any], dict[str, ExpertStates]]:
    """Generate and ingest the mixed dataset; returns its URI, per-task/quality statistics and expert states."""
    from pac.config import StorageConfig
    from pac.data.generate import ReturnStats
    from pac.data.ingest import ingest
    from pac.inputs import normalize_action

    stats = ReturnStats(args.episode_steps)
    rtg: dict[str, list[np.ndarray]] = {}
    experts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    instructions: dict[str, str] = {}

    def tap() -> Iterator[Any]:
        for ep in generate(args, stats):
            rtg.setdefault(ep.task, []).append(discounted_returns(ep.rewards, discount))
            if ep.quality == "expert":
                experts.setdefault(ep.task, []).append(
                    (ep.proprio[:-1], normalize_action(ep.actions, ep.action_low, ep.action_high)))
                instructions[ep.task] = ep.instruction
            yield ep

    ref = ingest(tap(), "mixed", storage=StorageConfig(root=str(root / "store")), progress=False)
    summary = {f"{task}|{quality}": {"episodes": len(r), "return_mean": float(np.mean(r)),
                                     "return_std": float(np.std(r))}
               for (task, quality), r in stats.returns.items()}
    # The Monte-Carlo discounted return of the behaviour data: what q_mean (Q of data actions) estimates,
    # up to bootstrapping past truncated episode ends.
    mc = {task: float(np.concatenate(v).mean()) for task, v in rtg.items()}
    probe = {task: ExpertStates(instructions[task], np.concatenate([p for p, _ in v]),
                                np.concatenate([a for _, a in v])) for task, v in experts.items()}
    return str(ref), {"returns": summary, "table": stats.table(), "mc_discounted_return": mc}, probe


def probe_indices(n: int, states: int = 256) -> np.ndarray:
    """The probe's states: up to `states` evenly spaced over a task's `n` expert states."""
    return np.linspace(0, n - 1, min(states, n)).astype(int)


def probe_network(net: Any, probes: dict[str, ExpertStates], samples: int = 32, states: int = 256,
                  seed: int = 0) -> dict[str, float]:
    """How the critic ranks the expert's actions, and how close the greedy policy acts to the expert.

    On (up to `states`) states of the expert episodes of each task, averaged over tasks:
    - `critic_expert_pct`: fraction of `samples` uniform random actions whose expected Q is below the
      expert action's (0.5: the critic cannot tell them apart; 1: the expert action always ranks first);
    - `critic_mirror_pct`: how often the expert action's Q exceeds that of its mirror image -a (same
      magnitude, opposite direction; ties count half): whether the critic knows which way to act,
      not just that small or large actions pay (a preference `critic_expert_pct` cannot tell apart);
    - `critic_greedy_pct`: the same as `critic_expert_pct` for the greedy policy's action;
    - `greedy_expert_dist`: mean |greedy action - expert action| in normalised units (uniform: ~0.67).
    Per-task values are returned too, as `<probe>/<task>`.
    """
    import torch
    from pac.inputs import Observation
    from pac.networks import bins_to_action, expected_value, value_support

    out: dict[str, list[float]] = {k: [] for k in PROBES}
    per_task: dict[str, float] = {}
    gen = torch.Generator().manual_seed(seed)
    support = value_support(net.cfg)
    with torch.no_grad():
        for task, probe in probes.items():
            idx = probe_indices(len(probe.proprio), states)
            obs = Observation.from_numpy(list(probe.proprio[idx]), [probe.instruction] * len(idx),
                                         net.cfg.max_text_tokens)
            expert = torch.from_numpy(probe.actions[idx])  # (N, A)
            n, a = expert.shape
            z = net.encode(obs)
            greedy = bins_to_action(net.policy_logits(z, a).argmax(-1), net.cfg.action_bins,
                                    net.cfg.action_bin_mu)  # (N, A)
            uniform = torch.rand(n, samples, a, generator=gen) * 2 - 1
            cand = torch.cat([expert[:, None], greedy[:, None], -expert[:, None], uniform], 1)  # (N, 3+S, A)
            q = expected_value(net.q_logits(z, cand, torch.ones(n, a, dtype=torch.bool)), support)  # (N, 3+S)
            rest = q[:, 3:]
            values = {"greedy_expert_dist": float((greedy - expert).abs().mean()),
                      "critic_mirror_pct": float(((q[:, 0] > q[:, 2]).float() + 0.5 * (q[:, 0] == q[:, 2]).float())
                                                 .mean())}
            for key, col in (("critic_expert_pct", 0), ("critic_greedy_pct", 1)):
                pct = (q[:, col:col + 1] > rest).float() + 0.5 * (q[:, col:col + 1] == rest).float()
                values[key] = float(pct.mean())
            for key, value in values.items():
                out[key].append(value)
                per_task[f"{key}/{task}"] = value
    return {**{k: float(np.mean(v)) for k, v in out.items()}, **per_task}


# --------------------------------------------------------------------------------------------- training


def run_name(method: str, seed: int) -> str:
    return f"{method.replace('+', '_')}_s{seed}"


def key_values(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` flags -> mapping; `Config.from_dict` converts and validates the values."""
    return {key: value for key, _, value in (item.partition("=") for item in items)}


def method_config(args: argparse.Namespace, method: str, seed: int, dataset: str, root: Path) -> Any:
    """The resolved `Config` of one method and training seed: identical for all methods except alpha/beta."""
    from pac.config import Config, EvalConfig, ObjectiveConfig, StorageConfig, TrackingConfig, TrainConfig
    from pac.config import DataConfig as Data
    from pac.presets import model_config

    base = {**dataclasses.asdict(ObjectiveConfig()), **key_values(args.objective)}
    if method == "BC":
        base.update(alpha=1.0, beta=0.0)
    elif method == "BC+Q":
        base["alpha"] = 1.0
        if args.bcq_beta is not None:
            base["beta"] = args.bcq_beta
    elif args.pac_alpha is not None:
        base["alpha"] = args.pac_alpha
    train = {"steps": args.steps, "global_batch_size": args.batch_size, "micro_batch_size": args.batch_size,
             "output": str(root / "runs" / run_name(method, seed)),
             "checkpoint_every": min(args.checkpoint_every, args.steps), "keep_checkpoints": 1,
             "log_every": args.log_every, "resume": True}
    train |= {k: v for k, v in (("lr", args.lr), ("precision", args.precision), ("lr_schedule", args.lr_schedule))
              if v is not None}
    cfg = Config.from_dict({
        "preset": args.preset, "seed": seed,
        "model": {**dataclasses.asdict(model_config(args.preset)), **key_values(args.model)},
        "objective": base, "data": dataclasses.asdict(Data(dataset=dataset, tasks=list(args.tasks))),
        "train": {**dataclasses.asdict(TrainConfig()), **train},
        "eval": {**dataclasses.asdict(EvalConfig()),
                 "tasks": list(args.tasks), "episodes": args.eval_episodes, "num_envs": args.eval_episodes,
                 "episode_steps": args.episode_steps, "greedy": True, "q_select_samples": 0, "video": False,
                 "seed": args.eval_seed},
        "storage": dataclasses.asdict(StorageConfig(root=str(root / "store"))),
        "tracking": dataclasses.asdict(TrackingConfig(enabled=False)),
    })
    if cfg.objective.method != method:
        raise SystemExit(f"{method}: the objective overrides make it {cfg.objective.method} (alpha="
                         f"{cfg.objective.alpha}, beta={cfg.objective.beta}); fix --objective/--pac-alpha/--bcq-beta")
    return cfg


def start_or_resume(cfg: Any, extendable: bool = False) -> None:
    """Resume the unit's run from its last checkpoint if it trains the same configuration; else start it afresh
    (a run folder left by other settings is removed, never continued). `extendable`: a run that differs only in
    its budget (`train.steps` and the intervals derived from it) is the same run, continued or extended."""
    run = Path(cfg.train.output)
    marker = run / "unit-config.json"
    wanted = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    if marker.exists() and _identity(marker.read_text(), extendable) == _identity(wanted, extendable):
        return
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    partial = marker.with_suffix(".partial")
    partial.write_text(wanted)
    partial.replace(marker)


def _identity(config_json: str, extendable: bool) -> Any:
    config = json.loads(config_json)
    if extendable:
        config["train"] |= dict.fromkeys(("steps", "log_every", "checkpoint_every"))
    return config


def tail_means(history: list[dict[str, float]], frac: float = 0.1) -> dict[str, float]:
    """Mean of each diagnostic metric over the last `frac` of training steps."""
    if not history:  # resumed at its last step: nothing trained in this process
        return {}
    tail = history[-max(1, int(len(history) * frac)):]
    return {k: float(np.mean([h[k] for h in tail])) for k in DIAGNOSTICS if k in tail[0]}


def run_method(args: argparse.Namespace, method: str, seed: int, dataset: str, root: Path,
               probes: dict[str, ExpertStates]) -> dict[str, Any]:
    """Train one method with one seed, evaluate its export; returns its report, diagnostics and timings."""
    from pac.evaluation import evaluate_model, load_policy_model
    from pac.training.loop import train

    cfg = method_config(args, method, seed, dataset, root)
    start_or_resume(cfg)
    o = cfg.objective
    print(f"\n== {method} seed {seed}: alpha={o.alpha} beta={o.beta} eta={o.eta} learn_eta={o.learn_eta} "
          f"epsilon={o.epsilon} K={o.num_action_samples} n_step={o.n_step} tau={o.polyak_tau} | {cfg.preset}, "
          f"{cfg.train.steps} steps x batch {cfg.train.global_batch_size}", flush=True)
    t0 = time.perf_counter()
    result = train(cfg, run_name=run_name(method, seed))
    t_train = time.perf_counter() - t0
    if result.preempted:
        raise SystemExit(f"{method} seed {seed}: stopped at step {result.steps}; the same command resumes it")
    resumed_from = result.steps - len(result.history)
    if resumed_from:
        print(f"   resumed at step {resumed_from}: the training time covers the last "
              f"{len(result.history)} steps", flush=True)
    diag = tail_means(result.history)
    print(f"   trained in {t_train / 60:.1f} min; last-10% means: "
          + " ".join(f"{k}={v:.4g}" for k, v in diag.items()), flush=True)
    net, saved = load_policy_model(result.export_uri)
    diag.update(probe_network(net, probes, seed=args.data_seed))
    print("   probe on expert states: " + " ".join(f"{k}={diag[k]:.3f}" for k in PROBES), flush=True)
    t1 = time.perf_counter()
    report = evaluate_model(net, saved, output_dir=root / "eval" / run_name(method, seed),
                            name=f"{method} seed {seed}")
    t_eval = time.perf_counter() - t1
    print(f"   evaluated in {t_eval / 60:.1f} min: mean normalised score {report.mean_normalized_score:.3f}",
          flush=True)
    return {"method": method, "seed": seed, "objective": dataclasses.asdict(o), "report": report.to_dict(),
            "diagnostics": diag, "train_s": t_train, "eval_s": t_eval, "resumed_from": resumed_from,
            "history": [{k: h[k] for k in DIAGNOSTICS if k in h} for h in result.history[:: max(1, args.log_every)]]}


# --------------------------------------------------------------------------------------------- tables


def seed_mean(runs: dict[int, dict[str, Any]], task: str | None = None) -> float:
    """Normalised score (of one task, or the mean over tasks) averaged over a method's seeds."""
    if task is None:
        return float(np.mean([r["report"]["summary"]["normalized_score_mean"] for r in runs.values()]))
    return float(np.mean([r["report"]["tasks"][task]["normalized_score"] for r in runs.values()]))


def task_table(task: str, results: dict[str, dict[int, dict[str, Any]]]) -> str:
    """Markdown table of one task: a row per method and seed, then the mean over seeds."""
    lines = [f"### {task}", "", "| method | seed | return (95% CI) | random | max | normalised (95% CI) | success |",
             "|---|---|---|---:|---:|---|---:|"]
    for method, runs in results.items():
        for seed, res in runs.items():
            r = res["report"]["tasks"][task]
            ci, nci = r["return_ci95"], r["normalized_ci95"]
            success = "n/a" if r["success_rate"] is None else f"{r['success_rate']:.0%}"
            lines.append(f"| {method} | {seed} | {r['return_mean']:.1f}"
                         + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
                         + f" | {r['random_return_mean']:.1f} | {r['max_return']:.0f} | {r['normalized_score']:.3f}"
                         + (f" [{nci[0]:.3f}, {nci[1]:.3f}]" if nci else "") + f" | {success} |")
        if len(runs) > 1:
            lines.append(f"| **{method}** | mean | | | | **{seed_mean(runs, task):.3f}** | |")
    return "\n".join(lines)


def summary_table(results: dict[str, dict[int, dict[str, Any]]], tasks: Sequence[str]) -> str:
    """Markdown table: per method, the normalised score of each task and their mean (averaged over seeds),
    and the mean of each seed."""
    head = "| method | " + " | ".join(tasks) + " | **mean** | per seed |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 1) + "---|"]
    for method, runs in results.items():
        per_seed = ", ".join(f"{r['report']['summary']['normalized_score_mean']:.3f}" for r in runs.values())
        lines.append(f"| {method} | " + " | ".join(f"{seed_mean(runs, t):.3f}" for t in tasks)
                     + f" | **{seed_mean(runs):.3f}** | {per_seed} |")
    return "\n".join(lines)


def paired_table(results: dict[str, dict[int, dict[str, Any]]], baseline: str = "BC") -> str:
    """Markdown table: each method minus `baseline`, paired by training seed (same data, initial weights and
    batches), with the 95% Student-t interval of the mean difference. Empty without two shared seeds."""
    from pac.evaluation import mean_ci95

    base = results.get(baseline, {})
    lines = [f"| method | seeds | mean − {baseline} | 95% CI | seeds above {baseline} |", "|---|---:|---:|---|---:|"]
    for method, runs in results.items():
        seeds = sorted(set(runs) & set(base))
        if method == baseline or len(seeds) < 2:
            continue
        diff = [runs[s]["report"]["summary"]["normalized_score_mean"]
                - base[s]["report"]["summary"]["normalized_score_mean"] for s in seeds]
        mean, ci = mean_ci95(diff)
        assert ci is not None  # two or more seeds
        lines.append(f"| {method} | {len(seeds)} | {mean:+.3f} | [{ci[0]:+.3f}, {ci[1]:+.3f}] | "
                     f"{sum(d > 0 for d in diff)} of {len(seeds)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def score_sections(results: dict[str, dict[int, dict[str, Any]]], tasks: Sequence[str]) -> list[str]:
    """Markdown lines of the score part of a report: the summary, the paired differences (with two or more
    shared seeds) and one table per task."""
    md = ["## Mean normalised score (0 = uniform random, 1 = maximum return)", "", summary_table(results, tasks), ""]
    paired = paired_table(results)
    if paired:
        md += ["## Paired by training seed", "", paired, ""]
    md += ["## Per task", ""]
    for task in tasks:
        md += [task_table(task, results), ""]
    return md


def probe_table(results: dict[str, dict[int, dict[str, Any]]], tasks: Sequence[str]) -> str:
    """Markdown table of the per-task probes on the expert's states, per method and seed."""
    keys = ("critic_expert_pct", "critic_mirror_pct", "greedy_expert_dist")
    lines = ["| method | seed | " + " | ".join(f"{k} {t}" for t in tasks for k in keys) + " |",
             "|---|---|" + "---:|" * (len(keys) * len(tasks))]
    for method, runs in results.items():
        for seed, res in runs.items():
            d = res["diagnostics"]
            lines.append(f"| {method} | {seed} | " + " | ".join(f"{d[f'{k}/{t}']:.2f}" if f"{k}/{t}" in d else ""
                                                                for t in tasks for k in keys) + " |")
    return "\n".join(lines)


def diagnostics_table(results: dict[str, dict[int, dict[str, Any]]], mc: dict[str, float]) -> str:
    """Markdown table of the training diagnostics (last 10% of steps) and the probe, per method and seed."""
    every = [r for runs in results.values() for r in runs.values()]
    keys = [k for k in (*DIAGNOSTICS, *PROBES) if any(k in r["diagnostics"] for r in every)]
    lines = ["| method | seed | " + " | ".join(keys) + " | train min |", "|---|---|" + "---:|" * (len(keys) + 1)]
    for method, runs in results.items():
        for seed, res in runs.items():
            d = res["diagnostics"]
            lines.append(f"| {method} | {seed} | " + " | ".join(f"{d[k]:.4g}" if k in d else "" for k in keys)
                         + f" | {res['train_s'] / 60:.1f} |")
    lines.append("")
    lines.append("Monte-Carlo discounted return-to-go of the data (what `q_mean` estimates, truncated episodes "
                 "excepted): " + ", ".join(f"{t} {v:.1f}" for t, v in mc.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("absl", "OpenGL", "deepspeed", "DeepSpeed", "matplotlib", "pac.data", "pac.evaluation"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pac.config import ObjectiveConfig

    root = Path(args.output).resolve()  # absolute: a relative train.output would resolve under the store root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    start = time.perf_counter()
    discount = float(key_values(args.objective).get("discount", ObjectiveConfig.discount))
    print(f"generating {args.random} random + {args.noisy} noisy + {args.damped} damped + {args.expert} expert "
          f"episodes x {args.episode_steps} steps for {len(args.tasks)} task(s)", flush=True)
    dataset, data, probes = build_dataset(args, root, discount)
    t_data = time.perf_counter() - start
    print(data["table"], flush=True)
    print(f"dataset {dataset} in {t_data:.0f}s", flush=True)

    results: dict[str, dict[int, dict[str, Any]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            results.setdefault(method, {})[seed] = run_method(args, method, seed, dataset, root, probes)
    total = time.perf_counter() - start

    command = "benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = ["# Quality benchmark: BC vs BC+Q vs PAC on mixed-quality data", "",
          f"Command: `.venv/bin/python {command}`", "",
          f"Runtime: {total / 60:.1f} min total (data {t_data:.0f}s; "
          + ", ".join(f"{m} train {sum(r['train_s'] for r in runs.values()) / 60:.1f} + eval "
                      f"{sum(r['eval_s'] for r in runs.values()) / 60:.1f} min" for m, runs in results.items())
          + f"; {len(args.seeds)} seed(s) per method)", "",
          *score_sections(results, args.tasks),
          "## Training data", "", "```", data["table"], "```", "",
          "## Training diagnostics (mean over the last 10% of steps)", "",
          diagnostics_table(results, data["mc_discounted_return"]), "",
          "## Probes per task (expert states; 0.5 = chance for the critic)", "",
          probe_table(results, args.tasks), ""]
    text = "\n".join(md)
    (root / "results.md").write_text(text)
    (root / "results.json").write_text(json.dumps({
        "command": command, "args": vars(args), "dataset": dataset, "data": data, "runtime_s": total,
        "data_s": t_data, "summary": {m: {"normalized_score_mean": seed_mean(runs),
                                          "tasks": {t: seed_mean(runs, t) for t in args.tasks}}
                                      for m, runs in results.items()},
        "methods": {m: {str(k): v for k, v in runs.items()} for m, runs in results.items()}}, indent=2) + "\n")
    print("\n" + text)
    print(f"wrote {root / 'results.md'} and {root / 'results.json'} ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
