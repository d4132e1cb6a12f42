"""The robosuite env class of the LiftCue memory task (see :mod:`robopolicy.envs.lift_cue`).

Importing this module registers ``LiftCue`` with robosuite (its env metaclass does), so
``robosuite.make("LiftCue", ...)`` works; :class:`robopolicy.envs.robosuite_env.RobosuiteEnv`
imports it when the task is built (``TaskInfo.module``).

Cue timing: robosuite increments ``timestep`` at the start of ``step`` and samples every
observable (camera images included) during the physics substeps that follow; the zone colours
and the ``cue`` observable are updated in ``_pre_action`` of the first substep, so the
observation returned with ``timestep = t`` shows the cue exactly when ``t < CUE_STEPS``, in the
images and in the low-dim ``cue`` slot alike.
"""

from __future__ import annotations

import numpy as np
from robosuite.environments.manipulation.lift import Lift
from robosuite.utils.mjcf_utils import new_geom
from robosuite.utils.observables import Observable, sensor

from robopolicy.envs.lift_cue import CUE_STEPS, REST_HEIGHT, SIDES, ZONE_RADIUS, ZONES

ZONE_RGBA = np.array([0.55, 0.55, 0.55, 1.0])
CUE_RGBA = np.array([0.1, 0.85, 0.1, 1.0])


class LiftCue(Lift):
    """Lift with two table zones; the goal zone is green for the first ``cue_steps`` steps.

    ``forced_cue`` (attribute, None by default): the side every reset uses instead of the drawn
    one (the draw still happens, so the rest of the episode is the same): for tests.
    """

    def __init__(self, *args, cue_steps: int = CUE_STEPS, **kwargs) -> None:
        if int(cue_steps) < 1:
            raise ValueError(f"cue_steps must be >= 1, got {cue_steps}")
        self.cue_steps = int(cue_steps)
        self.cue_side = 0
        self.cue_shown = True
        self.forced_cue: int | None = None
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ model
    def _load_model(self) -> None:
        super()._load_model()
        top = float(self.table_offset[2])
        for name, (x, y) in zip(SIDES, ZONES):
            self.model.worldbody.append(
                new_geom(
                    f"cue_zone_{name}",
                    "cylinder",
                    size=(ZONE_RADIUS, 0.0005),
                    pos=(x, y, top + 0.0005),
                    group=1,  # visual: rendered, no collisions
                    contype=0,
                    conaffinity=0,
                    rgba=ZONE_RGBA,
                )
            )

    def _setup_references(self) -> None:
        super()._setup_references()
        self.zone_geom_ids = [self.sim.model.geom_name2id(f"cue_zone_{name}") for name in SIDES]

    def _setup_observables(self):
        observables = super()._setup_observables()
        if self.use_object_obs:

            @sensor(modality="object")
            def cue(obs_cache):
                out = np.zeros(len(SIDES))
                if self.cue_shown:
                    out[self.cue_side] = 1.0
                return out

            observables["cue"] = Observable(name="cue", sensor=cue, sampling_rate=self.control_freq)
        return observables

    # ------------------------------------------------------------------ episode
    def _reset_internal(self) -> None:
        super()._reset_internal()  # samples the cube placement from the global np.random
        side = int(np.random.randint(len(SIDES)))
        self.cue_side = side if self.forced_cue is None else int(self.forced_cue)
        self._show_cue(True)

    def _pre_action(self, action, policy_step=False) -> None:
        if policy_step:  # timestep already counts this step: its observation is t = timestep
            self._show_cue(self.timestep < self.cue_steps)
        super()._pre_action(action, policy_step)

    def _show_cue(self, shown: bool) -> None:
        self.cue_shown = bool(shown)
        for i, gid in enumerate(self.zone_geom_ids):
            lit = shown and i == self.cue_side
            self.sim.model.geom_rgba[gid] = CUE_RGBA if lit else ZONE_RGBA

    def _check_success(self) -> bool:
        """The cube rests, released, with its centre within ``ZONE_RADIUS`` of the cued zone's."""
        return self._placed_in() == self.cue_side

    def _placed_in(self) -> int | None:
        """The zone (index into ``SIDES``) the cube rests in, released; None if none."""
        cube = np.asarray(self.sim.data.body_xpos[self.cube_body_id])
        if cube[2] - self.table_offset[2] >= REST_HEIGHT or self._check_grasp(self.robots[0].gripper, self.cube):
            return None
        for i, centre in enumerate(ZONES):
            if np.linalg.norm(cube[:2] - centre) < ZONE_RADIUS:
                return i
        return None

    def outcome(self) -> dict[str, str]:
        """How an episode ended, beyond success: ``placed`` is ``cued`` (the success), ``other``
        (put down in the zone that was not cued: the cue forgotten or misread) or ``none``."""
        zone = self._placed_in()
        return {"placed": "none" if zone is None else "cued" if zone == self.cue_side else "other"}


__all__ = ["LiftCue", "ZONE_RGBA", "CUE_RGBA"]
