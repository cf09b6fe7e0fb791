"""Checkpoints: exact resume after SIGKILL, round trip through the real S3 server, refusal of bad ones."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pac.config import Config, ConfigError
from pac.data.synthetic import SyntheticSource
from pac.storage import open_store
from pac.training.checkpoint import CheckpointError
from pac.training.engine import (
    accumulation_steps,
    check_memory,
    deepspeed_config,
    init_world,
    per_rank_batch,
    resolve_precision,
)
from pac.training.export import ExportError, load_export
from pac.training.loop import train

DRIVER = Path(__file__).with_name("driver.py")


def cfg_dict(output: str, **train_over: object) -> dict:
    return {"preset": "tiny", "seed": 5, "objective": {"num_action_samples": 4},
            "train": {"steps": 6, "global_batch_size": 8, "micro_batch_size": 8, "precision": "fp32",
                      "warmup_steps": 0, "lr": 1e-3, "log_every": 1, "checkpoint_every": 2, "output": output,
                      **train_over},
            "tracking": {"enabled": False}, "storage": {"secure": False}}  # the test S3 server speaks plain HTTP


def run_synthetic(d: dict) -> list[float]:
    cfg = Config.from_dict(d)
    return [h["loss"] for h in train(cfg, source=SyntheticSource(cfg.model, cfg.train.micro_batch_size,
                                                                 seed=cfg.seed)).history]


def driver_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1"}


def test_sigkill_then_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    steps = 60
    full = cfg_dict(str(tmp_path / "full"), steps=steps, checkpoint_every=1000)
    subprocess.run([sys.executable, str(DRIVER), "train", json.dumps(full), str(tmp_path / "o_full")],
                   env=driver_env(), check=True, capture_output=True, timeout=600)
    reference = json.loads((tmp_path / "o_full" / "rank0.json").read_text())["losses"]
    assert len(reference) == steps

    killed = cfg_dict(str(tmp_path / "killed"), steps=steps, checkpoint_every=5)
    args = [sys.executable, str(DRIVER), "train", json.dumps(killed), str(tmp_path / "o_killed")]
    proc = subprocess.Popen(args, env=driver_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not any(ckpts.glob("step_*/manifest.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "o_killed" / "rank0.json").exists(), "the run finished before it could be killed"

    subprocess.run(args, env=driver_env(), check=True, capture_output=True, timeout=600)
    resumed = json.loads((tmp_path / "o_killed" / "rank0.json").read_text())
    done_before = steps - len(resumed["losses"])
    assert 5 <= done_before < steps
    assert resumed["losses"] == pytest.approx(reference[done_before:], rel=1e-6)


@pytest.mark.s3
def test_checkpoints_round_trip_through_s3_and_tampering_is_refused(s3_bucket: str) -> None:
    out = f"{s3_bucket}/runs/a"
    first = run_synthetic(cfg_dict(out, steps=4, lr_schedule="constant"))  # same lr whatever the total
    store = open_store(out, Config.from_dict({"storage": {"secure": False}}).storage)
    assert {"checkpoints/step_0000004/manifest.json", "export/model.safetensors",
            "export/config.json"} <= set(store.list(""))
    reference = run_synthetic(cfg_dict(f"{s3_bucket}/runs/ref", steps=6, lr_schedule="constant"))
    resumed = run_synthetic(cfg_dict(out, steps=6, lr_schedule="constant"))
    assert first == pytest.approx(reference[:4], rel=1e-6)
    assert resumed == pytest.approx(reference[4:], rel=1e-6)

    key = next(k for k in store.list("checkpoints/step_0000006/") if k.endswith(".pt"))
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    store.put_bytes(key, bytes(data))
    with pytest.raises(CheckpointError, match=key.split("/")[-1] + ".*truncated or tampered"):
        run_synthetic(cfg_dict(out, steps=8, lr_schedule="constant"))
    store.put_bytes(key, bytes(data[:100]))
    with pytest.raises(CheckpointError, match="truncated or tampered"):
        run_synthetic(cfg_dict(out, steps=8, lr_schedule="constant"))


def test_checkpoint_of_another_preset_is_a_named_mismatch(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    run_synthetic(cfg_dict(out, steps=2))
    other = cfg_dict(out, steps=4)
    other["preset"] = "tiny-wide"
    with pytest.raises(CheckpointError, match="preset 'tiny'.*'tiny-wide'.*d_model"):
        run_synthetic(other)


def test_checkpoint_of_another_eta_parameterisation_is_a_named_mismatch(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    run_synthetic(cfg_dict(out, steps=2))
    other = cfg_dict(out, steps=4)
    other["objective"] = {**other["objective"], "eta_lr_scale": 10.0}
    with pytest.raises(CheckpointError, match="eta_lr_scale=100.0 and this run has 10.0.*--objective.eta_lr_scale"):
        run_synthetic(other)


def test_checkpoint_with_other_encoder_features_is_a_named_mismatch(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    run_synthetic({**cfg_dict(out, steps=2), "model": {"proprio_fourier_bands": 8}})
    with pytest.raises(CheckpointError, match=r"model fields differ \(proprio_fourier_bands\)"):
        run_synthetic(cfg_dict(out, steps=4))


def test_auto_precision_resumes_in_the_checkpoints_precision_and_a_named_one_must_match(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    run_synthetic(cfg_dict(out, steps=2, precision="bf16"))
    with pytest.raises(CheckpointError, match="holds bf16 optimizer state.*trains in fp32.*--train.precision bf16"):
        run_synthetic(cfg_dict(out, steps=4, precision="fp32"))
    run_synthetic(cfg_dict(out, steps=4, precision="auto"))  # whatever this machine would pick for a new run
    manifest = json.loads((tmp_path / "run" / "checkpoints" / "step_0000004" / "manifest.json").read_text())
    assert manifest["precision"] == "bf16"


def test_auto_precision_is_bf16_where_the_hardware_has_it_and_the_model_is_wide(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for caps, expected in [({"amx_bf16": True}, "bf16"), ({"avx512_bf16": True, "avx2": True}, "bf16"),
                           ({"avx512_bf16": False, "avx2": True}, "fp32")]:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        assert resolve_precision("auto") == expected
        assert resolve_precision("auto", d_model=64) == "fp32"  # the tiny presets: fp32 is the faster path
        assert resolve_precision("auto", checkpoint="fp32") == "fp32"
        assert resolve_precision("bf16") == "bf16" and resolve_precision("fp32", checkpoint="bf16") == "fp32"


@pytest.mark.parametrize(("precision", "zero_stage"), [("fp32", 0), ("fp32", 2), ("bf16", 0)])
def test_every_precision_and_stage_reports_the_gradient_norm(tmp_path: Path, precision: str, zero_stage: int) -> None:
    cfg = Config.from_dict(cfg_dict(str(tmp_path / "run"), steps=2, precision=precision, zero_stage=zero_stage,
                                    global_batch_size=16))  # 2 micro-batches: the norm is taken once per step
    history = train(cfg, source=SyntheticSource(cfg.model, cfg.train.micro_batch_size, seed=cfg.seed)).history
    assert len(history) == 2 and all(h["grad_norm"] > 0 for h in history)


class _Payload:
    """A pickle that creates a file when unpickled: what a planted checkpoint or model file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    """Someone with write access to the run directory replaces a checkpoint file (and fixes its manifest) and the
    exported weights with pickles that run code: resuming and loading refuse both by name, and nothing runs."""
    out = tmp_path / "run"
    run_synthetic(cfg_dict(str(out), steps=2))
    marker = tmp_path / "payload-ran"
    evil = pickle.dumps(_Payload(marker))
    step = out / "checkpoints" / "step_0000002"
    victim = next(p for p in step.rglob("*.pt"))
    victim.write_bytes(evil)
    manifest = json.loads((step / "manifest.json").read_text())
    key = str(victim.relative_to(step))
    manifest["files"][key] = {"sha256": hashlib.sha256(evil).hexdigest(), "bytes": len(evil)}
    (step / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not plain tensors"):
        run_synthetic(cfg_dict(str(out), steps=4))
    (out / "export" / "model.safetensors").write_bytes(evil)
    with pytest.raises(ExportError, match="model.safetensors"):
        load_export(out / "export")
    assert not marker.exists()


def test_export_loads_back_without_pickle_and_damaged_weights_are_refused(tmp_path: Path) -> None:
    run_synthetic(cfg_dict(str(tmp_path / "run"), steps=2))
    net, cfg = load_export(tmp_path / "run" / "export")
    assert cfg.preset == "tiny" and cfg.train.steps == 2
    assert sum(p.numel() for p in net.parameters()) > 0

    weights = tmp_path / "run" / "export" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10  # one bit of one weight: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="model.safetensors does not match the checksum it was exported with"):
        load_export(tmp_path / "run" / "export")


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_bf16_export_holds_the_fp32_master_weights(tmp_path: Path, zero_stage: int) -> None:
    """The module's bf16 copy is the master rounded; the export keeps what rounding would lose."""
    run_synthetic(cfg_dict(str(tmp_path / "run"), steps=2, precision="bf16", zero_stage=zero_stage))
    net, _ = load_export(tmp_path / "run" / "export")
    weights = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert (weights != weights.bfloat16().float()).float().mean() > 0.5


def test_generated_deepspeed_config_repeats_nothing_by_hand() -> None:
    cfg = Config.from_dict({"train": {"global_batch_size": 32, "micro_batch_size": 4, "grad_clip": 0.5,
                                      "zero_stage": 3, "precision": "bf16"}})
    ds = deepspeed_config(cfg.train, world_size=2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == \
        (32, 4, 4)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 3
    assert "optimizer" not in ds and "scheduler" not in ds  # built from TrainConfig in code, not JSON
    with pytest.raises(ConfigError, match="global_batch_size=32 is not divisible.*micro_batch_size \\(4\\) x "
                                          "ranks \\(3\\)"):
        deepspeed_config(cfg.train, world_size=3)


def test_an_unpinned_micro_batch_splits_the_global_batch_over_any_number_of_ranks() -> None:
    """The README's `torchrun --nproc_per_node 2 ... --train.zero_stage 3` at the defaults (issue 20): one config
    runs at any world size unless the micro-batch is pinned."""
    default = Config().train
    assert [per_rank_batch(default, n).micro_batch_size for n in (1, 2, 4)] == [64, 32, 16]
    assert [accumulation_steps(per_rank_batch(default, n), n) for n in (1, 2, 4)] == [1, 1, 1]
    pinned = Config.from_dict({"train": {"global_batch_size": 64, "micro_batch_size": 16}}).train
    assert per_rank_batch(pinned, 2).micro_batch_size == 16 and accumulation_steps(pinned, 2) == 2
    with pytest.raises(ConfigError, match="global_batch_size=64 does not split evenly over 3 ranks"):
        per_rank_batch(default, 3)


def test_a_preset_too_large_for_memory_is_refused_with_a_hint() -> None:
    world = init_world()
    cfg = Config.from_dict({"preset": "XL", "train": {"zero_stage": 0}})
    with pytest.raises(ConfigError, match="preset 'XL'.*GiB.*zero_stage 3.*offload"):
        check_memory(cfg, world, available=8 * 1024**3)
    check_memory(Config(), world, available=8 * 1024**3)  # tiny fits


def test_unreachable_object_store_fails_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    d = cfg_dict("s3://nowhere/run", steps=2)
    d["storage"] = {"endpoint": "127.0.0.1:9", "secure": False, "retries": 0}
    start = time.time()
    with pytest.raises(OSError, match="127.0.0.1:9"):
        run_synthetic(d)
    assert time.time() - start < 60


def test_sigterm_checkpoints_at_the_step_boundary_and_the_rerun_finishes_the_same_run(tmp_path: Path) -> None:
    steps = 60
    reference_cfg = cfg_dict(str(tmp_path / "full"), steps=steps, checkpoint_every=1000)
    subprocess.run([sys.executable, str(DRIVER), "train", json.dumps(reference_cfg), str(tmp_path / "o_full")],
                   env=driver_env(), check=True, capture_output=True, timeout=600)
    reference = json.loads((tmp_path / "o_full" / "rank0.json").read_text())["losses"]

    cfg = cfg_dict(str(tmp_path / "run"), steps=steps, checkpoint_every=1000)  # only SIGTERM saves mid-run
    args = [sys.executable, str(DRIVER), "train", json.dumps(cfg), str(tmp_path / "o")]
    proc = subprocess.Popen(args, env=driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:  # wait until training steps are being logged
        line = proc.stdout.readline()
        if "step 2/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    report = json.loads((tmp_path / "o" / "rank0.json").read_text())
    assert report["preempted"] and 2 <= report["steps"] < steps
    assert (tmp_path / "run" / "checkpoints" / f"step_{report['steps']:07d}" / "manifest.json").exists()
    assert not (tmp_path / "run" / "export").exists()  # a preempted run exports nothing

    subprocess.run(args, env=driver_env(), check=True, capture_output=True, timeout=600)
    resumed = json.loads((tmp_path / "o" / "rank0.json").read_text())
    assert resumed["losses"] == pytest.approx(reference[report["steps"]:], rel=1e-6)
    assert (tmp_path / "run" / "export" / "config.json").exists()


@pytest.mark.parametrize("stage", [0, 2])
def test_activation_checkpointing_trains_the_same_as_storing_activations(tmp_path: Path, stage: int) -> None:
    plain = run_synthetic(cfg_dict(str(tmp_path / f"plain{stage}"), steps=3, zero_stage=stage))
    ckpt = run_synthetic(cfg_dict(str(tmp_path / f"ckpt{stage}"), steps=3, zero_stage=stage,
                                  activation_checkpointing=True))
    # Recomputation reorders nothing, but the kernels it runs under autograd may round differently (~1e-7);
    # three steps of Adam on inputs with Fourier features amplify that to ~1e-5. A wrong recompute is far larger.
    assert ckpt == pytest.approx(plain, rel=1e-4)
