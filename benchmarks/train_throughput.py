"""Training throughput and MFU on this host: a plain-torch PAC loop vs `DeepSpeedEngine` at ZeRO-0/2/3.

In one process (world size 1, set up by `pac.training.engine.init_world`) and for each preset this measures:
the matmul peak of this machine in bf16 and fp32 (`peak_matmul_flops`, before and after the runs; the
higher is used), the model FLOPs of one optimizer step (`count_flops` on forward + backward of the PAC
loss, target-network forwards included), and the median step time of

* `torch`: the baseline written below: `PACLearner`, torch AdamW, bf16 autocast, gradient clipping,
  an fp32 target network with Polyak updates: the same loss, batch and optimizer as the engine;
* `ZeRO-s`: `DeepSpeedEngine.train_step` at each requested stage, bf16 (and fp32 for `--fp32-presets`).

Each of `--methods` is measured: `pac` (the full objective) and `bc` (alpha 1, beta 0, no target network),
and beside them `mlp-ac`, a plain-torch 2x256-MLP offline actor-critic (twin critics, a value net, an actor,
IQL-shaped) on the same batches: the floor a network this small could reach. With `--baseline-rev REV` the
same measurement also runs the `pac` package of git revision REV (in alternating subprocesses, `--rounds`
times, so the host's load affects both alike): a speed-up is always measured against the old code path
in the same run.

Warm-up steps are excluded; each timed step takes a fresh batch (built before timing, no I/O) shaped like the
benchmark tasks' data (`--batches tasks`: cartpole, point mass and reacher states with their registered
instructions, 48 byte tokens each) or the short synthetic instructions of the unit tests (`--batches synthetic`);
the variants of a preset are timed round-robin, one step each per round, so a shared host's load
affects them alike. Prints a Markdown table: samples/s, observation tokens/s, achieved FLOP/s, MFU (achieved / measured
matmul peak of the same dtype) and each engine's step time relative to the torch loop of the same dtype.

On a shared host set OMP_WAIT_POLICY=PASSIVE (read when torch loads OpenMP, so before Python starts):
spinning OpenMP threads whose peer is descheduled slow small models' steps down by an order of magnitude.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train_throughput.py
    .venv/bin/python benchmarks/train_throughput.py --presets tiny small-cpu --batch 16 --steps 20 --json out.json
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train_throughput.py --presets tiny --batch 256 \
        --stages 0 --fp32-presets tiny --methods pac bc --baseline-rev f9109ac       # the step (issue 27)
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train_throughput.py --presets tiny tiny@num_latents=8 \
        --batch 256 --stages 0 --fp32-presets tiny tiny@num_latents=8 --methods pac bc    # a preset's variants
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pac.config import Config, ModelConfig, ObjectiveConfig, TrackingConfig, TrainConfig, assignments
from pac.data.synthetic import SyntheticSource
from pac.inputs import Observation, Transition
from pac.networks import count_parameters
from pac.objective import PACLearner, update_target
from pac.training.engine import DeepSpeedEngine, World, init_world, lr_lambda, needs_target
from pac.training.flops import count_flops, peak_matmul_flops, tokens_per_sample

log = logging.getLogger("train_throughput")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
METHODS = {"pac": {}, "bc": {"alpha": 1.0, "beta": 0.0}}  # ObjectiveConfig overrides; pac = the defaults
# The fidelity benchmark's tasks: id (for its registered instruction), state size, action size.
TASKS = (("cartpole/balance", 5, 1), ("point_mass/easy", 4, 2), ("reacher/easy", 6, 2))
StepFn = Callable[[Transition, int], dict[str, float]]


class TorchBaseline:
    """One PAC optimizer step in plain torch: the reference the DeepSpeed overhead is measured against.

    The same work as `DeepSpeedEngine.train_step` with one micro-batch: forward/backward of the PAC loss
    (under bf16 autocast when `precision == "bf16"`, fp32 weights), gradient clipping, torch AdamW with the
    engine's parameter groups and schedule, then the Polyak update of an fp32 target network.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.learner = PACLearner(cfg.model, cfg.objective)
        self.target = copy.deepcopy(self.learner.net).requires_grad_(False) if needs_target(cfg) else None
        params = [p for p in self.learner.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=cfg.train.lr, betas=(0.9, 0.95))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.train))
        self.params = params
        self.global_step = 0

    def train_step(self, batch: Transition, seed: int) -> dict[str, float]:
        """One optimizer step on `batch`; `seed` seeds the action samples, as the engine's `sample_seeds`."""
        generator = torch.Generator().manual_seed(seed)
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.cfg.train.precision == "bf16"
                    else contextlib.nullcontext())
        with autocast:
            loss, metrics = self.learner(batch, self.target, generator)
        loss.backward()
        out = {k: float(v) for k, v in metrics.items()}
        if self.cfg.train.grad_clip > 0:
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        if self.target is not None:
            update_target(self.learner.net.parameters(), self.target.parameters(), self.global_step,
                          self.cfg.objective)
        return out


def preset_model(spec: str) -> ModelConfig:
    """A preset's model, `NAME` or `NAME@FIELD=VALUE,...` with model fields changed (`tiny@num_latents=8`)."""
    name, _, changes = spec.partition("@")
    fields = [f"model.{change}" for change in changes.split(",") if change]
    return Config.from_dict({"preset": name, **assignments(fields)}).model


def bench_config(preset: str, batch: int, zero_stage: int, precision: str, method: str = "pac") -> Config:
    """One micro-batch of `batch` samples per optimizer step, the objective of `method` (METHODS)."""
    train = TrainConfig(global_batch_size=batch, micro_batch_size=batch, zero_stage=zero_stage,
                        precision=precision, output="unused")  # type: ignore[arg-type]
    return Config(preset=preset.partition("@")[0], model=preset_model(preset),
                  objective=ObjectiveConfig(**METHODS[method]), train=train, tracking=TrackingConfig(enabled=False))


def task_batch(cfg: Config, batch: int, seed: int) -> Transition:
    """A batch shaped like the benchmark tasks' data: their state and action sizes and instructions, in turn."""
    from pac.envs.registry import get_task

    rng = np.random.default_rng(seed)
    rows = [TASKS[i % len(TASKS)] for i in range(batch)]
    texts = [get_task(task).instruction for task, _, _ in rows]

    def obs() -> Observation:
        states = [rng.normal(size=p).astype(np.float32) for _, p, _ in rows]
        return Observation.from_numpy(states, texts, cfg.model.max_text_tokens)

    a_max = max(a for _, _, a in TASKS)
    mask = torch.tensor([[j < a for j in range(a_max)] for _, _, a in rows])
    action = torch.from_numpy(rng.uniform(-1, 1, (batch, a_max)).astype(np.float32)) * mask
    reward = torch.from_numpy(rng.uniform(0, 3, batch).astype(np.float32))
    return Transition(obs(), action, mask, reward, torch.full((batch,), 0.99**5), obs())


def flops_per_step(cfg: Config, batch: Transition) -> int:
    """Model FLOPs of one optimizer step: forward + backward of the loss, target forwards included
    (counted by torch on a throwaway fp32 replica; the count does not depend on dtype or weights)."""
    learner = PACLearner(cfg.model, cfg.objective)
    target = copy.deepcopy(learner.net).requires_grad_(False) if needs_target(cfg) else None

    def fwd_bwd() -> None:
        loss, _ = learner(batch, target, torch.Generator().manual_seed(0))
        loss.backward()

    return count_flops(fwd_bwd)


class MlpActorCritic:
    """The floor: a plain-torch offline actor-critic of 2x256 MLPs, shaped like IQL (Kostrikov et al., 2022).

    Twin critics Q(s, a) with Polyak targets, a state-value net V(s) fit by expectile regression to min Q,
    and a tanh-Gaussian actor fit by advantage-weighted regression: three optimizers, one step each per
    batch. Input: the padded state and its mask, plus a one-hot of the instruction (the MLP cannot read text).
    """

    def __init__(self, cfg: Config, batch: Transition, hidden: int = 256) -> None:
        from torch import nn

        torch.manual_seed(cfg.seed)
        self.proprio, self.actions = batch.obs.proprio.shape[1], batch.action.shape[1]
        self.instructions = {tuple(r): i for i, r in enumerate(torch.unique(batch.obs.text, dim=0).tolist())}
        state = 2 * self.proprio + len(self.instructions)

        def mlp(inputs: int, outputs: int) -> nn.Module:
            return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, outputs))

        self.q = nn.ModuleList(mlp(state + self.actions, 1) for _ in range(2))
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = mlp(state, 1)
        self.actor = mlp(state, 2 * self.actions)
        self.opts = [torch.optim.Adam(m.parameters(), lr=3e-4) for m in (self.q, self.v, self.actor)]

    def _state(self, obs: Observation) -> torch.Tensor:
        task = torch.tensor([self.instructions[tuple(r)] for r in obs.text.tolist()])
        onehot = torch.nn.functional.one_hot(task, len(self.instructions)).float()
        return torch.cat([obs.proprio * obs.proprio_mask, obs.proprio_mask.float(), onehot], -1)

    def train_step(self, batch: Transition, seed: int) -> dict[str, float]:
        torch.manual_seed(seed)
        s, s2, a = self._state(batch.obs), self._state(batch.next_obs), batch.action
        with torch.no_grad():
            q_t = torch.min(*(q(torch.cat([s, a], -1)) for q in self.q_target)).squeeze(-1)
            target = batch.reward + batch.discount * self.v(s2).squeeze(-1)
        v = self.v(s).squeeze(-1)
        diff = q_t - v
        v_loss = (torch.abs(0.7 - (diff < 0).float()) * diff**2).mean()  # expectile 0.7
        q_loss = sum(((q(torch.cat([s, a], -1)).squeeze(-1) - target) ** 2).mean() for q in self.q)
        mean, log_std = self.actor(s).chunk(2, -1)
        dist = torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp())
        pre_tanh = torch.atanh(a.clamp(-0.999, 0.999))
        logp = (dist.log_prob(pre_tanh) * batch.action_mask).sum(-1)
        weights = torch.exp(3.0 * (q_t - v.detach())).clamp(max=100.0)
        actor_loss = -(weights * logp).mean()
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        (v_loss + q_loss + actor_loss).backward()  # disjoint parameters: one backward serves all three
        for opt in self.opts:
            opt.step()
        with torch.no_grad():
            for p, p_t in zip(self.q.parameters(), self.q_target.parameters(), strict=True):
                p_t.lerp_(p, 0.005)
        return {"loss": float((v_loss + q_loss + actor_loss).detach())}


def build_step(engine: str, cfg: Config, world: World, batch: Transition) -> StepFn:
    """The step function of one variant: the torch loop, `DeepSpeedEngine` with one micro-batch, or the MLP."""
    if engine == "torch":
        return TorchBaseline(cfg).train_step
    if engine == "mlp-ac":
        return MlpActorCritic(cfg, batch).train_step
    ds = DeepSpeedEngine(cfg, world)

    def step(batch: Transition, seed: int) -> dict[str, float]:
        return ds.train_step([batch], [seed])

    return step


def measure_preset(preset: str, variants: list[tuple[str, str, str]], batch: int, batches: list[Transition],
                   warmup: int, world: World) -> list[dict[str, Any]]:
    """Step times of every (method, engine, precision) variant of one preset, measured round-robin.

    All variants are built first; then each round times one step of every variant (on the same batch,
    in an order rotated every round), so load from other processes on a shared host slows all variants
    alike instead of whichever happened to run during a busy minute.
    """
    rows, steps = [], []
    for method, engine, precision in variants:
        stage = int(engine.split("-")[1]) if engine.startswith("ZeRO") else 0
        t = time.perf_counter()
        cfg = bench_config(preset, batch, stage, precision, "pac" if method == "mlp-ac" else method)
        steps.append(build_step(engine, cfg, world, batches[0]))
        rows.append({"preset": preset, "method": method, "engine": engine, "precision": precision,
                     "batch": batch, "build_s": time.perf_counter() - t, "step_s": [], "losses": []})
    for i, b in enumerate(batches):
        for k in range(len(steps)):
            j = (i + k) % len(steps)
            t = time.perf_counter()
            metrics = steps[j](b, 1_000_003 + i)
            dt = time.perf_counter() - t
            if i >= warmup:
                rows[j]["step_s"].append(dt)
            rows[j]["losses"].append(metrics["loss"])
    del steps  # release every model and optimizer before the next preset
    gc.collect()
    return rows


def machine() -> dict[str, Any]:
    """CPU model, cores, threads and library versions of this run."""
    import deepspeed

    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    flags = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        flags = set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
            "bf16_flags": sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16"}),
            "torch": torch.__version__, "deepspeed": deepspeed.__version__, "python": platform.python_version()}


def peaks(size: int, seconds: float) -> dict[str, float]:
    return {name: peak_matmul_flops(dtype, size=size, seconds=seconds) for name, dtype in DTYPES.items()}


def run(presets: list[str], batch: int, steps: int, warmup: int, stages: list[int], fp32_presets: list[str],
        peak_size: int = 2048, peak_seconds: float = 2.0, methods: tuple[str, ...] = ("pac",),
        batches: str = "tasks", mlp: bool = False) -> dict[str, Any]:
    """Measure every preset x method x engine variant; returns the rows plus machine, peaks and FLOP counts."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and os.getloadavg()[0] > (os.cpu_count() or 1):
        log.warning("the host is busy (load %.1f) and OpenMP threads spin-wait: small models' steps can slow down "
                    "tenfold while a thread waits for a descheduled peer; run with OMP_WAIT_POLICY=PASSIVE",
                    os.getloadavg()[0])
    world = init_world()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    t0, load_before = time.perf_counter(), os.getloadavg()
    peak_before = peaks(peak_size, peak_seconds)
    info: dict[str, dict[str, float]] = {}
    rows = []
    for preset in presets:
        cfg = bench_config(preset, batch, 0, "fp32")
        if batches == "tasks":
            data = [task_batch(cfg, batch, seed=i) for i in range(warmup + steps)]
        else:
            source = SyntheticSource(cfg.model, batch, seed=0)
            data = [source.batch(i) for i in range(warmup + steps)]
        for method in methods:
            with torch.random.fork_rng():
                flops = flops_per_step(bench_config(preset, batch, 0, "fp32", method), data[0])
            info[f"{preset}/{method}"] = {"parameters": count_parameters(cfg.model), "flops_per_step": flops,
                                          "tokens_per_sample": tokens_per_sample(data[0], cfg.model)}
        variants = [(method, engine, precision) for method in methods
                    for precision in ["bf16"] + (["fp32"] if preset in fp32_presets else [])
                    for engine in ["torch", *(f"ZeRO-{s}" for s in stages)]]
        if mlp:
            variants.append(("mlp-ac", "mlp-ac", "fp32"))
        rows += measure_preset(preset, variants, batch, data, warmup, world)
        for r in rows[-len(variants):]:
            print(f"{preset} {r['method']} {r['engine']} {r['precision']}: median "
                  f"{statistics.median(r['step_s']) * 1e3:.1f} ms (build {r['build_s']:.1f} s)", flush=True)
    peak_after = peaks(peak_size, peak_seconds)
    return {"machine": machine(), "peak_flops": {k: max(peak_before[k], peak_after[k]) for k in DTYPES},
            "peak_flops_before": peak_before, "peak_flops_after": peak_after, "presets": info, "rows": rows,
            "steps": steps, "warmup": warmup, "wall_s": time.perf_counter() - t0, "load_before": load_before,
            "load_after": os.getloadavg(), "batches": batches}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians and the derived columns of every row (rows of several rounds are merged first)."""
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in result["rows"]:
        key = (r.get("code", "HEAD"), r["preset"], r["method"], r["engine"], r["precision"])
        if key in merged:
            merged[key]["step_s"] += r["step_s"]
        else:
            merged[key] = {**r, "step_s": list(r["step_s"])}
    rows, peak = list(merged.values()), result["peak_flops"]
    for r in rows:
        r["median_s"] = statistics.median(r["step_s"])
        r["samples_per_s"] = r["batch"] / r["median_s"]
        p = result["presets"].get(f"{r.get('code', 'HEAD')}:{r['preset']}/{r['method']}") \
            or result["presets"].get(f"{r['preset']}/{r['method']}")
        r["tokens_per_s"] = r["batch"] * p["tokens_per_sample"] / r["median_s"] if p else float("nan")
        r["achieved_flops"] = p["flops_per_step"] / r["median_s"] if p else float("nan")
        r["mfu"] = r["achieved_flops"] / peak[r["precision"]]
    by = {(r.get("code", "HEAD"), r["preset"], r["method"], r["engine"], r["precision"]): r for r in rows}
    for r in rows:
        code, preset, method, engine, precision = (r.get("code", "HEAD"), r["preset"], r["method"], r["engine"],
                                                   r["precision"])
        torch_row = by.get((code, preset, method, "torch", precision))
        r["vs_torch"] = r["median_s"] / torch_row["median_s"] if torch_row else float("nan")
        old = by.get((result.get("baseline_rev", ""), preset, method, engine, precision))
        r["speedup"] = old["median_s"] / r["median_s"] if old and code == "HEAD" else float("nan")
        bc = by.get((code, preset, "bc", engine, precision))
        r["vs_bc"] = r["median_s"] / bc["median_s"] if bc and method == "pac" else float("nan")
        mlp = by.get(("HEAD", preset, "mlp-ac", "mlp-ac", "fp32"))
        r["vs_mlp"] = r["samples_per_s"] / mlp["samples_per_s"] if mlp else float("nan")
    return {**result, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown: a header with the machine and matmul peaks, then one row per measurement."""
    m, pk = result["machine"], result["peak_flops"]
    baseline = result.get("baseline_rev")
    lines = [
        f"CPU: {m['cpu']}, {m['cpus']} cores, {m['torch_threads']} torch threads, bf16 ISA: "
        f"{', '.join(m['bf16_flags']) or 'none'}; OMP_WAIT_POLICY={m['omp_wait_policy']}; torch {m['torch']}, "
        f"deepspeed {m['deepspeed']}",
        f"Matmul peak (best of before/after): bf16 {pk['bf16'] / 1e9:.1f} GFLOP/s, "
        f"fp32 {pk['fp32'] / 1e9:.1f} GFLOP/s; "
        f"median of {result['steps']} steps after {result['warmup']} warm-up steps"
        + (f" x {result['rounds']} rounds alternating with revision {baseline}" if baseline else "")
        + f"; {result.get('batches', 'synthetic')} batches; total {result['wall_s']:.0f} s; "
        f"1-min load average {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after",
        "",
        "| code | preset | method | engine | dtype | batch | step (ms) | samples/s | GFLOP/step | MFU | vs torch "
        "| speed-up | PAC / BC | vs MLP AC |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(x: float, spec: str) -> str:
        return "" if x != x else format(x, spec)  # NaN: not applicable

    for r in sorted(result["rows"], key=lambda r: (r["preset"], r["method"] == "mlp-ac", r["method"],
                                                     r["engine"], r["precision"], r.get("code", "HEAD") != "HEAD")):
        p = result["presets"].get(f"{r.get('code', 'HEAD')}:{r['preset']}/{r['method']}") \
            or result["presets"].get(f"{r['preset']}/{r['method']}")
        lines.append(
            f"| {r.get('code', 'HEAD')} | {r['preset']} | {r['method']} | {r['engine']} | {r['precision']} | "
            f"{r['batch']} | {r['median_s'] * 1e3:.1f} | {r['samples_per_s']:,.0f} | "
            f"{fmt(p['flops_per_step'] / 1e9 if p else float('nan'), '.2f')} | {fmt(r['mfu'], '.1%')} | "
            f"{fmt(r['vs_torch'], '.2f')} | {fmt(r['speedup'], '.2f')} | {fmt(r['vs_bc'], '.2f')} | "
            f"{fmt(r['vs_mlp'], '.3f')} |")
    return "\n".join(lines)


def baseline_tree(rev: str, into: Path) -> Path:
    """The `model/` directory of git revision `rev`, exported into `into` (the import root of its `pac`)."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "model"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "model"


def run_rounds(args: argparse.Namespace, forwarded: list[str]) -> dict[str, Any]:
    """Alternate subprocesses of this script on HEAD's `pac` and on `--baseline-rev`'s, `--rounds` times."""
    t0, load_before = time.perf_counter(), os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="pac-baseline-") as tmp:
        old = baseline_tree(args.baseline_rev, Path(tmp))
        for i in range(args.rounds):
            codes = [("HEAD", None), (args.baseline_rev, old)]
            for code, path in codes if i % 2 == 0 else codes[::-1]:
                out = Path(tmp) / f"{code}-{i}.json"
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path) if path else "",
                                                                               os.environ.get("PYTHONPATH")]))}
                cmd = [sys.executable, __file__, *forwarded, "--worker-json", str(out)]
                if path is not None:
                    cmd = [c for c in cmd if c != "--mlp"]  # the MLP does not depend on the revision
                print(f"round {i + 1}/{args.rounds}: {code}", flush=True)
                subprocess.run(cmd, env=env, check=True)
                result = json.loads(out.read_text())
                for r in result["rows"]:
                    r["code"] = code
                result["presets"] = {f"{code}:{k}": v for k, v in result["presets"].items()}
                results.append(result)
    first = results[0]
    return {**first, "rows": [r for res in results for r in res["rows"]],
            "presets": {k: v for res in results for k, v in res["presets"].items()},
            "peak_flops": {k: max(res["peak_flops"][k] for res in results) for k in DTYPES},
            "baseline_rev": args.baseline_rev, "rounds": args.rounds, "wall_s": time.perf_counter() - t0,
            "load_before": load_before, "load_after": os.getloadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small-cpu", "XS"],
                        help="preset names, each optionally with model fields changed: tiny@num_latents=8,num_blocks=1")
    parser.add_argument("--batch", type=int, default=32, help="samples per optimizer step (one micro-batch)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    parser.add_argument("--stages", nargs="+", type=int, default=[0, 2, 3], choices=[0, 1, 2, 3])
    parser.add_argument("--fp32-presets", nargs="*", default=["small-cpu"],
                        help="presets also measured in fp32 (against the fp32 matmul peak)")
    parser.add_argument("--methods", nargs="+", default=["pac"], choices=list(METHODS),
                        help="objectives measured: the full PAC step and/or BC")
    parser.add_argument("--mlp", action="store_true", help="also time the plain-torch 2x256 MLP actor-critic")
    parser.add_argument("--batches", choices=["tasks", "synthetic"], default="tasks",
                        help="batches shaped like the benchmark tasks' data, or the unit tests' synthetic ones")
    parser.add_argument("--baseline-rev", help="also measure the pac package of this git revision, alternating")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --baseline-rev")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul of the peak")
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="time spent on each peak measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--json", help="also write the full result (every step time) to this file")
    parser.add_argument("--worker-json", help=argparse.SUPPRESS)  # one round of --baseline-rev, raw rows
    args = parser.parse_args(argv)
    # DeepSpeed 0.19.8 calls torch.distributed collectives that torch 2.13 deprecates, once per bucket.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.baseline_rev and not args.worker_json:
        argv = sys.argv[1:] if argv is None else argv
        forwarded, skip = [], False
        for a in argv:  # everything but the comparison's own options and the output file
            if skip:
                skip = False
            elif a in ("--baseline-rev", "--rounds", "--json"):
                skip = True
            elif not a.startswith(("--baseline-rev=", "--rounds=", "--json=")):
                forwarded.append(a)
        result = run_rounds(args, forwarded)
    else:
        result = run(args.presets, args.batch, args.steps, args.warmup, args.stages, args.fp32_presets,
                     args.peak_size, args.peak_seconds, tuple(args.methods), args.batches, args.mlp)
        if args.worker_json:
            Path(args.worker_json).write_text(json.dumps(result))
            return
    result = summarise(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print()
    print(markdown(result))


if __name__ == "__main__":
    main()
