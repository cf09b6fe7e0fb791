"""Fault-injection helpers: an outcome log for the reliability report, and a trainer that can be killed at a step.

Every trial's outcome goes to the JSON-lines file named by `$PAC_RELIABILITY_REPORT` (when set), from which
`benchmarks/reliability.py` writes docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# The fuzz tests' case counts: a few dozen per format, the same every run, in the default tier; hundreds, fresh
# each run, for the reliability report (benchmarks/reliability.py sets PAC_HYPOTHESIS_PROFILE=reliability).
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("default-tier", max_examples=25, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_SLOW_OK)
settings.register_profile("reliability", max_examples=300, deadline=None, database=None,
                          suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("PAC_HYPOTHESIS_PROFILE", "default-tier"))

DRIVER = Path(__file__).parents[1] / "training" / "driver.py"
_STEP = re.compile(r"step (\d+)/\d+ ")

Record = Callable[..., None]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    """record(fault=..., trials=..., survived=..., **details): one row of the reliability report."""

    def write(**row: Any) -> None:
        path = os.environ.get("PAC_RELIABILITY_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"test": request.node.nodeid, **row}) + "\n")

    return write


def driver_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **(extra or {})}


def train_command(cfg: dict, out: Path, nproc: int) -> list[str]:
    """The training driver (tests/training/driver.py) on `nproc` ranks."""
    if nproc == 1:
        return [sys.executable, str(DRIVER), "train", json.dumps(cfg), str(out)]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(port), str(DRIVER), "train", json.dumps(cfg), str(out)]


def run_until(cmd: list[str], step: int, *, on_step: Callable[[int], None] | None = None,
              timeout: float = 600.0) -> tuple[bool, str]:
    """Run `cmd` and SIGKILL it with every process it started (every rank) once it logs `step`.

    Returns (killed, output); killed is False when the run ended first. `on_step(n)` sees every logged step
    (the S3 fault trials stop the server from it) without killing anything unless it raises.
    """
    proc = subprocess.Popen(cmd, env=driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    killed = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = _STEP.search(line)
            if m is None:
                continue
            n = int(m.group(1))
            if on_step is not None:
                on_step(n)
            if n >= step:
                kill_tree(proc)
                killed = True
                break
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    return killed, "".join(lines)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every descendant at once, as a lost node: torchrun starts its ranks in sessions of
    their own, so killing its process group would leave them training."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait()


def run_to_end(cmd: list[str], timeout: float = 600.0) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=driver_env(), capture_output=True, text=True, timeout=timeout)


def ranks(out: Path, nproc: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


class SmallDisk:
    """A size-limited tmpfs mounted for one test: the disk that fills up."""

    def __init__(self, path: Path, mib: int) -> None:
        self.path = path
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill up (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")

    def resize(self, mib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mib}m", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], SmallDisk]]:
    """small_disk(MiB) mounts a tmpfs of that size under the test's temporary directory."""
    disks: list[SmallDisk] = []

    def mount(mib: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", mib))
        return disks[-1]

    yield mount
    for disk in disks:
        disk.unmount()
