"""Training throughput and MFU on this host: a plain-torch PAC loop vs `DeepSpeedEngine` at ZeRO-0/2/3.

In one process (world size 1, set up by `pac.training.engine.init_world`) and for each preset this measures:
the matmul peak of this machine in bf16 and fp32 (`peak_matmul_flops`, before and after the runs; the
higher is used), the model FLOPs of one optimizer step (`count_flops` on forward + backward of the PAC
loss, target-network forwards included), and the median step time of

* `torch`: the baseline written below: `PACLearner`, torch AdamW, bf16 autocast, gradient clipping,
  an fp32 target network with Polyak updates: the same loss, batch and optimizer as the engine;
* `ZeRO-s`: `DeepSpeedEngine.train_step` at each requested stage, bf16 (and fp32 for `--fp32-presets`).

Warm-up steps are excluded; each timed step takes a fresh synthetic batch (built before timing, no I/O);
the variants of a preset are timed round-robin, one step each per round, so a shared host's load
affects them alike. Prints a Markdown table: samples/s, observation tokens/s, achieved FLOP/s, MFU (achieved / measured
matmul peak of the same dtype) and each engine's step time relative to the torch loop of the same dtype.

On a shared host set OMP_WAIT_POLICY=PASSIVE (read when torch loads OpenMP, so before Python starts):
spinning OpenMP threads whose peer is descheduled slow small models' steps down by an order of magnitude.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train_throughput.py
    .venv/bin/python benchmarks/train_throughput.py --presets tiny small-cpu --batch 16 --steps 20 --json out.json
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
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from pac.config import Config, ObjectiveConfig, TrackingConfig, TrainConfig
from pac.data.synthetic import SyntheticSource
from pac.inputs import Transition
from pac.networks import count_parameters
from pac.objective import PACLearner, update_target
from pac.presets import model_config
from pac.training.engine import DeepSpeedEngine, World, init_world, lr_lambda, needs_target
from pac.training.flops import count_flops, peak_matmul_flops, tokens_per_sample

log = logging.getLogger("train_throughput")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
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


def bench_config(preset: str, batch: int, zero_stage: int, precision: str) -> Config:
    """Full PAC objective, one micro-batch of `batch` samples per optimizer step."""
    train = TrainConfig(global_batch_size=batch, micro_batch_size=batch, zero_stage=zero_stage,
                        precision=precision, output="unused")  # type: ignore[arg-type]
    return Config(preset=preset, model=model_config(preset), objective=ObjectiveConfig(), train=train,
                  tracking=TrackingConfig(enabled=False))


def flops_per_step(cfg: Config, batch: Transition) -> int:
    """Model FLOPs of one optimizer step: forward + backward of the loss, target forwards included
    (counted by torch on a throwaway fp32 replica; the count does not depend on dtype or weights)."""
    learner = PACLearner(cfg.model, cfg.objective)
    target = copy.deepcopy(learner.net).requires_grad_(False)

    def fwd_bwd() -> None:
        loss, _ = learner(batch, target, torch.Generator().manual_seed(0))
        loss.backward()

    return count_flops(fwd_bwd)


def build_step(engine: str, cfg: Config, world: World) -> StepFn:
    """The step function of one engine variant: the torch baseline or `DeepSpeedEngine` with one micro-batch."""
    if engine == "torch":
        return TorchBaseline(cfg).train_step
    ds = DeepSpeedEngine(cfg, world)

    def step(batch: Transition, seed: int) -> dict[str, float]:
        return ds.train_step([batch], [seed])

    return step


def measure_preset(preset: str, variants: list[tuple[str, str]], batch: int, batches: list[Transition],
                   warmup: int, world: World) -> list[dict[str, Any]]:
    """Step times of every (engine, precision) variant of one preset, measured round-robin.

    All variants are built first; then each round times one step of every variant (on the same batch,
    in an order rotated every round), so load from other processes on a shared host slows all variants
    alike instead of whichever happened to run during a busy minute.
    """
    rows, steps = [], []
    for engine, precision in variants:
        stage = 0 if engine == "torch" else int(engine.split("-")[1])
        t = time.perf_counter()
        steps.append(build_step(engine, bench_config(preset, batch, stage, precision), world))
        rows.append({"preset": preset, "engine": engine, "precision": precision, "batch": batch,
                     "build_s": time.perf_counter() - t, "step_s": [], "losses": []})
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
    for r in rows:
        r["median_s"] = statistics.median(r["step_s"])
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
        peak_size: int = 2048, peak_seconds: float = 2.0) -> dict[str, Any]:
    """Measure every preset x engine variant; returns the rows plus machine, peaks and FLOP counts."""
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
        source = SyntheticSource(model_config(preset), batch, seed=0)
        batches = [source.batch(i) for i in range(warmup + steps)]
        cfg = bench_config(preset, batch, 0, "bf16")
        with torch.random.fork_rng():
            flops = flops_per_step(cfg, batches[0])
        info[preset] = {"parameters": count_parameters(cfg.model), "flops_per_step": flops,
                        "tokens_per_sample": tokens_per_sample(batches[0], cfg.model)}
        variants = [(engine, precision) for precision in ["bf16"] + (["fp32"] if preset in fp32_presets else [])
                    for engine in ["torch", *(f"ZeRO-{s}" for s in stages)]]
        rows += measure_preset(preset, variants, batch, batches, warmup, world)
        for r in rows[-len(variants):]:
            print(f"{preset} {r['engine']} {r['precision']}: median {r['median_s'] * 1e3:.1f} ms "
                  f"(build {r['build_s']:.1f} s)", flush=True)
    peak_after = peaks(peak_size, peak_seconds)
    peak = {k: max(peak_before[k], peak_after[k]) for k in DTYPES}
    base = {(r["preset"], r["precision"]): r["median_s"] for r in rows if r["engine"] == "torch"}
    for r in rows:
        p = info[r["preset"]]
        r["samples_per_s"] = batch / r["median_s"]
        r["tokens_per_s"] = batch * p["tokens_per_sample"] / r["median_s"]
        r["achieved_flops"] = p["flops_per_step"] / r["median_s"]
        r["mfu"] = r["achieved_flops"] / peak[r["precision"]]
        r["vs_torch"] = r["median_s"] / base[(r["preset"], r["precision"])]
    return {"machine": machine(), "peak_flops": peak, "peak_flops_before": peak_before,
            "peak_flops_after": peak_after, "presets": info, "rows": rows, "steps": steps, "warmup": warmup,
            "wall_s": time.perf_counter() - t0, "load_before": load_before, "load_after": os.getloadavg()}


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown: a header with the machine and matmul peaks, then one row per measurement."""
    m, pk = result["machine"], result["peak_flops"]
    lines = [
        f"CPU: {m['cpu']}, {m['cpus']} cores, {m['torch_threads']} torch threads, bf16 ISA: "
        f"{', '.join(m['bf16_flags']) or 'none'}; OMP_WAIT_POLICY={m['omp_wait_policy']}; torch {m['torch']}, "
        f"deepspeed {m['deepspeed']}",
        f"Matmul peak (best of before/after): bf16 {pk['bf16'] / 1e9:.1f} GFLOP/s, "
        f"fp32 {pk['fp32'] / 1e9:.1f} GFLOP/s; "
        f"median of {result['steps']} steps after {result['warmup']} warm-up steps; total {result['wall_s']:.0f} s; "
        f"1-min load average {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after",
        "",
        "| preset | params | engine | dtype | batch | step (ms) | samples/s | tokens/s | GFLOP/step | GFLOP/s | MFU "
        "| vs torch |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        p = result["presets"][r["preset"]]
        lines.append(
            f"| {r['preset']} | {p['parameters'] / 1e6:.2f}M | {r['engine']} | {r['precision']} | {r['batch']} | "
            f"{r['median_s'] * 1e3:.1f} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{p['flops_per_step'] / 1e9:.2f} | {r['achieved_flops'] / 1e9:.2f} | {r['mfu']:.1%} | "
            f"{r['vs_torch']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small-cpu", "XS"])
    parser.add_argument("--batch", type=int, default=32, help="samples per optimizer step (one micro-batch)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    parser.add_argument("--stages", nargs="+", type=int, default=[0, 2, 3], choices=[0, 1, 2, 3])
    parser.add_argument("--fp32-presets", nargs="*", default=["small-cpu"],
                        help="presets also measured in fp32 (against the fp32 matmul peak)")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul of the peak")
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="time spent on each peak measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--json", help="also write the full result (every step time) to this file")
    args = parser.parse_args(argv)
    # DeepSpeed 0.19.8 calls torch.distributed collectives that torch 2.13 deprecates, once per bucket.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    result = run(args.presets, args.batch, args.steps, args.warmup, args.stages, args.fp32_presets,
                 args.peak_size, args.peak_seconds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print()
    print(markdown(result))


if __name__ == "__main__":
    main()
