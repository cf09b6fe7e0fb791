"""The real `helm` and `kubectl` binaries (.ci/tools puts them in .tools/bin; CI's set-up runs it)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def k8s_tool() -> Callable[..., subprocess.CompletedProcess[str]]:
    """run(name, *args, check=True): one of the real binaries; missing ones fail the test, never skip it."""

    def run(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        path = ROOT / ".tools" / "bin" / name
        found = str(path) if path.exists() else shutil.which(name)
        if not found:
            pytest.fail(f"no {name} binary: run .ci/tools (CI's .ci/setup does)")
        return subprocess.run([found, *args], capture_output=True, text=True, check=check, timeout=120)

    return run
