"""Expert controllers: hand-written where the physics admits a classical solution, MPPI elsewhere.

Experts read privileged simulator state (`env.physics`, the task's target), which the learner
never sees; their job is to produce high-return demonstrations, not to be learnable policies.

- LQR: the dynamics are linearised by central finite differences of one *control* step (all
  physics substeps, whatever the integrator: cartpole uses RK4, which `mjd_transitionFD` refuses)
  around the goal configuration, and the discrete Riccati equation is iterated to a fixed point.
- Swing-up: energy shaping pumps the pendulum's energy towards that of the upright rest state,
  then the LQR catches it (Astrom & Furuta 2000).
- Reaching: operational-space PD through the geometric Jacobian (`mj_jac`), or damped
  least-squares inverse kinematics for the velocity-controlled Jaco arm.
- Everything else: `pac.envs.planner.MPPIPlanner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mujoco
import numpy as np

from pac.envs.env import Env, Obs
from pac.envs.planner import make_planner
from pac.envs.policies import Policy
from pac.envs.registry import TaskSpec


def n_substeps(env: Env) -> int:
    """Physics steps per control step."""
    return max(1, round(env.control_timestep / env.physics.model.opt.timestep))


def linearize(model: Any, qpos0: np.ndarray, n_sub: int, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Discrete-time linearisation x' = A x + B u of one control step around (qpos0, qvel=0, ctrl=0).

    The state is x = (qpos - qpos0, qvel) in tangent space (nv + nv); central differences over
    `n_sub` physics steps of the model's own integrator.

    Args:
        model: a `mujoco.MjModel`.
        qpos0: the configuration to linearise around.
        n_sub: physics steps per control step.
        eps: finite-difference step.

    Returns:
        A (2nv, 2nv) and B (2nv, nu).
    """
    data = mujoco.MjData(model)
    nv, nu = model.nv, model.nu

    def f(dx: np.ndarray, du: np.ndarray) -> np.ndarray:
        mujoco.mj_resetData(model, data)
        data.qpos[:] = qpos0
        mujoco.mj_integratePos(model, data.qpos, dx[:nv], 1.0)
        data.qvel[:] = dx[nv:]
        data.ctrl[:] = du
        mujoco.mj_step(model, data, n_sub)
        dq = np.zeros(nv)
        mujoco.mj_differentiatePos(model, dq, 1.0, qpos0, data.qpos)
        return np.concatenate([dq, data.qvel])

    a = np.zeros((2 * nv, 2 * nv))
    b = np.zeros((2 * nv, nu))
    zx, zu = np.zeros(2 * nv), np.zeros(nu)
    for i in range(2 * nv):
        e = np.zeros(2 * nv)
        e[i] = eps
        a[:, i] = (f(e, zu) - f(-e, zu)) / (2 * eps)
    for j in range(nu):
        e = np.zeros(nu)
        e[j] = eps
        b[:, j] = (f(zx, e) - f(zx, -e)) / (2 * eps)
    return a, b


def dlqr(a: np.ndarray, b: np.ndarray, q: np.ndarray, r: np.ndarray, iters: int = 100_000,
         tol: float = 1e-10) -> np.ndarray:
    """Infinite-horizon discrete LQR gain K (u = -K x) by Riccati iteration to a fixed point.

    Raises:
        RuntimeError: the iteration did not converge (the pair (A, B) is not stabilisable).
    """
    p = q.copy()
    for _ in range(iters):
        k = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
        p_next = q + a.T @ p @ (a - b @ k)
        if np.max(np.abs(p_next - p)) <= tol * max(1.0, float(np.max(np.abs(p)))):
            return np.linalg.solve(r + b.T @ p_next @ b, b.T @ p_next @ a)
        p = p_next
    raise RuntimeError("discrete Riccati iteration did not converge")


def wrap_angle(x: float) -> float:
    """Angle in [-pi, pi)."""
    return (x + np.pi) % (2 * np.pi) - np.pi


class LQRBalance(Policy):
    """LQR around the upright configuration qpos=0 (cartpole: cart centred, pole up; pendulum: up).

    Args:
        q_diag: state cost diagonal, (qpos..., qvel...).
        r: control cost (per actuator).
        hinges: indices of qpos entries that are angles (wrapped to [-pi, pi)).
    """

    def __init__(self, name: str, q_diag: tuple[float, ...], r: float, hinges: tuple[int, ...]) -> None:
        self.name, self.q_diag, self.r, self.hinges = name, q_diag, r, hinges
        self._gain: np.ndarray | None = None

    def reset(self, env: Env, seed: int) -> None:
        super().reset(env, seed)
        if self._gain is None:  # the dynamics never change between episodes of these tasks
            model = env.physics.model.ptr
            a, b = linearize(model, np.zeros(model.nq), n_substeps(env))
            self._gain = dlqr(a, b, np.diag(self.q_diag), self.r * np.eye(model.nu))

    def state_error(self, env: Env) -> np.ndarray:
        qpos = env.physics.data.qpos.copy()
        for i in self.hinges:
            qpos[i] = wrap_angle(qpos[i])
        return np.concatenate([qpos, env.physics.data.qvel])

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        if self._gain is None:
            raise RuntimeError(f"{self.name}: call reset() before act()")
        return env.clip(-self._gain @ self.state_error(env))


class CartpoleSwingup(LQRBalance):
    """Energy-shaping swing-up with an LQR catch near the top.

    The pole's energy relative to upright rest, E = I w^2 / 2 + m g l (cos th - 1), is driven to 0
    by pushing the cart with u ~ E w cos(th) (more energy when the pole swings the right way), plus
    a weak spring keeping the cart near the centre of the rail.
    """

    def __init__(self, energy_gain: float = 5.0, catch_cos: float = 0.85, centering: float = 0.5) -> None:
        super().__init__("cartpole_swingup", (1.0, 10.0, 1.0, 1.0), 1.0, hinges=(1,))
        self.energy_gain, self.catch_cos, self.centering = energy_gain, catch_cos, centering

    def reset(self, env: Env, seed: int) -> None:
        super().reset(env, seed)
        model = env.physics.model
        pole = model.name2id("pole_1", "body")
        self._mass = float(model.body_mass[pole])
        self._arm = float(np.linalg.norm(model.body_ipos[pole]))  # hinge to centre of mass
        self._inertia = float(model.body_inertia[pole][1]) + self._mass * self._arm**2  # about the hinge
        self._g = float(-model.opt.gravity[2])

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        x, th, xd, thd = self.state_error(env)
        if np.cos(th) > self.catch_cos:
            return super().act(env, obs)
        energy = 0.5 * self._inertia * thd**2 + self._mass * self._g * self._arm * (np.cos(th) - 1.0)
        u = self.energy_gain * energy * thd * np.cos(th) - self.centering * (x + xd)
        return env.clip(np.array([u]))


class PendulumSwingup(LQRBalance):
    """Bang-bang energy pumping (full torque along the velocity) with an LQR catch near the top.

    The motor is too weak to lift the pole directly, so it must pump energy over several swings;
    torque along the angular velocity is the fastest way to add energy, against it to remove it.
    """

    def __init__(self, catch_cos: float = 0.9) -> None:
        super().__init__("pendulum_swingup", (10.0, 1.0), 1.0, hinges=(0,))
        self.catch_cos = catch_cos

    def reset(self, env: Env, seed: int) -> None:
        super().reset(env, seed)
        model = env.physics.model
        pole = model.name2id("pole", "body")
        self._mass = float(model.body_mass[pole])
        self._arm = float(np.linalg.norm(model.body_ipos[pole]))
        self._inertia = float(model.body_inertia[pole][1]) + self._mass * self._arm**2
        self._g = float(-model.opt.gravity[2])

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        th, thd = self.state_error(env)
        if np.cos(th) > self.catch_cos:
            return super().act(env, obs)
        energy = 0.5 * self._inertia * thd**2 + self._mass * self._g * self._arm * (np.cos(th) - 1.0)
        direction = np.sign(thd) if thd != 0 else 1.0
        return env.clip(np.array([direction if energy < 0 else -direction]))


class PointMassLQR(LQRBalance):
    """LQR on the point mass's position error to the target (heavily saturated: the motors are weak)."""

    def __init__(self) -> None:
        super().__init__("point_mass_lqr", (1e4, 1e4, 1.0, 1.0), 1.0, hinges=())

    def state_error(self, env: Env) -> np.ndarray:
        physics = env.physics
        return np.concatenate([-physics.mass_to_target()[:2], physics.data.qvel])


class ReacherPD(Policy):
    """Operational-space PD: joint torques J^T (kp (target - tip) - kd tip_velocity).

    kd 1: at 1.5 and above the velocity loop is unstable at the 20 ms control step and the torques chatter
    between the bounds every step (kd 3: 98% of actions saturated, mean |a_t - a_t-1| 1.96 of a range of 2),
    a bang-bang signal no learner can copy from the state; kd 1 reaches the same return (982 against 983 on
    reacher/easy, 978 / 979 on hard, 5 episodes) with smooth torques (2% saturated, |da| 0.003). Issue 26.
    """

    name = "reacher_pd"

    def __init__(self, kp: float = 50.0, kd: float = 1.0) -> None:
        self.kp, self.kd = kp, kd

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        physics = env.physics
        model, data = physics.model.ptr, physics.data.ptr
        tip = physics.named.data.geom_xpos["finger"]
        target = physics.named.data.geom_xpos["target"]
        jac = np.zeros((3, model.nv))
        mujoco.mj_jac(model, data, jac, None, tip, model.geom("finger").bodyid[0])
        jac = jac[:2]  # the arm moves in the xy plane
        force = self.kp * (target[:2] - tip[:2]) - self.kd * (jac @ physics.data.qvel)
        torque = jac.T @ force
        return env.clip(torque / model.actuator_gear[:, 0])


class JacoReach(Policy):
    """Damped least-squares inverse kinematics for the Jaco arm's velocity actuators.

    The desired tool-centre-point velocity kp (target - tcp) is mapped to joint velocities with
    J^T (J J^T + lambda I)^-1 (well-behaved near singularities) and scaled down uniformly, never
    clipped per joint, so the hand keeps heading straight at the target. Fingers stay still.

    Args:
        kp: proportional gain (1/s).
        hover: approach this far above the target (m): a brick on the table is reached from above
            instead of being pushed away by the fingers.
    """

    name = "jaco_reach"

    def __init__(self, kp: float = 4.0, hover: float = 0.0, damping: float = 1e-2) -> None:
        self.kp, self.hover, self.damping = kp, hover, damping

    def reset(self, env: Env, seed: int) -> None:
        super().reset(env, seed)
        task = env.dm_env.task
        self._tcp = env.physics.bind(task.hand.tool_center_point)
        # dm_control's Reach keeps its target (site or brick frame) only in this private attribute.
        self._target = env.physics.bind(task._target)
        self._dofs = env.physics.bind(task.arm.joints).dofadr
        self._site_id = self._tcp.element_id

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        physics = env.physics
        model, data = physics.model.ptr, physics.data.ptr
        error = self._target.xpos + np.array([0.0, 0.0, self.hover]) - self._tcp.xpos
        jac = np.zeros((3, model.nv))
        mujoco.mj_jacSite(model, data, jac, None, self._site_id)
        jac = jac[:, self._dofs]  # (3, 6) arm joints only
        qvel = jac.T @ np.linalg.solve(jac @ jac.T + self.damping * np.eye(3), self.kp * error)
        limit = env.action_high[: len(self._dofs)]
        qvel = qvel / max(1.0, float(np.max(np.abs(qvel) / limit)))
        action = np.zeros(env.action_dim, np.float32)
        action[: len(self._dofs)] = qvel
        return env.clip(action)


EXPERTS: dict[str, Callable[[TaskSpec], Policy]] = {
    "cartpole_lqr": lambda spec: LQRBalance("cartpole_lqr", (1.0, 10.0, 1.0, 1.0), 1.0, hinges=(1,)),
    "cartpole_swingup": lambda spec: CartpoleSwingup(),
    "pendulum_swingup": lambda spec: PendulumSwingup(),
    "point_mass_lqr": lambda spec: PointMassLQR(),
    "reacher_pd": lambda spec: ReacherPD(),
    "jaco_reach": lambda spec: JacoReach(),
    "jaco_reach_above": lambda spec: JacoReach(hover=0.04),
    "mppi": make_planner,
}


def make_expert(spec: TaskSpec) -> Policy:
    """A fresh expert for the task (experts hold per-episode state: create one per environment)."""
    if spec.expert not in EXPERTS:
        raise ValueError(f"{spec.id}: unknown expert {spec.expert!r}; known: {', '.join(EXPERTS)}")
    return EXPERTS[spec.expert](spec)
