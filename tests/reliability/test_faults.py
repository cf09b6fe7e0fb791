"""Fault injection with real processes and real servers: each kind of fault, many trials, nothing lost.

Trials behind the `reliability` marker feed docs/reliability.md (`benchmarks/reliability.py` runs them); the
default tier keeps one fast trial of each kind not covered elsewhere (SIGKILL-resume: tests/training).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from pac.config import DataConfig, StorageConfig
from pac.data.dataset import list_versions, open_dataset
from pac.data.ingest import ingest
from pac.data.schema import Episode
from pac.storage import StorageError, open_store
from safetensors.torch import load

from .conftest import Record, SmallDisk, ranks, run_to_end, run_until, train_command

if TYPE_CHECKING:
    from conftest import MlflowProcess, S3Server, WeedServer

STEPS = 30


def config(output: str, nproc: int = 1, steps: int = STEPS) -> dict:
    return {"preset": "tiny", "seed": 7, "objective": {"num_action_samples": 4},
            "train": {"steps": steps, "global_batch_size": 8, "micro_batch_size": 8 // nproc, "precision": "fp32",
                      "warmup_steps": 0, "lr": 1e-3, "log_every": 1, "checkpoint_every": 3, "keep_checkpoints": 2,
                      "output": output},
            "tracking": {"enabled": False}, "storage": {"secure": False}}  # the test S3 server speaks plain HTTP


def same_run(resumed: dict, reference: dict) -> str:
    """'' when a resumed run's remaining losses and final weights equal the uninterrupted run's, else why not."""
    done_before = STEPS - len(resumed["losses"])
    if not 0 <= done_before < STEPS:
        return f"resumed run reports {len(resumed['losses'])} steps"
    if resumed["losses"] != pytest.approx(reference["losses"][done_before:], rel=1e-6):
        return f"losses after resuming at step {done_before} differ"
    weights = [_weights(r["export"]) for r in (resumed, reference)]
    for name, value in weights[1].items():
        if not torch.allclose(weights[0][name], value, rtol=1e-6, atol=1e-7):
            return f"final weights differ in {name} (resumed at step {done_before})"
    return ""


def _weights(export: str) -> dict[str, torch.Tensor]:
    """The exported weights of a run, local or on S3 (read as bytes: safetensors, nothing unpickled)."""
    return load(open_store(export, StorageConfig(secure=False)).get_bytes("model.safetensors"))


@pytest.mark.reliability
@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.distributed)])
def test_sigkill_at_random_steps_then_resume_equals_the_uninterrupted_run(nproc: int, tmp_path: Path,
                                                                          record: Record) -> None:
    trials = 20
    ref = run_to_end(train_command(config(str(tmp_path / "ref"), nproc), tmp_path / "o_ref", nproc))
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    reference = ranks(tmp_path / "o_ref", nproc)[0]
    rng = random.Random(nproc)
    failures, resumed_from = [], []
    for t in range(trials):
        cmd = train_command(config(str(tmp_path / f"run{t}"), nproc), tmp_path / f"o{t}", nproc)
        killed, log = run_until(cmd, rng.randint(2, STEPS - 1))
        if not killed or (tmp_path / f"o{t}" / "rank0.json").exists():
            failures.append(f"trial {t}: the run ended before the kill\n{log[-1500:]}")
            continue
        done = run_to_end(cmd)
        if done.returncode != 0:
            failures.append(f"trial {t}: the resumed run failed\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
            continue
        result = ranks(tmp_path / f"o{t}", nproc)[0]
        resumed_from.append(STEPS - len(result["losses"]))
        if why := same_run(result, reference):
            failures.append(f"trial {t}: {why}")
    record(fault=f"SIGKILL of every rank at a random step ({nproc} rank{'s' if nproc > 1 else ''})",
           trials=trials, survived=trials - len(failures), outcome="resumed run equals the uninterrupted one",
           resumed_from=sorted(resumed_from))
    assert not failures, "\n".join(failures)


# -- the object store fails -------------------------------------------------------------------------------------


def _outage(server: WeedServer, seconds: float) -> None:
    """Kill the S3 server now and start it again (same endpoint, same data) after `seconds`, in the background."""
    server.kill()
    threading.Timer(seconds, server.start).start()


def _wait_up(server: WeedServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while server.proc is None:
        assert time.monotonic() < deadline, "the S3 server did not come back"
        time.sleep(0.1)


def ingest_trial(server: WeedServer, dataset: str, episodes: list[Episode], kill_at: int, down_s: float,
                 cache: Path) -> str:
    """Ingest while the server dies after `kill_at` episodes; returns the outcome ('published' or 'refused').

    Fails the test if a version is visible that is not whole: all episodes, every shard intact.
    """
    storage = StorageConfig(endpoint=server.info.endpoint, secure=False)

    def source() -> Iterator[Episode]:
        for i, ep in enumerate(episodes):
            if i == kill_at:
                _outage(server, down_s)
            yield ep

    try:
        ingest(source(), dataset, storage=storage, data=DataConfig(shard_mb=0.002), progress=False)
        outcome = "published"
    except StorageError:
        outcome = "refused"
    _wait_up(server)
    versions = list_versions(dataset, storage)
    assert versions == ([1] if outcome == "published" else []), (outcome, versions)
    if versions:
        ds = open_dataset(dataset, storage)
        ids = []
        for info in ds.manifest.shards:  # open_shard verifies each shard's checksum
            shard = ds.open_shard(info, cache)
            ids += [str(i) for i in shard["episode_ids"]]
            shard.close()
        assert sorted(ids) == sorted(ep.episode_id for ep in episodes)
    return outcome


@pytest.mark.s3
@pytest.mark.parametrize("trials", [1, pytest.param(12, marks=pytest.mark.reliability)])
def test_s3_server_killed_mid_ingest_publishes_the_whole_version_or_none(
        trials: int, restartable_s3: WeedServer, tmp_path: Path, record: Record,
        random_episodes: Callable[..., list[Episode]]) -> None:
    rng = random.Random(0)
    outcomes = []
    for t in range(trials):
        # Most outages end within the retries' ~8-15 s; every fourth outlasts them and the ingest must give up.
        down = 30.0 if t % 4 == 3 else rng.uniform(0.5, 4.0)
        outcomes.append(ingest_trial(restartable_s3, f"s3://faults/ingest{t}", random_episodes(8, t),
                                     rng.randint(1, 7), down, tmp_path / "cache"))
    record(fault="S3 server SIGKILLed mid-ingest, restarted after 0.5-4 s (or 30 s)", trials=trials,
           survived=trials, outcome=f"{outcomes.count('published')} whole versions published after retries, "
           f"{outcomes.count('refused')} ingests refused with StorageError and nothing visible")


@pytest.mark.s3
@pytest.mark.reliability  # the default tier's S3 outage is the ingest's, above
@pytest.mark.parametrize("trials", [8])
def test_s3_server_killed_mid_training_loses_no_checkpoint(trials: int, restartable_s3: WeedServer,
                                                           tmp_path: Path, record: Record) -> None:
    """The run writes its checkpoints to S3; the server dies at a random step and comes back. The run either
    rides it out or stops with a storage error; rerun, it resumes and ends exactly like an uninterrupted run."""
    ref = run_to_end(train_command(config(str(tmp_path / "ref")), tmp_path / "o_ref", 1))
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    reference = ranks(tmp_path / "o_ref", 1)[0]
    rng = random.Random(1)
    rode_out = 0
    for t in range(trials):
        output = f"s3://faults/run{t}"
        cmd = train_command(config(output), tmp_path / f"o{t}", 1)
        kill_at, down = rng.randint(4, STEPS - 4), (30.0 if t % 4 == 3 else rng.uniform(0.5, 4.0))
        fired = []

        def on_step(n: int, kill_at: int = kill_at, down: float = down, fired: list = fired) -> None:
            if n >= kill_at and not fired:
                fired.append(n)
                _outage(restartable_s3, down)

        run_until(cmd, STEPS + 1, on_step=on_step)  # never killed itself: it ends or fails on its own
        _wait_up(restartable_s3)
        first = (tmp_path / f"o{t}" / "rank0.json").exists()
        rode_out += first
        if not first:
            done = run_to_end(cmd)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert not (why := same_run(ranks(tmp_path / f"o{t}", 1)[0], reference)), f"trial {t}: {why}"
        _check_checkpoints(output)
    record(fault="S3 server SIGKILLed mid-training (checkpoints on S3), restarted after 0.5-4 s (or 30 s)",
           trials=trials, survived=trials, outcome=f"{rode_out} runs rode the outage out on retries, "
           f"{trials - rode_out} stopped with a storage error and resumed exactly")


def _check_checkpoints(output: str) -> None:
    """Every published checkpoint names only files that are there, at the size its manifest says."""
    import json

    store = open_store(output, StorageConfig(secure=False)).child("checkpoints")
    published = [d.rstrip("/") for d in store.list_dirs("") if store.exists(f"{d.rstrip('/')}/manifest.json")]
    assert published
    for step in published:
        manifest = json.loads(store.get_bytes(f"{step}/manifest.json"))
        for key, meta in manifest["files"].items():
            assert store.size(f"{step}/{key}") == meta["bytes"], f"{step}/{key}"


# -- the disk fills up ------------------------------------------------------------------------------------------


@pytest.mark.reliability  # the default tier's full disk is the shard cache's, below
def test_a_full_disk_stops_checkpointing_naming_the_path_and_the_last_checkpoint_resumes(
        small_disk: Callable[[int], SmallDisk], tmp_path: Path, record: Record) -> None:
    """One tiny checkpoint (~5 MB) fits on the 8 MB disk, the next does not."""
    disk = small_disk(8)
    output = disk.path / "run"
    cmd = train_command(config(str(output)), tmp_path / "o", 1)
    failed = run_to_end(cmd)
    assert failed.returncode != 0
    said = failed.stdout + failed.stderr
    assert f"StorageError: cannot write {output / 'checkpoints' / 'step_0000006'}" in said  # where, not a temp name
    assert "No space left on device (free space there" in said
    _check_checkpoints(str(output))  # the published checkpoint is whole, the failed one unpublished

    disk.resize(64)  # space freed: the rerun resumes from the checkpoint the full disk left
    done = run_to_end(cmd)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    reference = run_to_end(train_command(config(str(tmp_path / "ref")), tmp_path / "o_ref", 1))
    assert reference.returncode == 0
    assert not (why := same_run(ranks(tmp_path / "o", 1)[0], ranks(tmp_path / "o_ref", 1)[0])), why
    record(fault="disk full while writing a checkpoint (8 MB tmpfs)", trials=1, survived=1,
           outcome="named error; the last checkpoint whole; after freeing space the run resumed exactly")


@pytest.mark.s3
def test_a_full_cache_disk_fails_the_download_naming_the_path_and_keeps_no_partial_shard(
        small_disk: Callable[[int], SmallDisk], s3_bucket: str, record: Record,
        random_episodes: Callable[..., list[Episode]]) -> None:
    storage = StorageConfig(secure=False)
    ingest(random_episodes(40, 0, steps=2000), f"{s3_bucket}/big", storage=storage, data=DataConfig(shard_mb=0.4),
           progress=False)
    ds = open_dataset(f"{s3_bucket}/big", storage)
    assert sum(s.bytes for s in ds.manifest.shards) > 1024 * 1024
    cache = small_disk(1)
    with pytest.raises(StorageError, match=f"cannot write {cache.path / 'shards'}/.*No space left on device"):
        for info in ds.manifest.shards:
            ds.local_shard(info, cache.path)
    # What the full disk holds is whole: verified shards only, no temporary file.
    left = sorted((cache.path / "shards").iterdir())
    assert all(p.name.endswith(".npz") and p.stem in {s.sha256 for s in ds.manifest.shards} for p in left)
    cache.resize(16)
    for info in open_dataset(f"{s3_bucket}/big", storage).manifest.shards:
        ds.local_shard(info, cache.path)
    record(fault="disk full while caching dataset shards (1 MB tmpfs)", trials=1, survived=1,
           outcome="named error; only whole verified shards in the cache; after freeing space every shard loads")


# -- the tracking server fails ----------------------------------------------------------------------------------


@pytest.mark.mlflow
@pytest.mark.reliability  # the default tier's outage is tests/test_tracking.py's (a cut connection)
def test_mlflow_server_killed_mid_run_loses_no_metric(s3_server: S3Server, mlflow_process: Callable[..., MlflowProcess],
                                                      tmp_path: Path, record: Record) -> None:
    """The tracking server is SIGKILLed at a random step and started again (same database) ~15 s later: training
    goes on, the points logged meanwhile reach the run when it is back, the run ends FINISHED with its model."""
    from minio import Minio
    from mlflow.tracking import MlflowClient

    Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False).make_bucket("faults-mlflow")
    server = mlflow_process(tmp_path, s3_server, "faults-mlflow")
    server.start()
    trials, rng = 3, random.Random(2)
    try:
        for t in range(trials):
            cfg = config(str(tmp_path / f"run{t}"), steps=60)
            cfg["tracking"] = {"enabled": True, "uri": server.info.uri, "experiment": "faults",
                               "system_metrics": False}
            kill_at, fired = rng.randint(5, 50), []

            def on_step(n: int, kill_at: int = kill_at, fired: list = fired) -> None:
                if n >= kill_at and not fired:
                    fired.append(n)
                    server.stop(signal.SIGKILL)
                    threading.Thread(target=server.start, daemon=True).start()

            killed, log = run_until(train_command(cfg, tmp_path / f"o{t}", 1), 10**9, on_step=on_step)
            assert not killed and fired and (tmp_path / f"o{t}" / "rank0.json").exists(), log[-3000:]
            run_id = ranks(tmp_path / f"o{t}", 1)[0]["run_id"]
            client = MlflowClient(server.info.uri)
            assert client.get_run(run_id).info.status == "FINISHED"
            steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
            assert steps == list(range(1, 61)), f"trial {t}: steps {sorted(set(range(1, 61)) - set(steps))} lost"
    finally:
        server.stop()
    record(fault="MLflow server SIGKILLed mid-run, restarted (~15 s)", trials=trials, survived=trials,
           outcome="training went on; every metric point reached the run after the restart; run FINISHED")


# -- a pipeline step dies ---------------------------------------------------------------------------------------

_STEP_SCRIPT = """
import json, sys
from kfp.dsl import Dataset, Model
from pac.components import steps

dataset = Dataset(name="data", uri="", metadata={{"uri": {dataset!r}}})
model = Model(name="model", uri="", metadata={{}})
steps.pretrain.python_func(overrides={overrides!r}, dataset=dataset, output={output!r}, model=model)
print("MODEL", json.dumps(model.metadata))
"""


@pytest.mark.reliability
def test_a_killed_pretrain_step_rerun_resumes_from_its_last_checkpoint(
        tmp_path: Path, record: Record, random_episodes: Callable[..., list[Episode]]) -> None:
    """The KFP pretrain component, SIGKILLed at a random step (its pod evicted) and run again with the same
    arguments, as KFP's retry does: it resumes from the run's last checkpoint and exports the same weights as a
    run that was never killed."""
    import json
    import sys

    storage = StorageConfig(root=str(tmp_path / "store"))
    ref = ingest(random_episodes(12, 0, steps=50), "behaviour", storage=storage, progress=False)
    overrides = json.dumps({"preset": "tiny", "seed": 3, "objective": {"num_action_samples": 4},
                            "data": {"tasks": ["cartpole/balance"]},
                            "train": {"steps": STEPS, "global_batch_size": 8, "precision": "fp32",
                                      "warmup_steps": 0, "log_every": 1, "checkpoint_every": 3},
                            "tracking": {"enabled": False}})

    def step_command(output: Path) -> list[str]:
        return [sys.executable, "-c", _STEP_SCRIPT.format(dataset=str(ref), overrides=overrides, output=str(output))]

    whole = run_to_end(step_command(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-2000:]
    trials, rng, resumed_at = 3, random.Random(3), []
    for t in range(trials):
        cmd = step_command(tmp_path / f"killed{t}")
        killed, log = run_until(cmd, rng.randint(4, STEPS - 2))
        assert killed, log[-2000:]
        again = run_to_end(cmd)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        said = again.stdout + again.stderr
        assert "resumed from" in said, said[-2000:]
        resumed_at.append(int(said.split("resumed from", 1)[1].split("at step", 1)[1].split()[0]))
        a, b = (_weights(str(p / "export")) for p in (tmp_path / f"killed{t}", tmp_path / "whole"))
        assert all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in b), f"trial {t}: weights differ"
    record(fault="KFP pretrain step SIGKILLed at a random step, rerun with the same arguments", trials=trials,
           survived=trials, outcome=f"each rerun resumed (from steps {sorted(resumed_at)}) and exported the weights "
           "of the run that was never killed")
