"""The training loop: setup / step / evaluate / save, composed (not inherited), one readable function.

    result = train(cfg)            # pretraining or finetuning (train.init_from), one process or many

Every rank runs the same code; only rank 0 logs to MLflow and writes the export. A run resumes from
the newest checkpoint in `train.output` (exactly: same batches, same RNG, same MLflow run), saves every
`train.checkpoint_every` steps and on SIGTERM (then exits 143 so the orchestrator restarts it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from pac.config import Config, ProprioStats
from pac.inputs import Transition
from pac.networks import PerceiverActorCritic
from pac.storage import open_store, resolve_uri
from pac.training.checkpoint import CheckpointStore, rng_state, set_rng_state
from pac.training.engine import DeepSpeedEngine, init_world, per_rank_batch
from pac.training.export import save_export
from pac.training.flops import count_flops, peak_matmul_flops, tokens_per_sample
from pac.training.weights import RUN_INFO

log = logging.getLogger(__name__)

EXPORT = "export"
_FLOP_COUNT_MAX_PARAMS = 50_000_000


class BatchSource(Protocol):
    """What the loop samples from: batch `i` is a pure function of `i` (the loader is one)."""

    def batch(self, step: int) -> Transition: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


EvalHook = Callable[[PerceiverActorCritic, int], dict[str, float]]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite (the message names the first such step)."""


@dataclass
class TrainResult:
    steps: int  # global steps completed
    run_id: str | None
    export_uri: str  # consolidated weights + config (safetensors), the input of evaluate/finetune
    history: list[dict[str, float]] = field(default_factory=list)  # per-step metrics of this process
    preempted: bool = False


class _Preemption:
    """SIGTERM sets a flag; the loop checkpoints at the next step boundary and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: checkpointing at the end of this step")
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def with_eta(cfg: Config, eta: float) -> Config:
    """`cfg` with `objective.eta` set to `eta`, kept within the config's floor `eta_min`."""
    return dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, eta=max(eta, cfg.objective.eta_min)))


def exported_config(cfg: Config, eta: float) -> Config:
    """The config an export records: the run's, with the temperature it learned as `objective.eta`.

    A run whose eta never moved (BC, BC+Q, a fixed eta) records its configured value. The floor matters:
    `eta_min` rounds to float32 in training, so an eta at its floor can read a hair below the config's value.
    """
    if not cfg.objective.learns_eta:
        return cfg
    if not math.isfinite(eta):
        log.warning("the learned eta is %s (the training diverged?); the export records the initial eta %g",
                    eta, cfg.objective.eta)
        return cfg
    return with_eta(cfg, eta)


def continue_temperature(cfg: Config, source: Config) -> Config:
    """A finetune's eta starts where its source's training left it (`exported_config`), not at the initial value.

    The finetune inherits the source's critic and with it the spread of its Q-values, which the learned eta
    matches. From the initial eta (1, against ~16 learned on reacher/easy) the dual needs a few hundred steps
    to catch up, and meanwhile the improvement weights put nearly all their mass on the critic's best
    sampled action, far beyond the KL bound epsilon: each self-improvement round began by chasing the critic's
    errors. A source that learned no eta (BC, BC+Q, a fixed eta) leaves the finetune's own initial value.
    """
    if not (cfg.objective.learns_eta and source.objective.learns_eta):
        return cfg
    log.info("eta starts at %g, where the source's training left it (configured initial value: %g)",
             source.objective.eta, cfg.objective.eta)
    return with_eta(cfg, source.objective.eta)


def train(cfg: Config, *, source: BatchSource | None = None, eval_hook: EvalHook | None = None,
          parent_run_id: str | None = None, run_name: str | None = None) -> TrainResult:
    """Run (or resume) a training run as configured; returns where the exported weights are."""
    from pac.tracking import Tracker

    world = init_world()
    cfg = dataclasses.replace(cfg, train=per_rank_batch(cfg.train, world.world_size))
    run_store = open_store(resolve_uri(cfg.train.output, cfg.storage), cfg.storage)
    tracker = Tracker(cfg.tracking, active=world.is_main)
    # Fail fast on unreachable services, before the first (possibly hour-long) step.
    if world.is_main:
        run_store.check(write=True)
        tracker.check()
    ckpts = CheckpointStore(run_store, world.rank, world.world_size)
    latest = ckpts.latest() if cfg.train.resume else None
    init_weights = None
    recorded: dict[str, ProprioStats] = {}  # the state normalisation the network already learned under
    if latest is not None:
        recorded = {t: ProprioStats(**s) for t, s in ckpts.manifest(latest)["model"].get("proprio_stats", {}).items()}
    elif cfg.train.init_from:  # a resumed finetune continues from its own checkpoint
        from pac.training.weights import load_weights

        init_weights, source_cfg = load_weights(cfg.train.init_from, cfg)
        recorded = source_cfg.model.proprio_stats
        cfg = continue_temperature(cfg, source_cfg)
    if source is None:
        from pac.data.mixture import build_source, with_proprio_stats

        cfg = with_proprio_stats(cfg, recorded)
        source = build_source(cfg, rank=world.rank, world_size=world.world_size)
    elif recorded:  # the caller's batches are its own business; the network keeps what it learned under
        stats = {**cfg.model.proprio_stats, **recorded}
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, proprio_stats=stats))
    engine = DeepSpeedEngine(cfg, world, init_weights=init_weights,
                             resumed_precision=ckpts.manifest(latest).get("precision") if latest is not None else None)
    cfg = engine.cfg  # "auto" resolved: the log, MLflow and the manifest record the precision trained in
    gas = engine.accumulation

    start, run_id = 0, None
    if latest is not None:
        state = ckpts.load(engine, latest, cfg)
        set_rng_state(state["rng"])
        source.load_state_dict(state["loader"])
        start, run_id = latest, state.get("run_id")
        # The eta the run started from (a finetune's continued one), so the resumed run's config and MLflow
        # params are the original's; the learned value itself comes back with the engine's state.
        cfg = with_eta(cfg, state.get("eta_start", cfg.objective.eta))
        log.info("resumed from %s at step %d", ckpts.store.url(), start)
    elif init_weights is not None:
        log.info("initialised from %s", cfg.train.init_from)
    run_id = tracker.start(cfg, run_name=run_name or Path(cfg.train.output).name, run_id=run_id,
                           parent_run_id=parent_run_id,
                           tags={"init_from": cfg.train.init_from} if cfg.train.init_from else None)
    if cfg.data.dataset and world.is_main:  # batches from a dataset (not a caller's source): record which
        tracker.log_datasets(cfg)

    sample_tokens = tokens_per_sample(source.batch(start * gas), cfg.model)
    with torch.random.fork_rng():  # measuring must not shift the training RNG stream (exact resume)
        flops_per_step = _flops_per_step(cfg, source.batch(start * gas), gas) if world.is_main else 0.0
        peak = peak_matmul_flops(torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32) \
            if world.is_main else 1.0
    if world.is_main:
        log.info("%s | preset %s | %d rank(s) x micro-batch %d x %d accumulation = %d | ZeRO-%d %s | "
                 "%.3g model FLOP/step | matmul peak %.3g FLOP/s", cfg.objective.method, cfg.preset,
                 world.world_size, cfg.train.micro_batch_size, gas, cfg.train.global_batch_size,
                 cfg.train.zero_stage, cfg.train.precision, flops_per_step, peak)

    preemption = _Preemption()
    history: list[dict[str, float]] = []
    step, saved_at, checked = start, start, 0
    t_last, n_last = time.perf_counter(), start
    try:
        while step < cfg.train.steps and not preemption.requested:
            t0 = time.perf_counter()
            micro = [step * gas + m for m in range(gas)]
            # Global micro-batch index: the same sample stream for any split into ranks x accumulation.
            seeds = [cfg.seed * 1_000_003 + i * world.world_size + world.rank for i in micro]
            metrics = engine.train_step([source.batch(i) for i in micro], seeds)
            step += 1
            dt = time.perf_counter() - t0
            metrics.update(eta=engine.eta(), step_time_s=dt,
                           samples_per_s=cfg.train.global_batch_size / dt,
                           tokens_per_s=cfg.train.global_batch_size * sample_tokens / dt,
                           mfu=flops_per_step / dt / peak)
            history.append(metrics)
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                # Every rank checks (the gradient norm is global, so all of them stop together), once per
                # logging interval rather than with a host sync in every step.
                _check_finite(history, checked, start)
                checked = len(history)
            if world.is_main and (step % cfg.train.log_every == 0 or step == cfg.train.steps or step == start + 1):
                # The interval's mean, once per `log_every` steps: a synchronous MLflow call per step cost more
                # than a tiny preset's step, and the mean is a smoother curve than every step's sample.
                interval = _mean(history[n_last - step:])
                rate = (step - n_last) / (time.perf_counter() - t_last)
                t_last, n_last = time.perf_counter(), step
                tracker.log_metrics(interval, step)
                log.info(_log_line(step, cfg.train.steps, interval, rate))
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and eval_hook is not None:
                _evaluate(engine, eval_hook, step, tracker, world.is_main)
            if step % cfg.train.checkpoint_every == 0 or preemption.requested:
                _save(ckpts, engine, step, cfg, source, run_id)
                saved_at = step
        if saved_at != step:
            _save(ckpts, engine, step, cfg, source, run_id)
    except BaseException:
        if world.is_main:  # the curve up to the failure reaches MLflow (queued metrics), the run says FAILED
            with contextlib.suppress(Exception):
                tracker.end(status="FAILED")
        raise
    finally:
        preemption.restore()

    export_uri = run_store.url(EXPORT)
    weights, eta = engine.consolidated_state_dict(), engine.eta()
    if world.is_main and not preemption.requested:
        with tempfile.TemporaryDirectory(prefix="pac-export-") as tmp:
            save_export(weights, exported_config(cfg, eta), tmp)
            # Lineage for finetuning runs started from this export (their MLflow parent).
            (Path(tmp) / RUN_INFO).write_text(json.dumps({"run_id": run_id, "steps": step}))
            for f in sorted(Path(tmp).iterdir()):  # config.json last: it marks a complete export
                if f.name != "config.json":
                    run_store.put_file(f"{EXPORT}/{f.name}", f)
            run_store.put_file(f"{EXPORT}/config.json", Path(tmp) / "config.json")
            tracker.log_model(tmp)
        tracker.describe(cfg, step, _mean(history[-max(len(history) // 10, 1):]) if history else {})
        tracker.end()
    elif world.is_main:
        tracker.end(status="KILLED")
    torch.distributed.barrier()
    return TrainResult(step, run_id, export_uri, history, preemption.requested)


def _save(ckpts: CheckpointStore, engine: DeepSpeedEngine, step: int, cfg: Config, source: BatchSource,
          run_id: str | None) -> None:
    state = {"rng": rng_state(), "loader": source.state_dict(), "run_id": run_id, "step": step,
             "eta_start": cfg.objective.eta}
    ckpts.save(engine, step, cfg, state, keep=cfg.train.keep_checkpoints)


def _evaluate(engine: DeepSpeedEngine, hook: EvalHook, step: int, tracker: Any, is_main: bool) -> None:
    from pac.networks import build_model

    weights = engine.consolidated_state_dict()  # collective under ZeRO-3: every rank takes part
    if is_main:
        net = build_model(engine.cfg.model)
        net.load_state_dict(weights)
        metrics = hook(net.eval(), step)
        tracker.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step)
        log.info("eval @ %d: %s", step, " ".join(f"{k}={v:.3g}" for k, v in metrics.items()))


def _flops_per_step(cfg: Config, batch: Transition, gas: int) -> float:
    """Model FLOPs of one optimizer step: forward + backward of the loss (target forwards included),
    counted by torch on a throwaway fp32 replica (FLOPs do not depend on weights, and running backward
    outside the engine would disturb its gradient buffers). Skipped above `_FLOP_COUNT_MAX_PARAMS`,
    where the replica would cost real memory: benchmarks/train_throughput.py measures MFU there."""
    from pac.networks import count_parameters
    from pac.objective import PACLearner

    if count_parameters(cfg.model) > _FLOP_COUNT_MAX_PARAMS:
        return 0.0
    learner = PACLearner(cfg.model, cfg.objective)

    def fwd_bwd() -> None:
        loss, _ = learner(batch, learner.net)
        loss.backward()

    return float(count_flops(fwd_bwd) * gas)


def _check_finite(history: list[dict[str, float]], checked: int, start: int) -> None:
    """Raise `TrainingDiverged` naming the first step since `history[checked]` whose loss or gradient norm
    is not finite (`history[i]` is step `start + i + 1`)."""
    for i in range(checked, len(history)):
        bad = {k: history[i][k] for k in ("loss", "grad_norm") if not math.isfinite(history[i].get(k, 0.0))}
        if bad:
            values = ", ".join(f"{k} {v}" for k, v in bad.items())
            raise TrainingDiverged(f"step {start + i + 1}: {values}: the training diverged (lower train.lr, check "
                                   "the data's rewards and states, or resume from an earlier checkpoint)")


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for r in rows for k in r)
    return {k: sum(vals) / len(vals) for k in keys if (vals := [r[k] for r in rows if k in r])}


def _log_line(step: int, total: int, m: dict[str, float], rate: float) -> str:
    keys = [("loss", "loss"), ("bc_nll", "bc"), ("q_loss", "q"), ("improve_loss", "imp"), ("eta", "eta"),
            ("entropy", "H"), ("q_mean", "Q"), ("grad_norm", "|g|"), ("lr", "lr")]
    parts = [f"{short}={m[k]:.4g}" for k, short in keys if k in m]
    return (f"step {step}/{total} " + " ".join(parts) +
            f" | {m['samples_per_s']:.0f} samples/s {m['tokens_per_s']:.0f} tok/s mfu={m['mfu']:.2%} "
            f"({rate:.2f} steps/s)")
