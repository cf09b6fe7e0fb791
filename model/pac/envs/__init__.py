"""Simulated tasks on dm_control/MuJoCo: registry, environment wrapper, behaviour policies.

Importing this package selects a headless OpenGL backend (`MUJOCO_GL=egl` unless already set)
before anything imports dm_control, which reads the variable only once.
"""

from pac.envs.rendering import RenderingUnavailable, select_gl_backend

select_gl_backend()

from pac.envs.env import Env, Obs, make_env, make_envs  # noqa: E402  (dm_control must load after select_gl_backend)
from pac.envs.registry import TASKS, TaskSpec, UnknownTaskError, get_task, list_tasks  # noqa: E402

__all__ = ["TASKS", "Env", "Obs", "RenderingUnavailable", "TaskSpec", "UnknownTaskError", "get_task", "list_tasks",
           "make_env", "make_envs", "select_gl_backend"]
