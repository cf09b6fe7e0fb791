"""One ZeRO-3 training step of the ~1B preset (XL) on a CPU host: construction time, step time, peak memory.

Builds `DeepSpeedEngine` exactly as `pac train` does (parameters partitioned at construction by
`deepspeed.zero.Init`, bf16 weights, fp32 master weights and Adam moments, and for PAC and BC+Q an fp32
target network), runs `--steps` optimizer steps on a synthetic batch, and reports wall times, the
process's peak RSS (`getrusage`, plus a sampling thread that attributes peaks to phases) and evidence
that the parameters were partitioned when the model was built rather than materialised first.

    .venv/bin/python benchmarks/step_1b.py                         # full PAC, micro-batch 2
    .venv/bin/python benchmarks/step_1b.py --method BC --micro-batch 1 --json step_1b.json

World size 1: `pac.training.engine.init_world` sets up the single-process group.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import resource
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any
from unittest import mock

import psutil
import torch
from pac.config import Config, ObjectiveConfig, TrackingConfig, TrainConfig
from pac.data.synthetic import synthetic_transitions
from pac.networks import count_parameters
from pac.objective import PACLearner
from pac.presets import model_config
from pac.training import engine as engine_module
from pac.training.engine import DeepSpeedEngine, deepspeed_config, estimate_memory, init_world

GIB = 1024**3
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter

# objective overrides per method (PAC.md, "Objective"): BC+Q and PAC need the target network, BC does not.
METHODS: dict[str, dict[str, float]] = {"PAC": {}, "BC+Q": {"alpha": 1.0}, "BC": {"alpha": 1.0, "beta": 0.0}}


class RssSampler:
    """Samples this process's resident set size on a thread; `phase()` attributes the peak to a named phase.

    `getrusage` only gives the peak of the whole process; the sampler (every `interval_s`) also tells
    which phase (construction or step) reached it.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._peak = self._proc.memory_info().rss
        self.peak = self._peak
        self.phases: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            rss = self._proc.memory_info().rss
            with self._lock:
                self._peak = max(self._peak, rss)
                self.peak = max(self.peak, rss)

    def rss(self) -> int:
        return int(self._proc.memory_info().rss)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the sampled peak RSS reached while the `with` body runs under `name`."""
        with self._lock:
            self._peak = self.rss()
        try:
            yield
        finally:
            rss = self.rss()
            with self._lock:
                self.phases[name] = max(self._peak, rss)
                self.peak = max(self.peak, rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def set_mmap_threshold(threshold: int) -> bool:
    """Serve allocations of `threshold` bytes or more with mmap, so freeing them returns the memory (glibc).

    glibc raises its mmap threshold dynamically (up to 32 MiB) after large frees, and then carves tensors
    below it from the heap: partitions freed while live tensors sit above them stay resident. ZeRO-3 frees
    the bf16 partitions when it copies them into one flat buffer (2 bytes/parameter at construction).
    Returns False where this is not glibc (nothing changed).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


@contextlib.contextmanager
def deepspeed_zero_defaults() -> Iterator[None]:
    """Ablation: the engine's ZeRO-3 config without its `sub_group_size`/`reduce_bucket_size` (DeepSpeed defaults)."""

    def generated(*args: Any, **kwargs: Any) -> dict[str, Any]:
        ds = deepspeed_config(*args, **kwargs)
        for key in ("sub_group_size", "reduce_bucket_size"):
            ds["zero_optimization"].pop(key, None)
        return ds

    with mock.patch.object(engine_module, "deepspeed_config", generated):
        yield


def step_config(preset: str = "XL", method: str = "PAC", micro_batch: int = 2, steps: int = 1,
                activation_checkpointing: bool = False, offload_optimizer: bool = False,
                seed: int = 0) -> Config:
    """The training config of this benchmark: ZeRO-3, bf16, one micro-batch per optimizer step."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    train = TrainConfig(steps=steps, global_batch_size=micro_batch, micro_batch_size=micro_batch, zero_stage=3,
                        precision="bf16", activation_checkpointing=activation_checkpointing,
                        offload_optimizer=offload_optimizer, output="unused")
    return Config(preset=preset, seed=seed, model=model_config(preset), objective=ObjectiveConfig(**METHODS[method]),
                  train=train, tracking=TrackingConfig(enabled=False))


def _partition_state(params: list[torch.nn.Parameter]) -> dict[str, Any]:
    """How the parameters are held: ZeRO-3 partitions (`ds_tensor`) or full tensors (`param.data`)."""
    partitioned = [p for p in params if hasattr(p, "ds_tensor")]
    return {"tensors": len(params), "partitioned_tensors": len(partitioned),
            "elements": sum(int(getattr(p, "ds_numel", p.numel())) for p in params),
            "local_partition_elements": sum(p.ds_tensor.numel() for p in partitioned),
            "materialised_elements": sum(p.data.numel() for p in params),
            "partition_dtypes": sorted({str(p.ds_tensor.dtype) for p in partitioned})}


def run_step(preset: str = "XL", method: str = "PAC", micro_batch: int = 2, steps: int = 1,
             activation_checkpointing: bool = False, offload_optimizer: bool = False, seed: int = 0,
             mmap_threshold: int = 1 << 20, zero_defaults: bool = False) -> dict[str, Any]:
    """Build the ZeRO-3 engine for `preset`, run `steps` optimizer steps, and report times and memory.

    `mmap_threshold` (bytes; 0 keeps glibc's default) is set before anything large is allocated, see
    `set_mmap_threshold`. `zero_defaults` is the ablation of the engine's ZeRO-3 memory settings.
    Returns a JSON-serialisable report; `losses` holds each step's loss (the caller checks it is finite).
    Everything built here is released before returning.
    """
    cfg = step_config(preset, method, micro_batch, steps, activation_checkpointing, offload_optimizer, seed)
    mmap_set = set_mmap_threshold(mmap_threshold) if mmap_threshold > 0 else False
    world = init_world()
    params = count_parameters(cfg.model)
    vm = psutil.virtual_memory()
    report: dict[str, Any] = {
        "preset": preset, "method": cfg.objective.method, "parameters": params, "micro_batch": micro_batch,
        "zero_stage": 3, "precision": "bf16", "activation_checkpointing": activation_checkpointing,
        "offload_optimizer": offload_optimizer, "mmap_threshold": mmap_threshold if mmap_set else 0,
        "zero_defaults": zero_defaults, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "host_total_gib": vm.total / GIB, "host_available_gib_at_start": vm.available / GIB,
        "load_average_at_start": os.getloadavg(),
        "estimate_gib": estimate_memory(cfg, params, world.world_size) / GIB,
    }
    at_construction: dict[str, Any] = {}

    class ProbedLearner(PACLearner):
        """The engine's learner, observed the moment its constructor returns (inside zero.Init, before
        `deepspeed.initialize` sees it): a materialised model would hold full tensors here."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            at_construction.update(_partition_state(list(self.parameters())), rss_gib=sampler.rss() / GIB)

    batches = [synthetic_transitions(cfg.model, micro_batch, seed=seed + i) for i in range(steps)]
    with RssSampler() as sampler:
        rss0 = sampler.rss()
        t0 = time.perf_counter()
        ablation = deepspeed_zero_defaults() if zero_defaults else contextlib.nullcontext()
        with sampler.phase("construction"), ablation, mock.patch.object(engine_module, "PACLearner", ProbedLearner):
            engine = DeepSpeedEngine(cfg, world)
            zero = {k: v for k, v in engine.ds_config["zero_optimization"].items() if k != "stage"}
        construction_s = time.perf_counter() - t0
        rss_built = sampler.rss()
        online, target = _partition_state(list(engine.net.parameters())), None
        if engine.target is not None:
            target = _partition_state(list(engine.target.parameters()))
        step_s, losses, metrics = [], [], {}
        with sampler.phase("step"):
            for i, batch in enumerate(batches):
                t = time.perf_counter()
                metrics = engine.train_step([batch], [seed * 1_000_003 + i])
                step_s.append(time.perf_counter() - t)
                losses.append(metrics["loss"])
        del engine
        gc.collect()
    report.update(
        zero_config=zero, construction_s=construction_s, step_s=step_s, losses=losses,
        metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
        rss_start_gib=rss0 / GIB, rss_after_construction_gib=rss_built / GIB,
        peak_rss_construction_gib=sampler.phases["construction"] / GIB,
        peak_rss_step_gib=sampler.phases["step"] / GIB, peak_rss_sampled_gib=sampler.peak / GIB,
        peak_rss_getrusage_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        online_at_construction=at_construction, online_after_init=online, target_after_init=target)
    return report


def constructed_partitioned(report: dict[str, Any]) -> bool:
    """Every online parameter was a ZeRO-3 partition, with no full tensor, when its constructor returned."""
    c = report["online_at_construction"]
    return bool(c) and c["partitioned_tensors"] == c["tensors"] and c["materialised_elements"] == 0


def markdown(r: dict[str, Any]) -> str:
    """The report as the Markdown table docs/benchmarks.md shows."""
    c = r["online_at_construction"]
    rows = [
        ("preset / parameters", f"{r['preset']} / {r['parameters'] / 1e9:.3f} B"),
        ("objective", f"{r['method']}" + (" (fp32 target network)" if r["target_after_init"] else " (no target)")),
        ("engine", f"ZeRO-3, bf16 weights, fp32 master + Adam, micro-batch {r['micro_batch']}, "
                   f"activation checkpointing {'on' if r['activation_checkpointing'] else 'off'}, "
                   f"optimizer offload {'on' if r['offload_optimizer'] else 'off'}"),
        ("ZeRO-3 memory settings", ", ".join(f"{k}={v:.0e}" for k, v in r["zero_config"].items()
                                             if k in ("sub_group_size", "reduce_bucket_size")) or "DeepSpeed defaults"),
        ("glibc mmap threshold", f"{r['mmap_threshold']} bytes" if r["mmap_threshold"] else "glibc default"),
        ("construction (zero.Init + deepspeed.initialize)", f"{r['construction_s']:.1f} s"),
        ("step time", ", ".join(f"{s:.1f} s" for s in r["step_s"])),
        ("loss", ", ".join(f"{v:.4f}" for v in r["losses"])),
        ("constructed partitioned", f"{'yes' if constructed_partitioned(r) else 'NO'}: {c['partitioned_tensors']}/"
                                    f"{c['tensors']} tensors, {c['materialised_elements']} materialised elements, "
                                    f"partitions {'/'.join(c['partition_dtypes'])}, RSS {c['rss_gib']:.2f} GiB "
                                    f"after the learner's constructor"),
        ("RSS after construction", f"{r['rss_after_construction_gib']:.2f} GiB"),
        ("peak RSS, sampled: construction / step", f"{r['peak_rss_construction_gib']:.2f} / "
                                                   f"{r['peak_rss_step_gib']:.2f} GiB"),
        ("peak RSS, getrusage", f"{r['peak_rss_getrusage_gib']:.2f} GiB"),
        ("engine estimate (weights, grads, optimizer, target)", f"{r['estimate_gib']:.2f} GiB"),
        ("host memory total / available at start", f"{r['host_total_gib']:.1f} / "
                                                   f"{r['host_available_gib_at_start']:.1f} GiB"),
        ("1-min load average at start (2 cores, shared)", f"{r['load_average_at_start'][0]:.2f}"),
    ]
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="XL")
    parser.add_argument("--method", default="PAC", choices=list(METHODS))
    parser.add_argument("--micro-batch", type=int, default=2, help="samples in the (only) micro-batch")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps (each timed)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--offload-optimizer", action="store_true",
                        help="ZeRO-Offload: DeepSpeedCPUAdam (JIT-compiles cpu_adam on first use)")
    parser.add_argument("--mmap-threshold", type=int, default=1 << 20,
                        help="glibc mmap threshold in bytes (0: glibc's dynamic default)")
    parser.add_argument("--zero-defaults", action="store_true",
                        help="ablation: DeepSpeed's default sub_group_size/reduce_bucket_size instead of the engine's")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    # DeepSpeed 0.19.8 calls torch.distributed collectives that torch 2.13 deprecates, once per bucket.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)

    report = run_step(args.preset, args.method, args.micro_batch, args.steps, args.activation_checkpointing,
                      args.offload_optimizer, mmap_threshold=args.mmap_threshold, zero_defaults=args.zero_defaults)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(markdown(report))
    if not all(math.isfinite(v) for v in report["losses"]):
        sys.exit("non-finite loss")


if __name__ == "__main__":
    main()
