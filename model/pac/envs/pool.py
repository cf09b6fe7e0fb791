"""Environments stepped in worker processes: one rollout's environments spread over the machine's cores.

The rollout (`pac.evaluation.iter_rollout`) asks its `ActionSource` for the actions of every running
environment in one batched call, then steps the environments. In one process the stepping is serial; an
`EnvPool` with workers deals the environments out to `workers` processes, sends each its share of the
actions at once and collects the results, so the physics of both cores' environments runs side by side
while the policy's forward pass keeps the main process.

    pool = EnvPool(task, seeds[:num_envs], episode_steps=1000, workers=2)
    obs = pool.reset(slot, seed)
    results = pool.step({slot: action, ...})      # {slot: (obs, reward, discount, done)}

`pool.envs[slot]` is what a source sees of an environment: `RemoteEnv`, the same static attributes as
`Env` (spec, instruction, action bounds, clip, t) without the simulator, which lives in the worker. A
source that reads simulator state (the experts read `env.physics`) steps its environments in-process
(`workers=0`, a pool of real `Env`s) — see `pac.evaluation.policies.ActionSource.reads_simulator`.

Results are identical whatever the number of workers: every environment is the same `Env`, reset with
the same seeds. A worker that crashes, raises or stops answering for `timeout_s` fails the rollout with
the task and episode seed it was running; every worker is terminated and joined on close, error or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from pac.config import IMAGE_SIZE
from pac.envs.env import Env, Obs, TaskActions, make_envs
from pac.envs.registry import TaskSpec, get_task
from pac.envs.rendering import RenderingUnavailable

log = logging.getLogger(__name__)

StepResult = tuple[Obs, float, float, bool]  # observation, reward, discount, done


class EnvWorkerError(RuntimeError):
    """An environment worker crashed, raised or stopped answering (the message names task and seed)."""


@dataclasses.dataclass
class RemoteEnv(TaskActions):
    """What a batched policy and the rollout see of an environment that lives in a worker process."""

    spec: TaskSpec
    action_low: np.ndarray
    action_high: np.ndarray
    control_timestep: float
    proprio_dim: int
    t: int = 0  # control steps of the current episode, counted by the pool


def _worker(conn: Connection, task: str, seeds: list[int], episode_steps: int, vision: bool,
            image_size: int) -> None:
    """A worker's loop: build its environments, then answer reset / step / render until told to close."""
    envs: list[Env] = []
    current: int | None = None  # the environment being worked on, named in an error report
    try:
        envs = make_envs(task, seeds, episode_steps=episode_steps, vision=vision, image_size=image_size)
        conn.send(("ok", [(e.action_low, e.action_high, e.control_timestep, e.proprio_dim) for e in envs]))
        while True:
            command, payload = conn.recv()
            if command == "close":
                break
            if command == "reset":
                current, seed = payload
                conn.send(("ok", envs[current].reset(seed=seed)))
            elif command == "step":
                out = []
                for current, action in payload:
                    out.append((current, *envs[current].step(action)))
                conn.send(("ok", out))
            elif command == "render":
                current, height, width = payload
                conn.send(("ok", envs[current].render(height, width)))
    except (EOFError, KeyboardInterrupt):  # the rollout went away: nothing to report to
        pass
    except BaseException as e:  # reported to the rollout, which raises it with the task and seed
        rendering = isinstance(e, RenderingUnavailable)
        message = str(e) if rendering else f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        with contextlib.suppress(OSError):
            conn.send(("error", (current, rendering, message)))
    finally:
        for env in envs:
            env.close()
        conn.close()


class EnvPool:
    """`len(seeds)` environments of one task, stepped in `workers` processes (0: in this process).

    Slot i's environment is created with `seeds[i]` (its episodes are reseeded by `reset` anyway) and lives
    in worker `i % workers`.
    """

    def __init__(self, task: str, seeds: Sequence[int], *, episode_steps: int, vision: bool = False,
                 image_size: int = IMAGE_SIZE, workers: int = 0, timeout_s: float = 300.0) -> None:
        self.spec = get_task(task)
        self.timeout_s = timeout_s
        self.workers = min(workers, len(seeds))
        self._episode_seed = list(seeds)  # the seed each slot's current episode started from (for errors)
        self._local: list[Env] = []
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        if self.workers == 0:
            self._local = make_envs(task, seeds, episode_steps=episode_steps, vision=vision,
                                    image_size=image_size)
            self.envs: list[Env | RemoteEnv] = list(self._local)
            return
        # forkserver: workers fork from a clean server process with pac.envs imported once, never from this
        # process, whose MuJoCo/OpenGL/OpenMP runtime is not safe to reuse in a fork (as in pac.data.generate).
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["pac.envs"])
        try:
            for w in range(self.workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, daemon=True, name=f"pac-env-{task}-{w}",
                                   args=(child, task, list(seeds[w::self.workers]), episode_steps, vision,
                                         image_size))
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            info: list[Any] = [None] * len(seeds)
            for w in range(self.workers):
                for j, row in enumerate(self._receive(w)):
                    info[w + j * self.workers] = row
            self.envs = [RemoteEnv(self.spec, low, high, dt, p) for low, high, dt, p in info]
        except BaseException:
            self.close()
            raise

    def _where(self, slot: int) -> tuple[int, int]:
        return slot % self.workers, slot // self.workers  # worker, index within the worker

    def _receive(self, worker: int) -> Any:
        conn, proc = self._conns[worker], self._procs[worker]
        slots = range(worker, len(self._episode_seed), self.workers)
        seeds = ", ".join(str(self._episode_seed[s]) for s in slots)
        where = f"{self.spec.id}: environment worker {proc.name} (episode seeds {seeds})"
        if not conn.poll(self.timeout_s):
            raise EnvWorkerError(f"{where} gave no answer for {self.timeout_s:.0f} s (eval.env_timeout_s); "
                                 "it was stopped")
        try:
            status, payload = conn.recv()
        except (EOFError, OSError) as e:
            proc.join(5)
            raise EnvWorkerError(f"{where} died (exit code {proc.exitcode})") from e
        if status == "error":
            index, rendering, message = payload
            if rendering:  # the rollout handles this one (eval.render_errors), as for an env in this process
                raise RenderingUnavailable(message)
            if index is not None:
                slot = worker + index * self.workers
                where = f"{self.spec.id}: episode seed {self._episode_seed[slot]} (worker {proc.name})"
            raise EnvWorkerError(f"{where}: {message}")
        return payload

    def reset(self, slot: int, seed: int) -> Obs:
        """Start an episode in `slot` from `seed`."""
        self._episode_seed[slot] = seed
        if self.workers == 0:
            return self._local[slot].reset(seed=seed)
        w, i = self._where(slot)
        self._conns[w].send(("reset", (i, seed)))
        obs = self._receive(w)
        self.envs[slot].t = 0
        return obs

    def step(self, actions: Mapping[int, np.ndarray]) -> dict[int, StepResult]:
        """One control step of every slot in `actions`, the workers' shares side by side."""
        if self.workers == 0:
            return {slot: self._local[slot].step(a) for slot, a in actions.items()}
        shares: dict[int, list[tuple[int, np.ndarray]]] = {}
        for slot, action in actions.items():
            w, i = self._where(slot)
            shares.setdefault(w, []).append((i, action))
        for w, share in shares.items():
            self._conns[w].send(("step", share))
        out: dict[int, StepResult] = {}
        for w in shares:
            for i, obs, reward, discount, done in self._receive(w):
                slot = w + i * self.workers
                self.envs[slot].t += 1
                out[slot] = (obs, reward, discount, done)
        return out

    def render(self, slot: int, height: int, width: int) -> np.ndarray:
        if self.workers == 0:
            return self._local[slot].render(height, width)
        w, i = self._where(slot)
        self._conns[w].send(("render", (i, height, width)))
        return self._receive(w)

    def close(self) -> None:
        """Close every environment and stop every worker (never leaves a process behind)."""
        for env in self._local:
            env.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("close", None))
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._local, self._conns, self._procs = [], [], []
