"""Fast offscreen rendering for robosuite on software GL (llvmpipe).

robosuite's default visual settings (4096² shadow map, table reflection, 4x MSAA) make an
84x84 render cost ~53 ms on this class of machine; with shadows, reflection and MSAA off it
is ~15 ms and the images look the same apart from shadows and anti-aliasing (measured in
``research/robosuite_on_cpu.md``). :func:`apply_fast_render_patch` installs that change on
robosuite's render context class; call it (it is idempotent) in every process before any env
is created. Importing this module also sets ``MUJOCO_GL=egl`` unless the user chose a backend.

Video frames are rendered exactly as robosuite renders its camera observations
(:func:`render_camera`): through robosuite's own offscreen context when the env has one (image
suites), else through one created and configured the way robosuite configures its own in
``MujocoEnv._reset_internal`` (low-dim suites). MuJoCo's default ``MjvOption`` shows geom groups
0-2, and robosuite keeps the robot's collision meshes in group 0, so a context left at the
defaults draws them over the visual meshes; robosuite hides group 0 (``render_collision_mesh``)
and shows group 1 (``render_visual_mesh``).

robosuite never makes a context's GL context current before rendering (it does so only when
creating it) nor before freeing it, so with several envs in one process an env renders into,
or on close deletes the GL objects of, whichever GL context was made current last: garbage
images. :func:`make_current` (called by :func:`render_camera`, and by ``RobosuiteEnv`` before
robosuite renders camera observations and before it closes) selects the env's own.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

_PATCHED_ATTR = "_robopolicy_fast_render"


def apply_fast_render_patch() -> bool:
    """Turn off shadows, reflections and MSAA in every robosuite offscreen render context.

    Returns True if the patch was installed now, False if it already was. Must run before
    ``robosuite`` creates its first render context (i.e. before ``suite.make``) to take
    effect for that env.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco
    from robosuite.utils import binding_utils

    cls = binding_utils.MjRenderContext
    if getattr(cls._set_mujoco_context_and_buffers, _PATCHED_ATTR, False):
        return False
    original = cls._set_mujoco_context_and_buffers

    def _set_mujoco_context_and_buffers(self) -> None:
        self.model._model.vis.quality.shadowsize = 0
        self.model._model.vis.quality.offsamples = 0
        self.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        original(self)

    setattr(_set_mujoco_context_and_buffers, _PATCHED_ATTR, True)
    cls._set_mujoco_context_and_buffers = _set_mujoco_context_and_buffers
    return True


def offscreen_context(env: Any) -> Any:
    """robosuite's offscreen render context of ``env`` (a robosuite ``MujocoEnv``), set up as robosuite's own.

    If the env has none (``has_offscreen_renderer=False``: no camera observations), one is
    created the way ``MujocoEnv._reset_internal`` creates it and registered with the sim. In
    both cases the geom groups are set as robosuite sets them: collision meshes (group 0)
    hidden unless ``env.render_collision_mesh``, visual meshes (group 1) shown unless
    ``env.render_visual_mesh`` is False. The context's other options are MuJoCo's defaults,
    as in robosuite's.
    """
    sim = env.sim
    ctx = getattr(sim, "_render_context_offscreen", None)
    if ctx is None:
        from robosuite.utils.binding_utils import MjRenderContextOffscreen

        ctx = MjRenderContextOffscreen(sim, device_id=getattr(env, "render_gpu_device_id", -1))  # registers itself
    ctx.vopt.geomgroup[0] = 1 if getattr(env, "render_collision_mesh", False) else 0
    ctx.vopt.geomgroup[1] = 1 if getattr(env, "render_visual_mesh", True) else 0
    return ctx


def make_current(env: Any) -> None:
    """Make the GL context of ``env``'s offscreen render context current (no-op if it has none)."""
    ctx = getattr(env.sim, "_render_context_offscreen", None)
    if ctx is not None:
        ctx.gl_ctx.make_current()


def render_camera(env: Any, camera: str, width: int, height: int) -> np.ndarray:
    """An upright ``(height, width, 3)`` uint8 RGB image of ``camera``, pixel for pixel what robosuite's
    ``<camera>_image`` observation of the same state at that size shows once made upright.

    robosuite's camera sensor calls ``sim.render(camera_name=..., width=..., height=...)`` and
    returns it as read from OpenGL (bottom row first) under the default
    ``macros.IMAGE_CONVENTION = "opengl"``; this renders the same call and flips it upright
    (see :func:`upright_observation` for the observation side).
    """
    offscreen_context(env).gl_ctx.make_current()
    img = env.sim.render(width=int(width), height=int(height), camera_name=camera)
    return np.ascontiguousarray(img[::-1])


def image_convention() -> str:
    """robosuite's current ``macros.IMAGE_CONVENTION`` (``"opengl"``, its default, or ``"opencv"``).

    robosuite reads it when an env sets up its camera sensors, so an env keeps the value it
    was built with.
    """
    from robosuite import macros
    from robosuite.utils.mjcf_utils import IMAGE_CONVENTION_MAPPING

    convention = str(macros.IMAGE_CONVENTION)
    if convention not in IMAGE_CONVENTION_MAPPING:
        raise ValueError(f"unknown robosuite IMAGE_CONVENTION {convention!r}; valid: {list(IMAGE_CONVENTION_MAPPING)}")
    return convention


def upright_observation(image: np.ndarray, convention: str = "opengl") -> np.ndarray:
    """A robosuite ``<camera>_image`` observation, made by an env built under ``convention``, upright.

    robosuite's sensor returns ``sim.render(...)[::IMAGE_CONVENTION_MAPPING[convention]]``:
    ``"opengl"`` leaves the image bottom row first (flip it), ``"opencv"`` already flipped it.
    """
    from robosuite.utils.mjcf_utils import IMAGE_CONVENTION_MAPPING

    step = IMAGE_CONVENTION_MAPPING[convention]  # 1: as read from OpenGL, -1: flipped
    return np.ascontiguousarray(image[::-step])


__all__ = [
    "apply_fast_render_patch",
    "image_convention",
    "make_current",
    "offscreen_context",
    "render_camera",
    "upright_observation",
]
