"""Headless MuJoCo rendering: backend selection and a fast offscreen camera.

dm_control picks its OpenGL backend once, when `dm_control` is first imported, from `MUJOCO_GL`.
Training pods and CI machines have no display, so `select_gl_backend` (called by `pac.envs` before
anything imports dm_control) defaults it to EGL; a value the user set is always kept.
"""

from __future__ import annotations

import os
import sys

import numpy as np

DEFAULT_GL = "egl"
_HINT = ("set MUJOCO_GL=egl (needs libEGL, e.g. `apt-get install libegl1`) or MUJOCO_GL=osmesa "
         "(`apt-get install libosmesa6`) before starting Python; MUJOCO_GL=glfw needs a display")


class RenderingUnavailable(RuntimeError):
    """No OpenGL backend could render; the message says how to enable one."""


def select_gl_backend() -> str:
    """Default `MUJOCO_GL` to EGL unless the user chose a backend; return the effective value.

    Must run before `dm_control` is imported (it reads the variable once, at import time). When
    dm_control is already loaded the existing choice stands, whatever the variable says now.
    """
    if "dm_control" not in sys.modules:
        os.environ.setdefault("MUJOCO_GL", DEFAULT_GL)
    return os.environ.get("MUJOCO_GL", "")


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

    def __init__(self, physics: object, height: int, width: int, camera: int | str) -> None:
        try:
            from dm_control import mujoco as dm_mujoco
            from dm_control.mujoco.wrapper.mjbindings import enums

            # Multisampling is read when the offscreen buffer is created, i.e. before the first frame.
            physics.model.vis.quality.offsamples = 0  # type: ignore[attr-defined]
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
