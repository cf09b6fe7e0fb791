"""The training engine: the ONLY module that imports DeepSpeed.

`DeepSpeedEngine` owns the process group, the generated DeepSpeed config (derived from `TrainConfig`
at run time: no second JSON repeats batch size, learning rate or clipping), sharded model
construction, the target network, activation checkpointing and the engine's checkpoint files.
`TorchEngine` is the same interface on a plain torch loop: the baseline of the overhead benchmark.

Target network theta': with ZeRO 0-2 every rank holds full online weights anyway, so the target is a
plain fp32 copy (Polyak averaging in bf16 would round small updates away). With ZeRO-3 the target is
built partitioned like the online model and driven by a parameter-only DeepSpeed engine (no
optimizer); both are partitioned identically, so the target update runs on local partitions with no
communication.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import logging
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pac.config import Config, ConfigError, TrainConfig
from pac.inputs import Transition
from pac.networks import PerceiverActorCritic, build_model
from pac.objective import PACLearner, update_target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_world() -> World:
    """Join (or, for a single process, create) the process group from torchrun-style env variables."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # a plain `pac train`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   verbose=False)
    return World(torch.distributed.get_rank(), int(os.environ.get("LOCAL_RANK", "0")),
                 torch.distributed.get_world_size())


def per_rank_batch(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """`cfg` with its micro-batch resolved for `world_size` ranks: a pinned one is kept, 0 becomes the global
    batch split evenly over the ranks (no accumulation), so one config runs on 1 process or 64."""
    if cfg.micro_batch_size:
        return cfg
    if cfg.global_batch_size % world_size:
        raise ConfigError(f"train.global_batch_size={cfg.global_batch_size} does not split evenly over {world_size} "
                          f"ranks; choose a multiple of {world_size} or pin train.micro_batch_size")
    return dataclasses.replace(cfg, micro_batch_size=cfg.global_batch_size // world_size)


def accumulation_steps(cfg: TrainConfig, world_size: int) -> int:
    per_step = cfg.micro_batch_size * world_size
    if cfg.global_batch_size % per_step:
        raise ConfigError(f"train.global_batch_size={cfg.global_batch_size} is not divisible by "
                          f"train.micro_batch_size ({cfg.micro_batch_size}) x ranks ({world_size})")
    return cfg.global_batch_size // per_step


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config, generated from `TrainConfig` (the only place these values are set)."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if cfg.zero_stage == 3:
        # Gather parameters just in time: keep little resident so the largest preset fits on small hosts.
        zero.update(stage3_max_live_parameters=int(1e8), stage3_prefetch_bucket_size=int(5e7),
                    stage3_param_persistence_threshold=int(1e4),
                    # The optimizer steps one sub-group at a time, each with an fp32 gradient copy and Adam
                    # temporaries of its size (DeepSpeed's 1e9 default: ~12 GB extra at ~1B parameters); the
                    # gradient bucket is a resident buffer (default 5e8 elements). Measured in docs/benchmarks.md.
                    sub_group_size=int(2e7), reduce_bucket_size=int(5e7))
    return {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps(cfg, world_size),
        "gradient_clipping": cfg.grad_clip,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # the trainer does its own logging
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def native_bf16() -> bool:
    """Whether this machine computes bf16 matmuls natively (else torch emulates them, far slower than fp32)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


# Narrower models train in fp32 under "auto": their matmuls are too small for bf16 to pay for its casts (tiny,
# d_model 64, on an AVX512-BF16 CPU: 9.5 steps/s in bf16 against 16.5 in fp32, docs/learner.md).
BF16_MIN_WIDTH = 512


def resolve_precision(requested: str, checkpoint: str | None = None, d_model: int = BF16_MIN_WIDTH) -> str:
    """The concrete precision of a run: `requested`, or for "auto" the precision of the checkpoint it resumes
    (its optimizer state is stored in it), else bf16 where the hardware has it natively and the model is at
    least `BF16_MIN_WIDTH` wide."""
    if requested != "auto":
        return requested
    if checkpoint is not None:
        return checkpoint
    return "bf16" if native_bf16() and d_model >= BF16_MIN_WIDTH else "fp32"


def needs_target(cfg: Config) -> bool:
    """BC (alpha=1, beta=0) uses no target network: none is built, which also saves its memory."""
    return cfg.objective.alpha < 1.0 or cfg.objective.beta > 0.0


def estimate_memory(cfg: Config, parameters: int, world_size: int) -> int:
    """Bytes per rank for weights, gradients, optimizer and target states (activations excluded)."""
    p, w, stage = parameters, world_size, cfg.train.zero_stage
    weight = 2 if cfg.train.precision == "bf16" else 4
    master = 4 if cfg.train.precision == "bf16" else 0  # fp32 master copy beside bf16 weights
    total = weight * p / (w if stage == 3 else 1)  # model weights
    total += weight * p / (w if stage >= 2 else 1)  # gradients
    total += (master + 8) * p / (w if stage >= 1 else 1)  # master weights + Adam moments
    if needs_target(cfg):
        total += 4 * p / (w if stage == 3 else 1)  # fp32 target network
    return int(total)


def check_memory(cfg: Config, world: World, available: int | None = None) -> None:
    """Refuse, before building anything, a model whose states cannot fit (with a hint what to change)."""
    from pac.networks import count_parameters

    if available is None:
        if torch.cuda.is_available():
            available = torch.cuda.mem_get_info()[0]
        else:
            import psutil

            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size))
            available = psutil.virtual_memory().available // max(1, local_ranks)
    params = count_parameters(cfg.model)
    need = estimate_memory(cfg, params, world.world_size)
    if need > available:
        gib = 1024**3
        raise ConfigError(
            f"preset {cfg.preset!r} ({params / 1e6:.0f}M parameters) needs about {need / gib:.1f} GiB per rank for "
            f"weights, gradients, optimizer and target at ZeRO-{cfg.train.zero_stage} with {world.world_size} "
            f"rank(s), but {available / gib:.1f} GiB are available: shard across more ranks with "
            "--train.zero_stage 3, and offload optimizer/parameters to host memory on accelerators "
            "(--train.offload_optimizer true --train.offload_params true), or pick a smaller --preset")


def lr_lambda(cfg: TrainConfig) -> Any:
    """Linear warmup, then cosine decay to 10% (or constant) over `train.steps`."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def enable_activation_checkpointing(net: PerceiverActorCritic) -> None:
    """Recompute the declared checkpoint units in backward instead of storing their activations."""
    from torch.utils.checkpoint import checkpoint

    for module in net.modules():
        if isinstance(module, net.checkpoint_units):
            forward = module.forward

            def wrapped(*args: Any, _forward: Any = forward, **kwargs: Any) -> Any:
                if not torch.is_grad_enabled():
                    return _forward(*args, **kwargs)
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            module.forward = wrapped


def _optimizer(params: Iterator[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # ZeRO-Offload steps on the CPU copy

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=(0.9, 0.95))
    # A torch optimizer: no JIT-compiled fused op needed, same math as DeepSpeed's FusedAdam.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


class DeepSpeedEngine:
    """One optimizer step of PAC = `accumulation` micro-batches through a DeepSpeed engine."""

    def __init__(self, cfg: Config, world: World, init_weights: dict[str, torch.Tensor] | None = None,
                 resumed_precision: str | None = None) -> None:
        """Build the learner (and target), optionally from consolidated `init_weights` (finetuning).

        `self.cfg` is `cfg` with `train.precision` resolved (`resolve_precision`; `resumed_precision` is that
        of the checkpoint the run will resume), so everything after the engine records what it trains in.

        Initial weights go into the module BEFORE `deepspeed.initialize`: the engine's optimizer takes
        its fp32 master copy of the parameters there, and a later load into the module alone would be
        overwritten by that copy at the first optimizer step. Under bf16 that copy is of the rounded
        module, so the full-precision weights are written into the masters afterwards as well.
        """
        import deepspeed

        precision = resolve_precision(cfg.train.precision, resumed_precision, cfg.model.d_model)
        if precision != cfg.train.precision:
            log.info("train.precision %s -> %s", cfg.train.precision, precision)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))
        cfg = dataclasses.replace(cfg, train=per_rank_batch(cfg.train, world.world_size))
        self.cfg, self.world = cfg, world
        self.accumulation = accumulation_steps(cfg.train, world.world_size)
        self.ds_config = deepspeed_config(cfg.train, world.world_size)
        self.zero3 = cfg.train.zero_stage == 3
        self.global_step = 0
        # fp32 variant of the config for the target network (see the module docstring).
        self.target_ds_config = {**self.ds_config, "bf16": {"enabled": False}}
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        check_memory(cfg, world)
        with self._construct(self.ds_config):
            learner = PACLearner(cfg.model, cfg.objective)
        with self._construct(self.target_ds_config):
            target = build_model(cfg.model) if self.zero3 and needs_target(cfg) else None
        if init_weights is not None:
            self._load_into(learner.net, init_weights)
        if cfg.train.activation_checkpointing:
            enable_activation_checkpointing(learner.net)
        optimizer = _optimizer(learner.parameters(), cfg.train)
        # A factory, so the schedule wraps DeepSpeed's optimizer (ZeRO regroups the parameters).
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=learner, optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.train)))
        self.engine.checkpoint_engine = _safe_checkpoint_engine()
        if init_weights is not None and cfg.train.precision == "bf16":
            self._set_masters(init_weights)
        self.target: PerceiverActorCritic | None = None
        if not needs_target(cfg):
            pass
        elif self.zero3:
            # Partitioned target driven by a parameter-only engine, in fp32 (see module docstring).
            self.target_engine, *_ = deepspeed.initialize(model=target, config=self.target_ds_config)
            self.target = self.target_engine.module
            self._copy_target_from_online(tau=1.0)
        else:
            self.target = copy.deepcopy(self.learner.net).float().requires_grad_(False)

    def _construct(self, ds_config: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        # Partitioned at construction: a large preset is never materialised whole on any rank.
        return deepspeed.zero.Init(config_dict_or_path=ds_config)

    @property
    def learner(self) -> PACLearner:
        return self.engine.module

    @property
    def net(self) -> PerceiverActorCritic:
        return self.learner.net

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        # The fp32 target (ZeRO 0-2) computes in bf16 like the online model; its weights stay fp32.
        if self.cfg.train.precision == "bf16" and not self.zero3:
            return torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, micro_batches: list[Transition], sample_seeds: list[int]) -> dict[str, float]:
        """Forward/backward each micro-batch, one optimizer step, one target update. Returns mean metrics.

        `sample_seeds` seed each micro-batch's action samples, so the samples depend on which global
        micro-batch this is, not on how many ranks share the step (or where a run was resumed).
        """
        if len(micro_batches) != self.accumulation:
            raise ValueError(f"expected {self.accumulation} micro-batches, got {len(micro_batches)}")
        totals: dict[str, float] = {}
        # DeepSpeed keeps the global gradient norm on its bf16 and ZeRO paths; its plain fp32 path clips without
        # keeping it, so it is measured here, after the last backward (gradients all-reduced), before the step.
        own_norm = self.cfg.train.precision == "fp32" and not self.cfg.train.zero_stage
        for batch, seed in zip(micro_batches, sample_seeds, strict=True):
            generator = torch.Generator().manual_seed(seed)
            with self._autocast():
                loss, metrics = self.engine(batch, self.target, generator)
            self.engine.backward(loss)
            if own_norm and self.engine.is_gradient_accumulation_boundary():
                grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
                totals["grad_norm"] = float(torch.nn.utils.get_total_norm(grads))
            self.engine.step()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / self.accumulation
        self.global_step += 1
        self._copy_target_from_online()
        totals["lr"] = float(self.scheduler.get_last_lr()[0])
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None and not own_norm:
            totals["grad_norm"] = float(grad_norm)
        return totals

    @torch.no_grad()
    def _copy_target_from_online(self, tau: float | None = None) -> None:
        if self.target is None:
            return
        obj = self.cfg.objective
        if tau is not None:  # initial hard copy
            obj = dataclasses.replace(obj, target_update="polyak", polyak_tau=tau)
        if self.zero3:
            update_target((p.ds_tensor for p in self.net.parameters()),
                          (p.ds_tensor for p in self.target.parameters()), self.global_step, obj)
        else:
            update_target(self.net.parameters(), self.target.parameters(), self.global_step, obj)

    # --- state -----------------------------------------------------------------------------------
    def save(self, directory: Path, tag: str) -> None:
        """Write this rank's engine files (model, optimizer, scheduler, eta) and target partition."""
        from safetensors.torch import save_file

        self.engine.save_checkpoint(str(directory), tag=tag, client_state={"global_step": self.global_step})
        if self.target is None:
            return
        target = {n: (p.ds_tensor if self.zero3 else p).detach().float().contiguous().clone()
                  for n, p in self.target.named_parameters()}
        save_file(target, str(directory / tag / f"target_rank{self.world.rank:03d}.safetensors"))

    def load(self, directory: Path, tag: str) -> None:
        from safetensors.torch import load_file

        path, client = self.engine.load_checkpoint(str(directory), tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if path is None:
            raise ValueError(f"DeepSpeed found no checkpoint {tag!r} in {directory}")
        self.global_step = int(client["global_step"])
        if self.target is None:
            return
        target = load_file(str(directory / tag / f"target_rank{self.world.rank:03d}.safetensors"))
        with torch.no_grad():
            for n, p in self.target.named_parameters():
                (p.ds_tensor if self.zero3 else p).copy_(target[n])

    def _load_into(self, net: PerceiverActorCritic, state: dict[str, torch.Tensor]) -> None:
        """Consolidated weights into a (possibly partitioned) network; rank 0's copy is broadcast under ZeRO-3."""
        from pac.training.export import load_state_dict_checked

        with self._gathered(net, modify=True):
            if self.world.is_main or not self.zero3:
                load_state_dict_checked(net, state, "init weights", self.cfg.preset)

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 network weights (gathered from shards under ZeRO-3; valid on rank 0; every rank calls it).

        Under bf16 the parameters come from the optimizer's fp32 master copy: the module's bf16 copy is
        that copy rounded, and updates smaller than bf16's resolution live only in the master.
        """
        from deepspeed.utils import safe_get_full_fp32_param

        bf16 = self.cfg.train.precision == "bf16"
        unfused = self._unfused_masters() if bf16 else {}
        out = {}
        with self._gathered(self.net):
            for name, tensor in self.net.state_dict(keep_vars=True).items():
                master = None
                if bf16 and isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                    master = unfused.get(id(tensor))
                    if master is None:  # collective under ZeRO-3: every rank walks the same state_dict order
                        master = safe_get_full_fp32_param(tensor)
                    if master is None:
                        raise RuntimeError(f"DeepSpeed keeps no fp32 master copy of {name}")
                out[name] = (tensor if master is None else master).detach().float().cpu().clone()
        return out

    def _unfused_masters(self) -> dict[int, torch.Tensor]:
        """ZeRO-0 bf16 runs DeepSpeed's unfused fp16-style optimizer: parallel lists of model and master tensors
        (ZeRO 1-3 reach theirs through `safe_get/set_full_fp32_param`)."""
        from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

        opt = self.engine.optimizer
        if not isinstance(opt, FP16_UnfusedOptimizer):
            return {}
        return {id(p): m for low, high in zip(opt.fp16_groups, opt.fp32_groups, strict=True)
                for p, m in zip(low, high, strict=True)}

    def _set_masters(self, state: dict[str, torch.Tensor]) -> None:
        """Write full-precision `state` into the bf16 optimizer's fp32 masters (every rank holds all of it).

        `deepspeed.initialize` copies the masters from the bf16 module, i.e. from weights already rounded.
        """
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_local_fp32_param

        unfused = self._unfused_masters()
        with torch.no_grad():
            for name, param in self.net.state_dict(keep_vars=True).items():
                if not (isinstance(param, nn.Parameter) and param.requires_grad):
                    continue
                value = state[name].float()
                if id(param) in unfused:
                    unfused[id(param)].copy_(value)
                elif self.zero3:
                    # This rank's slice of the zero-padded flat tensor. (DeepSpeed's own full setter
                    # ignores the padding and fails on sizes that do not divide by the world size.)
                    n = param.ds_tensor.numel()
                    flat = F.pad(value.flatten(), (0, n * self.world.world_size - value.numel()))
                    safe_set_local_fp32_param(param, flat[n * self.world.rank:n * (self.world.rank + 1)])
                else:
                    safe_set_full_fp32_param(param, value)

    def _gathered(self, module: nn.Module, modify: bool = False) -> contextlib.AbstractContextManager[Any]:
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0 if modify else None)

    def eta(self) -> float:
        return float(self.learner.temperature().detach())


def _safe_checkpoint_engine() -> Any:
    """DeepSpeed's torch checkpoint engine, but loading with `weights_only=True`: checkpoint files are
    never unpickled beyond tensors, containers and DeepSpeed's own small state classes."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeCheckpointEngine()


def _deepspeed_safe_globals() -> list[Any]:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address, collections.OrderedDict, torch.Size]
