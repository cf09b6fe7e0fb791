"""`Env`: one dm_control task behind a small, obvious API.

    env = make_env("cartpole/balance", seed=0, episode_steps=250, vision=True)
    obs = env.reset()                         # {"proprio": (P,) float32, "image": (H, W, 3) uint8 or None}
    obs, reward, discount, done = env.step(action)   # action within [env.action_low, env.action_high]

The wrapper owns the time limit (dm_control's own limit is disabled), so `discount` is dm_control's:
1.0 while the episode runs, 0.0 only at a true terminal state; reaching `episode_steps` ends the
episode with discount 1.0 (a truncation, which training bootstraps through). Planners and scripted
experts read privileged state through `env.physics` and `env.dm_env.task`.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np

from pac.config import IMAGE_SIZE
from pac.envs.registry import TaskSpec, get_task
from pac.envs.rendering import FastCamera, import_failed


class Obs(TypedDict):
    """What a policy sees at one step."""

    proprio: np.ndarray  # (P,) float32: the task's observation dict flattened in `TaskSpec.obs_keys` order
    image: np.ndarray | None  # (image_size, image_size, 3) uint8 from `TaskSpec.camera` when vision is on


def _ik_retry_filter(record: logging.LogRecord) -> bool:
    """The arm's reset places the hand by inverse kinematics and retries from another pose when a solve does not
    converge (dm_control's initializer); each failed try logs a warning, ~75 of them per self-improvement run,
    though nothing is wrong. They become debug records (shown under `pac -v`)."""
    if not str(record.msg).startswith("Failed to converge"):  # dm_control.utils.inverse_kinematics
        return True
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger("absl").isEnabledFor(logging.DEBUG)


def _dm_control(module: str) -> Any:
    """Import a dm_control module; its first import loads the MUJOCO_GL backend, which may fail."""
    try:
        imported = importlib.import_module(f"dm_control.{module}")
    except (ImportError, RuntimeError, AttributeError, OSError) as e:
        raise import_failed(e) from e
    # dm_control logs through the "absl" logger; adding the same filter again is a no-op
    logging.getLogger("absl").addFilter(_ik_retry_filter)
    return imported


def load_dm_env(spec: TaskSpec, seed: int) -> Any:
    """Build the underlying dm_control environment with no time limit (the `Env` counts steps)."""
    if spec.family == "suite":
        domain, task = spec.env_name.split("/")
        return _dm_control("suite").load(domain, task, task_kwargs={"random": seed, "time_limit": float("inf")})
    manipulation = _dm_control("manipulation")  # importing it fills its task registry
    if spec.env_name not in manipulation.ALL:
        raise ValueError(f"{spec.id}: dm_control.manipulation has no task {spec.env_name!r}")
    task = _dm_control("manipulation.shared.registry").get_constructor(spec.env_name)()
    # Singleton buffer dims stripped: (1, 6, 2) -> (6, 2), same flattened values, simpler shapes.
    return _dm_control("composer").Environment(task, time_limit=float("inf"), random_state=seed,
                                               strip_singleton_obs_buffer_dim=True)


class TaskActions:
    """What a batched policy reads of an environment: its task and action bounds (and what follows from them).

    `Env` and the worker-process stand-in `pac.envs.pool.RemoteEnv` share it, so both answer alike.
    """

    spec: TaskSpec
    action_low: np.ndarray  # (A,) float32
    action_high: np.ndarray  # (A,) float32

    @property
    def instruction(self) -> str:
        """The natural-language task description fed to the language encoder."""
        return self.spec.instruction

    @property
    def action_dim(self) -> int:
        return int(self.action_low.shape[0])

    def clip(self, action: np.ndarray) -> np.ndarray:
        """`action` clipped to the bounds, float32: exactly what `Env.step` executes."""
        return np.clip(np.asarray(action, np.float32), self.action_low, self.action_high)


class Env(TaskActions):
    """A registered task with a control-step time limit and optional camera observations.

    Attributes:
        spec: the registry entry (instruction, success rule, maximum return).
        action_low, action_high: (A,) float32 action bounds from dm_control's action spec.
        proprio_dim: P, the length of `Obs["proprio"]`.

    Args:
        spec: the registry entry.
        seed: seeds the task's initial-state distribution; `reset(seed=...)` reseeds per episode.
        episode_steps: time limit in control steps.
        vision: also return camera frames in `Obs["image"]`.
        image_size: side of the square camera frames.
    """

    def __init__(self, spec: TaskSpec, *, seed: int, episode_steps: int, vision: bool = False,
                 image_size: int = IMAGE_SIZE) -> None:
        if episode_steps < 1:
            raise ValueError(f"episode_steps must be >= 1, got {episode_steps}")
        self.spec = spec
        self.episode_steps = episode_steps
        self.vision = vision
        self.image_size = image_size
        self._env = load_dm_env(spec, seed)
        aspec = self._env.action_spec()
        self.action_low = np.broadcast_to(np.asarray(aspec.minimum, np.float32), aspec.shape).copy()
        self.action_high = np.broadcast_to(np.asarray(aspec.maximum, np.float32), aspec.shape).copy()
        obs_spec = self._env.observation_spec()
        missing = [k for k in spec.obs_keys if k not in obs_spec]
        if missing:
            raise RuntimeError(f"{spec.id}: dm_control has no observation {missing} (has {list(obs_spec)}); "
                               "the registry's obs_keys no longer match this dm_control version")
        self.proprio_dim = sum(int(np.prod(obs_spec[k].shape)) for k in spec.obs_keys)
        self._cameras: dict[tuple[int, int], FastCamera] = {}
        self._t = 0
        self._done = True

    @property
    def t(self) -> int:
        """Control steps taken in the current episode."""
        return self._t

    @property
    def control_timestep(self) -> float:
        """Seconds of simulated time per control step."""
        return float(self._env.control_timestep())

    @property
    def dm_env(self) -> Any:
        """The wrapped dm_control environment (`.task` holds task internals, e.g. the arm's target)."""
        return self._env

    @property
    def physics(self) -> Any:
        """The dm_control `Physics`: privileged state for experts and planners (`get_state`/`set_state`)."""
        return self._env.physics

    def reset(self, seed: int | None = None) -> Obs:
        """Start an episode; with `seed`, its initial state depends on that seed alone."""
        if seed is not None:
            self._reseed(seed)
        ts = self._env.reset()
        self._t, self._done = 0, False
        return self._obs(ts.observation)

    def step(self, action: np.ndarray) -> tuple[Obs, float, float, bool]:
        """Apply one action (clipped to the bounds) for one control step.

        Returns:
            (observation, reward, discount, done): `discount` is 0.0 only at a true terminal state;
            `done` is also True once `episode_steps` steps have been taken.
        """
        if self._done:
            raise RuntimeError("the episode is over (or was never started): call reset() first")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_low.shape:
            raise ValueError(f"{self.spec.id}: action has shape {action.shape}, expected {self.action_low.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.spec.id}: action contains NaN or inf: {action}")
        ts = self._env.step(np.clip(action, self.action_low, self.action_high))
        self._t += 1
        terminal = ts.last()
        self._done = terminal or self._t >= self.episode_steps
        discount = float(ts.discount) if terminal else 1.0
        return self._obs(ts.observation), float(ts.reward), discount, self._done

    def render(self, height: int | None = None, width: int | None = None) -> np.ndarray:
        """An RGB frame (H, W, 3) uint8 of the current state from the task camera (videos use larger sizes).

        Raises:
            RenderingUnavailable: no OpenGL backend works (the message says how to enable EGL/OSMesa).
        """
        size = (height or self.image_size, width or height or self.image_size)
        if size not in self._cameras:
            self._cameras[size] = FastCamera(self.physics, size[0], size[1], self.spec.camera)
        return self._cameras[size].render()

    def _reseed(self, seed: int) -> None:
        # Reseed the task's own RandomState in place: dm_control draws initial states from it.
        rng = self._env.task.random if self.spec.family == "suite" else self._env.random_state
        rng.seed(seed)

    def close(self) -> None:
        """Release the GL context and physics."""
        self._cameras.clear()
        self._env.close()

    def _obs(self, observation: dict[str, Any]) -> Obs:
        proprio = np.concatenate([np.asarray(observation[k], np.float32).ravel() for k in self.spec.obs_keys])
        return Obs(proprio=proprio, image=self.render() if self.vision else None)


def make_env(task_id: str, *, seed: int, episode_steps: int, vision: bool = False,
             image_size: int = IMAGE_SIZE) -> Env:
    """Create the environment for a registered task id (see `Env`).

    Raises:
        UnknownTaskError: the id is not registered (the message lists the known tasks).
    """
    return Env(get_task(task_id), seed=seed, episode_steps=episode_steps, vision=vision, image_size=image_size)


def make_envs(task_id: str, seeds: Sequence[int], *, episode_steps: int, vision: bool = False,
              image_size: int = IMAGE_SIZE) -> list[Env]:
    """One environment per seed, as `make_env` would build each: the first is built, the others are copies of
    it with their own seed, because compiling a model from its MJCF costs ~6x copying it (70-90 ms against
    10-15 ms for a suite task), most of a short rollout's time (docs/benchmarks.md). dm_control cannot copy
    composer tasks with attached entities (the arm): those are built one by one.
    """
    if not seeds:
        return []
    first = make_env(task_id, seed=seeds[0], episode_steps=episode_steps, vision=vision, image_size=image_size)
    envs = [first]
    for seed in seeds[1:]:
        if first.spec.family == "suite":
            env = copy.deepcopy(first)  # never reset or rendered yet: no episode or GL state to carry over
            env._reseed(seed)
        else:  # composer: dm_control refuses to copy elements with attachments
            env = make_env(task_id, seed=seed, episode_steps=episode_steps, vision=vision, image_size=image_size)
        envs.append(env)
    return envs
