"""Fast offscreen rendering for robosuite on software GL (llvmpipe).

robosuite's default visual settings (4096² shadow map, table reflection, 4x MSAA) make an
84x84 render cost ~53 ms on this class of machine; with shadows, reflection and MSAA off it
is ~15 ms and the images look the same apart from shadows and anti-aliasing (measured in
``research/robosuite_on_cpu.md``). :func:`apply_fast_render_patch` installs that change on
robosuite's render context class; call it (it is idempotent) in every process before any env
is created. Importing this module also sets ``MUJOCO_GL=egl`` unless the user chose a backend.
"""

from __future__ import annotations

import os

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


__all__ = ["apply_fast_render_patch"]
