"""The task registry: every simulated task PAC trains and evaluates on, as data.

A task id names the embodiment and the task (`"cartpole/balance"`). Each entry fixes what the model
sees: the instruction fed to the language encoder, the observation keys flattened (in this order)
into the proprioception vector, the camera rendered for vision, and how an episode is scored
(maximum return for normalisation, a success rule where the task has one).

Tasks come from two dm_control families on real MuJoCo physics: the Control Suite (`suite`) and
`dm_control.manipulation` (`manipulation`), whose Kinova Jaco arm is the "robot" domain used for
data collection and finetuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


class UnknownTaskError(ValueError):
    """A task id is not in the registry; the message lists the known ones."""


@dataclass(frozen=True)
class TaskSpec:
    """One registered task.

    Attributes:
        id: registry key, `"<embodiment>/<task>"`.
        embodiment: the body being controlled (one action space and observation layout per embodiment).
        instruction: natural-language description of the goal, fed to the language encoder.
        family: `"suite"` (Control Suite) or `"manipulation"` (dm_control.manipulation, Jaco arm).
        env_name: the dm_control name: `"domain/task"` for the suite, the registry name for manipulation.
        obs_keys: dm_control observation keys, flattened in this order into the proprio vector.
        camera: camera name rendered for vision and videos.
        expert: name of the expert controller in `pac.envs.experts.EXPERTS`.
        success_threshold: an episode succeeds when its mean reward over the final `success_window`
            steps reaches this; None when the task has no notion of success (locomotion speed).
        success_window: number of final steps the success rule averages over.
        max_reward: the largest per-step reward (dm_control rewards lie in [0, 1]).
        tags: free-form labels, e.g. `"robot"` for the arm tasks.
    """

    id: str
    embodiment: str
    instruction: str
    family: Literal["suite", "manipulation"]
    env_name: str
    obs_keys: tuple[str, ...]
    camera: str
    expert: str
    success_threshold: float | None = None
    success_window: int = 50
    max_reward: float = 1.0
    tags: tuple[str, ...] = ()

    def max_return(self, episode_steps: int) -> float:
        """The best possible undiscounted return of an episode of `episode_steps` control steps."""
        return self.max_reward * episode_steps

    def normalized_return(self, episode_return: float, episode_steps: int) -> float:
        """`episode_return` as a fraction of `max_return(episode_steps)` (1.0 is the best possible)."""
        return episode_return / self.max_return(episode_steps)

    def success(self, rewards: np.ndarray) -> bool | None:
        """Whether an episode with these per-step rewards solved the task; None if the task has no success rule.

        The rule looks at the end of the episode (where the agent should be: balanced, at the target,
        ball in cup), averaging over `success_window` steps so that one unlucky step does not decide it.
        """
        if self.success_threshold is None:
            return None
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.size == 0:
            return False
        return bool(rewards[-self.success_window:].mean() >= self.success_threshold)


_JACO_OBS = ("jaco_arm/joints_pos", "jaco_arm/joints_torque", "jaco_arm/joints_vel", "jaco_arm/jaco_hand/joints_pos",
             "jaco_arm/jaco_hand/joints_vel", "jaco_arm/jaco_hand/pinch_site_pos",
             "jaco_arm/jaco_hand/pinch_site_rmat")
_DUPLO_OBS = ("duplo2x4/position", "duplo2x4/orientation", "duplo2x4/linear_velocity", "duplo2x4/angular_velocity")

_TASKS = (
    TaskSpec("cartpole/balance", "cartpole", "Keep the pole balanced upright by moving the cart.", "suite",
             "cartpole/balance", ("position", "velocity"), "fixed", "cartpole_lqr", 0.8),
    TaskSpec("cartpole/swingup", "cartpole", "Swing the pole up and balance it above the cart.", "suite",
             "cartpole/swingup", ("position", "velocity"), "fixed", "cartpole_swingup", 0.8),
    TaskSpec("pendulum/swingup", "pendulum", "Swing the pendulum up and hold it upright.", "suite",
             "pendulum/swingup", ("orientation", "velocity"), "fixed", "pendulum_swingup", 0.9),
    TaskSpec("point_mass/easy", "point_mass", "Move the point mass to the target at the centre.", "suite",
             "point_mass/easy", ("position", "velocity"), "fixed", "point_mass_lqr", 0.8, 25),
    TaskSpec("reacher/easy", "reacher", "Move the fingertip onto the large target.", "suite", "reacher/easy",
             ("position", "to_target", "velocity"), "fixed", "reacher_pd", 0.9, 25),
    TaskSpec("reacher/hard", "reacher", "Move the fingertip onto the small target.", "suite", "reacher/hard",
             ("position", "to_target", "velocity"), "fixed", "reacher_pd", 0.9, 25),
    TaskSpec("finger/spin", "finger", "Flick the spinner with the finger to keep it rotating fast.", "suite",
             "finger/spin", ("position", "velocity", "touch"), "cam0", "mppi", 0.8),
    TaskSpec("finger/turn_easy", "finger", "Turn the spinner so its tip points at the target.", "suite",
             "finger/turn_easy", ("position", "velocity", "touch", "target_position", "dist_to_target"), "cam0",
             "mppi", 0.9, 25),
    TaskSpec("ball_in_cup/catch", "ball_in_cup", "Swing the ball on the string up and catch it in the cup.", "suite",
             "ball_in_cup/catch", ("position", "velocity"), "cam0", "mppi", 0.9, 25),
    TaskSpec("walker/stand", "walker", "Stand the walker up and keep its torso upright.", "suite", "walker/stand",
             ("orientations", "height", "velocity"), "side", "mppi", 0.8),
    TaskSpec("walker/walk", "walker", "Walk forward at a steady pace.", "suite", "walker/walk",
             ("orientations", "height", "velocity"), "side", "mppi"),
    TaskSpec("cheetah/run", "cheetah", "Run forward as fast as possible.", "suite", "cheetah/run",
             ("position", "velocity"), "side", "mppi"),
    TaskSpec("hopper/stand", "hopper", "Stand the hopper upright on its foot and stay still.", "suite",
             "hopper/stand", ("position", "velocity", "touch"), "cam0", "mppi", 0.8),
    TaskSpec("jaco/reach_site", "jaco", "Move the robot hand to the red target sphere.", "manipulation",
             "reach_site_features", ("target_position", *_JACO_OBS), "front_close", "jaco_reach", 0.9, 25,
             tags=("robot",)),
    TaskSpec("jaco/reach_duplo", "jaco", "Move the robot hand to the toy brick on the table.", "manipulation",
             "reach_duplo_features", (*_JACO_OBS, *_DUPLO_OBS), "front_close", "jaco_reach_above", 0.9, 25,
             tags=("robot",)),
)

TASKS: dict[str, TaskSpec] = {t.id: t for t in _TASKS}


def get_task(task_id: str) -> TaskSpec:
    """Look up a task by id.

    Raises:
        UnknownTaskError: `task_id` is not registered (the message lists every known id).
    """
    try:
        return TASKS[task_id]
    except KeyError:
        raise UnknownTaskError(f"unknown task {task_id!r}; known tasks: {', '.join(TASKS)} "
                               f"(see `pac tasks`)") from None


def list_tasks(tag: str | None = None) -> list[TaskSpec]:
    """All registered tasks in registry order, optionally only those carrying `tag`."""
    return [t for t in TASKS.values() if tag is None or tag in t.tags]
