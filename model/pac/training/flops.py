"""Measured FLOPs: the model FLOPs of a training step (counted by torch) and this machine's matmul peak.

MFU = achieved model FLOP/s / measured matmul FLOP/s of the same dtype, both measured in the same
process, so the ratio is meaningful on any machine (AMX bf16 CPUs, GPUs, or neither).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from pac.config import ModelConfig
from pac.inputs import Transition


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker: we only need the total, and the tracker's
    backward hooks fail on modules called under `no_grad` with leaf inputs (the target-network path)."""

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the aten ops `fn` runs (forward and backward, if it calls backward)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


def peak_matmul_flops(dtype: torch.dtype = torch.bfloat16, size: int = 2048, seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul of `dtype` on this device, best of repeated timed runs.

    The matrices grow from 256 towards `size` only while one product takes under a tenth of `seconds`:
    where `dtype` is emulated (bf16 on a CPU without AMX or AVX512-BF16 runs ~100x below fp32) one
    2048-sized product alone would take a minute, and the measurement would cost more than a short run.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def timed(a: torch.Tensor, b: torch.Tensor) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    n = min(256, size)
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm up (AMX/oneDNN kernel selection, cuBLAS initialisation)
        if n >= size or timed(a, b) > seconds / 10:
            break
        n = min(2 * n, size)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        best = max(best, 2 * n**3 / timed(a, b))
    return best


def tokens_per_sample(batch: Transition, model: ModelConfig) -> float:
    """Observation tokens per sample (proprio dimensions + instruction tokens + image patches): the
    quantity training logs as tokens/s."""
    obs = batch.obs
    n = float(obs.proprio_mask.sum() + obs.text_mask.sum())
    if obs.image is not None and obs.image_mask is not None:
        n += float(obs.image_mask.sum()) * (model.image_size // model.patch_size) ** 2
    return n / obs.batch_size
