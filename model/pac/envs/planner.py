"""A sampling-based MPC expert (MPPI) on a private copy of the simulator.

Every control step the planner copies the real physics state into its own `Physics` (same model,
separate data, so the episode is never disturbed), rolls out `samples` perturbed copies of its
current action plan for `horizon` control steps through the task's own `before_step`/`step`/
`get_reward` (exactly what `Env.step` runs), and replaces the plan by the return-weighted average
(Williams et al. 2017, "Information theoretic MPC"). The first action is executed; the rest of the
plan, shifted by one step, warm-starts the next step.

Perturbations are drawn at a few knots and linearly interpolated along the horizon: smooth action
sequences explore useful motions with far fewer samples than per-step white noise. Weights use
returns normalised by their spread, so one temperature fits tasks with different reward scales.

Cost: samples x horizon simulated control steps per real step. On one core that is ~2-30 s per
250-step episode, depending on the embodiment (the physics step dominates, not Python).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pac.envs.env import Env, Obs
from pac.envs.policies import Policy
from pac.envs.registry import TaskSpec


@dataclass(frozen=True)
class PlannerSettings:
    """MPPI hyper-parameters of one task's expert.

    Attributes:
        horizon: planning horizon in control steps.
        samples: rollouts per control step (one of them is the unperturbed plan).
        knots: perturbation knots along the horizon, linearly interpolated.
        noise_std: perturbation standard deviation, a fraction of half the action range.
        temperature: softmax temperature on returns normalised by their standard deviation.
        repeat: control steps each plan entry is held. The plan then spans `horizon x repeat`
            steps at the cost of `horizon`, and the planner replans every `repeat` steps: long
            look-ahead for tasks with a fine control timestep (a swing-up takes seconds).
        shaping: extra planning reward on the simulated physics (dense guidance for sparse
            task rewards); the environment's reward is unchanged.
    """

    horizon: int = 20
    samples: int = 32
    knots: int = 5
    noise_std: float = 0.5
    temperature: float = 0.1
    repeat: int = 1
    shaping: Callable[[Any], float] | None = None


def _spin_shaping(physics: Any) -> float:
    # finger/spin pays 1 only at hinge velocity <= -15 rad/s: reward the speed itself, also beyond the
    # threshold (capped at 3x), so the plan builds a margin that outlasts the spinner's damping.
    return float(np.clip(-physics.hinge_velocity() / 15.0, -1.0, 3.0))


def _catch_shaping(physics: Any) -> float:
    # ball_in_cup pays 1 only with the ball inside the cup: reward bringing it close (0.5 m margin).
    distance = float(np.linalg.norm(physics.ball_to_target()))
    return 0.5 * max(0.0, 1.0 - distance / 0.5)


def _turn_shaping(physics: Any) -> float:
    # finger/turn pays 1 only with the spinner's tip inside the target: reward bringing it close, so a plan that
    # turns the spinner towards a target beyond the horizon's reach is told apart from one that does nothing.
    return 0.5 * max(0.0, 1.0 - max(0.0, float(physics.dist_to_target())) / 0.5)


_DEFAULT = PlannerSettings()
# Per-task overrides, chosen by measured returns (docs/tasks.md); every other task uses _DEFAULT.
# knots == horizon is per-step (white) noise: the tasks that need quick reactive corrections
# (flicking the spinner, catching the ball) plan better with it.
SETTINGS: dict[str, PlannerSettings] = {
    "finger/spin": replace(_DEFAULT, knots=20, noise_std=1.0, shaping=_spin_shaping),
    "ball_in_cup/catch": replace(_DEFAULT, horizon=30, knots=30, repeat=2, shaping=_catch_shaping),
    # Getting up from a fallen start needs ~1 s of look-ahead: 20 entries held 2 steps each.
    "walker/stand": replace(_DEFAULT, repeat=2),
    "finger/turn_easy": replace(_DEFAULT, shaping=_turn_shaping),
}


class MPPIPlanner(Policy):
    """Model-predictive path integral control on a copy of the task's physics.

    Args:
        settings: the planner's hyper-parameters.
    """

    name = "mppi"

    def __init__(self, settings: PlannerSettings) -> None:
        self.settings = settings

    def reset(self, env: Env, seed: int) -> None:
        super().reset(env, seed)
        if env.spec.family != "suite":
            raise ValueError(f"{env.spec.id}: the MPPI expert plans only Control Suite tasks")
        s = self.settings
        # share_model: same (possibly per-episode randomised) model, separate MjData.
        self._sim = env.physics.copy(share_model=True)
        self._task = env.dm_env.task
        self._n_sub = max(1, round(env.control_timestep / env.physics.model.opt.timestep))
        self._low = env.action_low.astype(np.float64)
        self._high = env.action_high.astype(np.float64)
        self._plan = np.zeros((s.horizon, env.action_dim))  # (H, A)
        # (H, K) linear interpolation from knots to steps.
        pos = np.linspace(0, s.knots - 1, s.horizon)
        self._interp = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(s.knots)[None, :]))
        self._held = 0  # further control steps the current action is still held for
        self._action = np.zeros(env.action_dim, np.float32)

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        if self._held > 0:
            self._held -= 1
            return self._action
        s = self.settings
        state = env.physics.get_state()
        half_range = (self._high - self._low) / 2
        knots = self.rng.normal(size=(s.samples, s.knots, len(self._low))) * s.noise_std * half_range  # (N, K, A)
        noise = np.einsum("hk,nka->nha", self._interp, knots)  # (N, H, A)
        noise[0] = 0.0  # keep the current plan itself among the candidates
        candidates = np.clip(self._plan[None] + noise, self._low, self._high)  # (N, H, A)
        returns = np.array([self._rollout(state, c) for c in candidates])  # (N,)
        spread = max(float(returns.std()), 1e-6)
        weights = np.exp((returns - returns.max()) / (s.temperature * spread))
        self._plan = np.einsum("n,nha->ha", weights / weights.sum(), candidates)
        self._action = self._plan[0].astype(np.float32)
        self._plan = np.concatenate([self._plan[1:], self._plan[-1:]])
        self._held = s.repeat - 1
        return self._action

    def _rollout(self, state: np.ndarray, actions: np.ndarray) -> float:
        sim, task, shaping = self._sim, self._task, self.settings.shaping
        sim.set_state(state)
        sim.forward()  # derived quantities for the restored state: dm_control's Euler step assumes them
        total = 0.0
        for a in actions:
            for _ in range(self.settings.repeat):
                # The same sequence as dm_control's Environment.step.
                task.before_step(a, sim)
                sim.step(self._n_sub)
                task.after_step(sim)
                total += task.get_reward(sim)
                if shaping is not None:
                    total += shaping(sim)
        return total


def make_planner(spec: TaskSpec) -> MPPIPlanner:
    """The MPPI expert with the task's settings."""
    return MPPIPlanner(SETTINGS.get(spec.id, _DEFAULT))
