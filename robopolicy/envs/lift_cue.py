"""LiftCue, a memory task: put the cube down in the zone that was cued at the start.

Two grey zones lie on the table, left and right of the cube (fixed world positions, see
:data:`ZONES`). For the first :data:`CUE_STEPS` observations (``t = 0 .. CUE_STEPS-1``, i.e.
0.5 s at 20 Hz) the goal zone is green, in the camera images and in the low-dim observation;
then both zones are grey again and the cue is gone. The cue is drawn per episode (from the
seeded global ``np.random``, after the cube placement), so it is independent of the initial
state. Success (the env's own check): the cube rests (not lifted, not grasped) with its centre
within :data:`ZONE_RADIUS` of the cued zone's centre. A policy that forgets the cue succeeds in
about half the episodes at best.

Low-dim observation: ``object`` (12,) = Lift's object-state (cube_pos 3, cube_quat 4,
gripper_to_cube_pos 3) + ``cue`` (2,) at :data:`CUE_SLICE`: one-hot ``[left, right]`` while the
cue is shown, zeros after. Shapes never change.

"Left" is the robot's left (world +y: the robot sits at -x and faces +x).

This module holds the constants and the scripted expert (no robosuite import); the robosuite
env class is :mod:`robopolicy.envs.lift_cue_env`.
"""

from __future__ import annotations

import numpy as np

from robopolicy.envs.experts import CLOSE, OPEN, Phase, WaypointExpert

TASK = "LiftCue"
CUE_STEPS = 10
"""Observations ``t < CUE_STEPS`` show the cue (control steps; 0.5 s at 20 Hz)."""
SIDES = ("left", "right")
ZONES = np.array([[0.0, 0.15], [0.0, -0.15]])
"""World (x, y) of the left (+y) and right (-y) zone centres [m]; the cube starts within 3 cm of (0, 0)."""
ZONE_RADIUS = 0.04
"""Zone marker radius, and the success distance of the cube centre from the cued zone's [m]."""
REST_HEIGHT = 0.035
"""Success needs the cube centre at most this far above the table top [m] (resting: ~0.02)."""
OBJECT_DIM = 12
CUE_SLICE = slice(10, 12)
"""Where the cue sits in the ``object`` observation (and at ``9 +`` that in ``state``)."""


def cue_side(obs: dict[str, np.ndarray]) -> int | None:
    """The cued side (0 left, 1 right) in an observation, None once the cue is hidden."""
    cue = np.asarray(obs["object"][CUE_SLICE])
    return int(np.argmax(cue)) if cue.any() else None


def lift_cue_phases(ex: WaypointExpert) -> list[Phase]:
    """Expert: read the cue in the first observation (and remember it), grasp the cube, carry it
    above the cued zone, put it down, release, retreat."""
    obs = ex.env.last_obs
    side = cue_side(obs) if obs is not None else None
    if side is None:
        raise RuntimeError("LiftCue expert: the first observation shows no cue (reset the env first)")
    cube = ex.raw.cube_body_id
    up = np.array([0.0, 0.0, 1.0])
    start = ex.body_pos(cube)
    ex.place_target = np.array([*ZONES[side], start[2]])
    above = ex.place_target + 0.10 * up
    return [
        Phase("approach", lambda: ex.body_pos(cube) + 0.08 * up, OPEN, tol=0.01),
        Phase("descend", lambda: ex.body_pos(cube) - 0.005 * up, OPEN, tol=0.008, timeout=40),
        Phase("grasp", lambda: ex.eef_pos, CLOSE, steps=8, noisy=False),
        Phase("lift", lambda: np.array([*ex.eef_pos[:2], above[2]]), CLOSE, tol=0.015),
        Phase("carry", lambda: above, CLOSE, tol=0.01, timeout=120),
        Phase("lower", lambda: ex.place_target + 0.005 * up, CLOSE, tol=0.01, timeout=40, noisy=False),
        Phase("release", lambda: ex.eef_pos, OPEN, steps=6, noisy=False),
        Phase("retreat", lambda: ex.eef_pos + 0.10 * up, OPEN, tol=0.02, noisy=False, timeout=200),
    ]


__all__ = [
    "TASK",
    "CUE_STEPS",
    "SIDES",
    "ZONES",
    "ZONE_RADIUS",
    "REST_HEIGHT",
    "OBJECT_DIM",
    "CUE_SLICE",
    "cue_side",
    "lift_cue_phases",
]
