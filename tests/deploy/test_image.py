"""The project image, built for real with podman or docker (scripts/build-image), then run: the CLI answers as
the image's non-root user, a dataset is generated and a few training steps run inside it, headless MuJoCo
renders. Minutes, and it needs a container engine:  .venv/bin/python -m pytest -m image
(on a machine without a registry: scripts/podman-setup, and set PAC_IMAGE_BUILD_ARGS, e.g.
"--debootstrap --wheels /opt/wheels --ca /etc/ssl/certs/ca-certificates.crt")."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pac
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.image


@pytest.fixture(scope="module")
def image() -> tuple[str, str]:
    """(engine, image reference) after `scripts/build-image`."""
    args = shlex.split(os.environ.get("PAC_IMAGE_BUILD_ARGS", ""))
    build = subprocess.run([str(ROOT / "scripts" / "build-image"), *args], capture_output=True, text=True,
                           timeout=3600, cwd=ROOT)
    assert build.returncode == 0, build.stderr[-3000:]
    engine = build.stderr.split("build-image: ", 1)[1].split()[0]
    ref = build.stdout.strip().splitlines()[-1]
    assert ref.endswith(pac.image_ref().split("/")[-1])  # the tag the KFP components and the chart use
    return engine, ref


def run(image: tuple[str, str], *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    engine, ref = image
    env = {**os.environ}
    conf = ROOT / ".tools" / "containers" / "containers.conf"
    if engine == "podman" and conf.exists():
        env.setdefault("CONTAINERS_CONF", str(conf))
    cmd = [engine, "run", "--rm", *(["--entrypoint", entrypoint] if entrypoint else []), ref, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


def test_the_cli_is_the_entrypoint_and_runs_as_a_non_root_user(image: tuple[str, str]) -> None:
    out = run(image, "--version")
    assert out.returncode == 0 and pac.__version__ in out.stdout
    assert run(image, "-u", entrypoint="id").stdout.strip() == "1000"
    assert "pipeline" in run(image, "--help").stdout


def test_generates_data_and_trains_inside_the_image(image: tuple[str, str]) -> None:
    script = ("set -e; pac data generate --dataset d --generate.tasks cartpole/balance "
              "--generate.episodes_per_policy 1 --generate.episode_steps 50 --no-progress; "
              "pac train --data.dataset d --train.steps 5 --train.output run --tracking.enabled false")
    out = run(image, "-c", script, entrypoint="sh")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trained 5 steps" in out.stdout


def test_headless_rendering_and_the_mlflow_server_are_in_the_image(image: tuple[str, str]) -> None:
    code = ("from pac.envs.env import make_env; e = make_env('cartpole/balance', seed=0, episode_steps=5, "
            "vision=True); print(e.reset(0)['image'].shape)")
    out = run(image, "-c", code, entrypoint="python")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(3, " in out.stdout or ", 3)" in out.stdout
    assert run(image, "server", "--help", entrypoint="mlflow").returncode == 0
    assert run(image, "-c", "import psycopg2, pymysql", entrypoint="python").returncode == 0
