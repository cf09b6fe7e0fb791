"""Headless MuJoCo rendering: backend selection and a fast offscreen camera.

dm_control picks its OpenGL backend once, when `dm_control` is first imported, from `MUJOCO_GL`,
and that import fails outright if the named backend cannot load. Training pods and CI machines have
no display, so `select_gl_backend` (called by `pac.envs` before anything imports dm_control)
defaults it to EGL, or OSMesa, or no rendering at all, whichever the machine's libraries allow; a
value the user set is always kept.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from typing import Any

import numpy as np

_HINT = ("set MUJOCO_GL=egl (needs libEGL, e.g. `apt-get install libegl1`) or MUJOCO_GL=osmesa "
         "(`apt-get install libosmesa6`) before starting Python; MUJOCO_GL=glfw needs a display; "
         "MUJOCO_GL=disable runs without vision")
# Headless backends in order of preference (EGL is much faster), with the library each one loads.
_HEADLESS = (("egl", "EGL"), ("osmesa", "OSMesa"))


class RenderingUnavailable(RuntimeError):
    """No OpenGL backend could render; the message says how to enable one."""


def select_gl_backend() -> str:
    """Choose a headless `MUJOCO_GL` unless the user set one; return the effective value.

    Must run before `dm_control` is imported (it reads the variable once, at import time). When
    dm_control is already loaded the existing choice stands, whatever the variable says now.
    The libraries are probed rather than tried: a failed dm_control import cannot be retried, and
    without any GL library proprioceptive tasks must still work ("disable": rendering then raises
    `RenderingUnavailable`).
    """
    if "dm_control" not in sys.modules and "MUJOCO_GL" not in os.environ:
        available = [name for name, lib in _HEADLESS if ctypes.util.find_library(lib)]
        os.environ["MUJOCO_GL"] = available[0] if available else "disable"
    return os.environ.get("MUJOCO_GL", "")


def import_failed(error: Exception) -> RenderingUnavailable:
    """The error to raise when importing dm_control failed: it loads the MUJOCO_GL backend at import."""
    return RenderingUnavailable(
        f"dm_control could not load the OpenGL backend MUJOCO_GL={os.environ.get('MUJOCO_GL', '<unset>')!r} "
        f"({type(error).__name__}: {error}); {_HINT}")


class FastCamera:
    """An offscreen camera with the expensive effects off (about 10x faster than `physics.render`).

    Shadows, reflections, the skybox and multisampling cost most of a software (llvmpipe) frame and
    carry no information a policy needs. The MuJoCo scene is built once and reused every frame.

    Args:
        physics: a dm_control `Physics` (suite or composer).
        height: frame height in pixels.
        width: frame width in pixels.
        camera: camera name or index in the model.
    """

    def __init__(self, physics: Any, height: int, width: int, camera: int | str) -> None:
        try:
            from dm_control import mujoco as dm_mujoco
            from dm_control.mujoco.wrapper.mjbindings import enums

            # Multisampling is read when the offscreen buffer is created, i.e. before the first frame.
            physics.model.vis.quality.offsamples = 0
            self._camera = dm_mujoco.Camera(physics, height=height, width=width, camera_id=camera)
            for flag in (enums.mjtRndFlag.mjRND_SHADOW, enums.mjtRndFlag.mjRND_REFLECTION,
                         enums.mjtRndFlag.mjRND_SKYBOX):
                self._camera.scene.flags[flag] = 0
        except Exception as e:  # the GL stack raises ImportError, RuntimeError, OSError, GLError...
            raise RenderingUnavailable(
                f"cannot render with MUJOCO_GL={os.environ.get('MUJOCO_GL', '<unset>')!r} "
                f"({type(e).__name__}: {e}); {_HINT}") from e

    def render(self) -> np.ndarray:
        """One RGB frame, (height, width, 3) uint8."""
        try:
            # dm_control returns a view of a buffer it overwrites on the next frame: copy.
            return self._camera.render().copy()
        except Exception as e:
            raise RenderingUnavailable(f"rendering failed ({type(e).__name__}: {e}); {_HINT}") from e
