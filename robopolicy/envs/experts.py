"""Scripted experts for robosuite tasks (OSC_POSE delta actions), with optional noise.

Every expert is a sequence of waypoint phases (the control laws of
``research/robosuite_on_cpu.md``)::

    a[:3]  = clip((target - eef_pos) / 0.05, -1, 1)          # one step moves at most 5 cm
    a[3:6] = clip(orientation_error(R_goal, R_eef) / 0.5, -1, 1)  # R_goal = Rz(yaw) @ R0
    a[6]   = phase gripper (-1 open, +1 close)

``R0`` is the initial downward pose; a phase with a ``yaw`` turns the goal about the world z
axis by that angle from ``R0`` (later phases keep it), otherwise the gripper holds ``R0``.

A phase ends when the end effector is within ``tol`` of its target, after a fixed number of
steps (gripper phases), or at its timeout (a phase with ``rot_tol`` also waits until the
orientation error is below it). Targets are computed from privileged sim state (object
positions) when the phase starts.

Noise makes demos differ beyond their seeded initial states:

- ``action``: Gaussian std added to the translation part of each action (normalized units),
- ``target``: Gaussian std [m] added to each waypoint when its phase starts.

Variants change what an expert does and when its demo succeeds (``make_expert(...,
variant=...)``, ``demos generate --variant``):

- ``Lift`` / ``place4``: after the grasp the cube is carried to one of four spots 12 cm from
  where it started (+x, -x, +y, -y, drawn per episode), put down and released. A demo
  succeeds once the cube rests on its spot and the gripper is open. Its final states have four
  outcomes: a task for goal-conditioned evaluation (``sim/lift_place_goals.yaml``).

Usage::

    expert = make_expert("Lift", env, np.random.default_rng(0), noise=ExpertNoise(0.05, 0.005))
    obs = env.reset(seed); expert.reset(obs)
    while not done: obs, r, done, info = env.step(expert.act(obs))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robopolicy.envs.robosuite_env import RobosuiteEnv, task_info

OPEN, CLOSE = -1.0, 1.0
POS_SCALE, ROT_SCALE = 0.05, 0.5  # OSC_POSE delta scaling per unit action: metres, radians


@dataclass(frozen=True)
class ExpertNoise:
    """Noise of a scripted expert: ``action`` std (normalized translation), ``target`` std [m]."""

    action: float = 0.0
    target: float = 0.0

    def __post_init__(self) -> None:
        for name in ("action", "target"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"expert noise {name} must be a finite number >= 0, got {v}")

    @classmethod
    def from_scale(cls, scale: float) -> ExpertNoise:
        """One knob: action std ``scale`` and waypoint std ``scale / 10`` metres (0.05 -> 5 mm)."""
        return cls(action=float(scale), target=float(scale) / 10.0)


@dataclass(frozen=True)
class Phase:
    """One waypoint phase: move to ``target()`` (world position of the grip site) with ``gripper``.

    ``target`` is evaluated once, when the phase starts. The phase ends after ``steps`` steps if
    given, else when within ``tol`` metres of the target (and, with ``rot_tol``, within
    ``rot_tol`` of the orientation goal, axis-angle norm), and always after ``timeout`` steps.
    ``yaw``, also evaluated when the phase starts, sets the orientation goal to the initial pose
    turned by that angle [rad] about the world z axis; None keeps the previous goal.
    """

    name: str
    target: Callable[[], np.ndarray]
    gripper: float
    tol: float = 0.01
    steps: int | None = None
    timeout: int = 80
    noisy: bool = True
    yaw: Callable[[], float] | None = None
    rot_tol: float | None = None


def _quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def orientation_error(desired: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle (small-angle) error rotating ``current`` onto ``desired`` (3x3 matrices)."""
    return 0.5 * sum(np.cross(current[:, i], desired[:, i]) for i in range(3))


class WaypointExpert:
    """Runs a list of :class:`Phase` built by ``build_phases(expert)`` at every reset."""

    def __init__(
        self,
        env: RobosuiteEnv,
        build_phases: Callable[[WaypointExpert], list[Phase]],
        rng: np.random.Generator,
        noise: ExpertNoise = ExpertNoise(),
        success: Callable[[WaypointExpert, dict], bool] | None = None,
    ) -> None:
        self.env = env
        self.sim = env.env.sim
        self.raw = env.env
        self.rng = rng
        self.noise = noise
        self._build = build_phases
        self._success = success
        self.phases: list[Phase] = []
        self.k = 0

    def succeeded(self, info: dict) -> bool:
        """Whether the demo has succeeded after a step with env ``info``: the task's own success,
        or the variant's rule."""
        return bool(info["success"]) if self._success is None else self._success(self, info)

    # privileged state helpers used by the phase builders
    def body_pos(self, body_id: int) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[body_id], dtype=np.float64)

    @property
    def eef_pos(self) -> np.ndarray:
        return np.asarray(self._obs["eef_pos"], dtype=np.float64)

    @property
    def phase(self) -> str:
        """Name of the current phase ("done" once all phases ran)."""
        return self.phases[self.k].name if self.k < len(self.phases) else "done"

    def reset(self, obs: dict[str, np.ndarray]) -> None:
        """Start a new episode from its first observation."""
        self._obs = obs
        self.R0 = _quat_xyzw_to_mat(obs["eef_quat"])
        self.R_goal = self.R0
        self.start_pos = self.eef_pos.copy()
        self.phases = self._build(self)
        self.k = -1
        self._next_phase()

    def _next_phase(self) -> None:
        self.k += 1
        self.n = 0
        if self.k < len(self.phases):
            ph = self.phases[self.k]
            self.goal = np.asarray(ph.target(), dtype=np.float64).copy()
            if ph.yaw is not None:
                self.R_goal = _rot_z(float(ph.yaw())) @ self.R0
            if ph.noisy and self.noise.target > 0:
                self.goal += self.rng.normal(0.0, self.noise.target, 3)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The action (7,) for ``obs``."""
        self._obs = obs
        while self.k < len(self.phases):
            ph = self.phases[self.k]
            err = self.goal - self.eef_pos
            finished = self.n >= ph.steps if ph.steps is not None else np.linalg.norm(err) < ph.tol
            if ph.rot_tol is not None:
                R = _quat_xyzw_to_mat(obs["eef_quat"])
                finished = finished and np.linalg.norm(orientation_error(self.R_goal, R)) < ph.rot_tol
            if finished or self.n >= ph.timeout:
                self._next_phase()
                continue
            break
        if self.k >= len(self.phases):  # hold still at the last target with the last gripper
            ph, err = self.phases[-1], self.goal - self.eef_pos
        self.n += 1
        a = np.zeros(7)
        a[:3] = np.clip(err / POS_SCALE, -1, 1)
        R = _quat_xyzw_to_mat(obs["eef_quat"])
        a[3:6] = np.clip(orientation_error(self.R_goal, R) / ROT_SCALE, -1, 1)
        a[6] = ph.gripper
        if self.noise.action > 0:
            a[:3] += self.rng.normal(0.0, self.noise.action, 3)
        return np.clip(a, -1.0, 1.0)


# --------------------------------------------------------------------------- tasks
def _lift_phases(ex: WaypointExpert) -> list[Phase]:
    cube = ex.raw.cube_body_id
    up = np.array([0.0, 0.0, 1.0])
    return [
        Phase("approach", lambda: ex.body_pos(cube) + 0.08 * up, OPEN, tol=0.01),
        Phase("descend", lambda: ex.body_pos(cube) - 0.005 * up, OPEN, tol=0.008, timeout=40),
        Phase("grasp", lambda: ex.eef_pos, CLOSE, steps=8, noisy=False),
        Phase("lift", lambda: ex.start_pos + 0.15 * up, CLOSE, tol=0.01, timeout=200),
    ]


CAN_DROP_XY = np.array([0.16, 0.34])  # inside the can's bin quadrant and reachable at carry height


def _pick_place_can_phases(ex: WaypointExpert) -> list[Phase]:
    can = ex.raw.obj_body_id["Can"]
    up = np.array([0.0, 0.0, 1.0])

    def at(xy: np.ndarray, z: float) -> Callable[[], np.ndarray]:
        return lambda: np.array([xy[0], xy[1], z])

    return [
        Phase("approach", lambda: ex.body_pos(can) + 0.10 * up, OPEN, tol=0.01),
        Phase("descend", lambda: ex.body_pos(can), OPEN, tol=0.008, timeout=40),
        Phase("grasp", lambda: ex.eef_pos, CLOSE, steps=8, noisy=False),
        Phase("lift", lambda: np.array([*ex.eef_pos[:2], 1.0]), CLOSE, tol=0.02),
        Phase("carry", at(CAN_DROP_XY, 1.0), CLOSE, tol=0.02, timeout=120),
        Phase("lower", at(CAN_DROP_XY, 0.93), CLOSE, tol=0.015),
        Phase("release", lambda: ex.eef_pos, OPEN, steps=6, noisy=False),
        Phase("retreat", lambda: ex.eef_pos + 0.15 * up, OPEN, tol=0.02, noisy=False, timeout=200),
    ]


def _stack_phases(ex: WaypointExpert) -> list[Phase]:
    a, b = ex.raw.cubeA_body_id, ex.raw.cubeB_body_id
    up = np.array([0.0, 0.0, 1.0])
    return [
        Phase("approach", lambda: ex.body_pos(a) + 0.08 * up, OPEN, tol=0.01),
        Phase("descend", lambda: ex.body_pos(a) - 0.005 * up, OPEN, tol=0.008, timeout=40),
        Phase("grasp", lambda: ex.eef_pos, CLOSE, steps=8, noisy=False),
        Phase("lift", lambda: np.array([*ex.eef_pos[:2], ex.body_pos(b)[2] + 0.12]), CLOSE, tol=0.015),
        Phase("carry", lambda: ex.body_pos(b) + 0.12 * up, CLOSE, tol=0.01, timeout=120),
        # cubeB half-height 0.025 + cubeA half-height 0.02 + 1 cm clearance
        Phase("lower", lambda: ex.body_pos(b) + 0.055 * up, CLOSE, tol=0.006, timeout=60),
        Phase("release", lambda: ex.eef_pos, OPEN, steps=6, noisy=False),
        Phase("retreat", lambda: ex.eef_pos + 0.10 * up, OPEN, tol=0.02, noisy=False, timeout=200),
    ]


SQUARE_GRIP_R = 0.06
"""NutAssemblySquare: grasp point on the handle, distance from the nut's centre [m] (the ring's
outer edge is at 0.044, the handle's end at 0.079)."""
SQUARE_HANDLE_DIRS = ((np.pi / 2, 0.0), (np.pi, 0.0), (-np.pi / 2, 0.0), (0.0, 3.0))
"""NutAssemblySquare: world yaws the handle may point at over the peg, with a cost [rad]. +x
(away from the robot) puts the gripper at x = 0.28, where the arm stalls: only as a last resort."""
SQUARE_NUT_REST_Z = 0.83
"""NutAssemblySquare: the nut centre's height when it lies on the table [m]."""
SQUARE_YAW_RANGE = (-0.35, 2.8)
"""NutAssemblySquare: gripper yaws [rad] from the start the expert may use. Turning the other way
(negative) drives the Panda's wrist joint into its limit after about 25 degrees."""


def _wrap(angle: float, period: float) -> float:
    return (angle + period / 2) % period - period / 2


def _level(R: np.ndarray) -> np.ndarray:
    """The pointing-down pose with the yaw of ``R`` (its tilt removed)."""
    x = np.array([R[0, 0], R[1, 0], 0.0]) / np.hypot(R[0, 0], R[1, 0])
    z = np.array([0.0, 0.0, -1.0])
    return np.column_stack([x, np.cross(z, x), z])


def _square_yaws(psi: float, finger_yaw: float) -> tuple[float, float]:
    """(grasp yaw, place yaw) of the gripper, relative to its start, for a handle pointing at world
    yaw ``psi``: fingers across the handle, then the nut turned square to the peg (its sides on
    the world axes), the least turning that keeps both yaws in :data:`SQUARE_YAW_RANGE`."""
    g0 = _wrap(psi + np.pi / 2 - finger_yaw, np.pi)  # the fingers are symmetric: any of g0 + k*pi
    lo, hi = SQUARE_YAW_RANGE
    best = (np.inf, g0, g0)
    for g in (g0 - np.pi, g0, g0 + np.pi):
        for d, penalty in SQUARE_HANDLE_DIRS:
            turn = _wrap(d - psi, 2 * np.pi)
            if lo <= g <= hi and lo <= g + turn <= hi and abs(g) + abs(turn) + penalty < best[0]:
                best = (abs(g) + abs(turn) + penalty, g, g + turn)
    return best[1], best[2]


def _square_phases(ex: WaypointExpert) -> list[Phase]:
    """NutAssemblySquare: grasp the nut by its handle, turn it square to the peg, carry it above
    the peg and lower it on (the env counts success once the nut is down around the peg and the
    gripper more than 4.2 cm from the nut's centre, which holding the handle already is)."""
    raw = ex.raw
    nut, peg = raw.obj_body_id["SquareNut"], raw.peg1_body_id
    handle_site = raw.object_site_ids[raw.nut_to_id["square"]]
    up = np.array([0.0, 0.0, 1.0])
    # hold the gripper vertical: with its initial tilt (~9 deg) a handle pointing at the robot slips
    ex.R0 = ex.R_goal = _level(ex.R0)

    def grip_point() -> np.ndarray:
        c, h = ex.body_pos(nut), np.array(ex.sim.data.site_xpos[handle_site], dtype=np.float64)
        return c + (h - c) * SQUARE_GRIP_R / np.linalg.norm(h - c)

    handle_dir = grip_point() - ex.body_pos(nut)
    psi = float(np.arctan2(handle_dir[1], handle_dir[0]))  # the handle's (nut's local x) world yaw
    grasp_yaw, place_yaw = _square_yaws(psi, float(np.arctan2(ex.R0[1, 1], ex.R0[0, 1])))
    turn = place_yaw - grasp_yaw  # turns the nut square to the peg during the carry
    peg_xy = ex.body_pos(peg)[:2]
    carry_z = ex.body_pos(peg)[2] + 0.14  # peg top + 4 cm

    def over_peg(turn: float = 0.0) -> Callable[[], np.ndarray]:
        def target() -> np.ndarray:  # the grip above the peg so that the nut's centre is on it
            off = (ex.eef_pos - ex.body_pos(nut))[:2]
            off = _rot_z(turn)[:2, :2] @ off
            return np.array([*(peg_xy + off), carry_z])

        return target

    def down() -> np.ndarray:  # lower the nut until it rests on the table
        return np.array([*ex.goal[:2], ex.eef_pos[2] - (ex.body_pos(nut)[2] - SQUARE_NUT_REST_Z)])

    return [
        Phase("approach", lambda: grip_point() + 0.08 * up, OPEN, tol=0.01, yaw=lambda: grasp_yaw, rot_tol=0.05),
        Phase("descend", lambda: grip_point() + 0.003 * up, OPEN, tol=0.005, timeout=40, noisy=False),
        Phase("grasp", lambda: ex.eef_pos, CLOSE, steps=10, noisy=False),
        Phase("lift", lambda: np.array([*ex.eef_pos[:2], carry_z]), CLOSE, tol=0.02),
        Phase("carry", over_peg(turn), CLOSE, tol=0.01, timeout=120, yaw=lambda: place_yaw, rot_tol=0.03),
        Phase("align", over_peg(), CLOSE, tol=0.004, timeout=40, noisy=False),
        Phase("align2", over_peg(), CLOSE, tol=0.003, timeout=30, noisy=False),
        Phase("lower", down, CLOSE, tol=0.01, timeout=60, noisy=False),
        Phase("release", lambda: ex.eef_pos, OPEN, steps=6, noisy=False),
        Phase("retreat", lambda: ex.eef_pos + 0.10 * up, OPEN, tol=0.02, noisy=False, timeout=200),
    ]


PLACE_SPOTS = np.array([[0.12, 0.0], [-0.12, 0.0], [0.0, 0.12], [0.0, -0.12]])
"""Lift/place4: where the cube is put down, relative to where it started (x, y) [m]."""


def _lift_place_phases(ex: WaypointExpert) -> list[Phase]:
    cube = ex.raw.cube_body_id
    up = np.array([0.0, 0.0, 1.0])
    start = ex.body_pos(cube)
    ex.place_target = np.array([*(start[:2] + PLACE_SPOTS[ex.rng.integers(len(PLACE_SPOTS))]), start[2]])
    above = ex.place_target + 0.10 * up
    return [
        *_lift_phases(ex)[:3],  # approach, descend, grasp
        Phase("lift", lambda: np.array([*ex.eef_pos[:2], above[2]]), CLOSE, tol=0.015),
        Phase("carry", lambda: above, CLOSE, tol=0.01, timeout=120),
        Phase("lower", lambda: ex.place_target + 0.005 * up, CLOSE, tol=0.01, timeout=40, noisy=False),
        Phase("release", lambda: ex.eef_pos, OPEN, steps=6, noisy=False),
        Phase("retreat", lambda: ex.eef_pos + 0.10 * up, OPEN, tol=0.02, noisy=False, timeout=200),
    ]


def _cube_placed(ex: WaypointExpert, info: dict) -> bool:
    """Lift/place4 success: released (past the release phase) with the cube resting on its spot:
    within 2.5 cm of it across the table, and within 2 cm of its start height (the cube starts
    1 cm above the table and settles)."""
    cube = ex.body_pos(ex.raw.cube_body_id)
    past_release = ex.k > [p.name for p in ex.phases].index("release")
    err = cube - ex.place_target
    return past_release and float(np.linalg.norm(err[:2])) < 0.025 and abs(float(err[2])) < 0.02


def _lift_cue_phases(ex: WaypointExpert) -> list[Phase]:
    from robopolicy.envs.lift_cue import lift_cue_phases  # its own module (it imports this one)

    return lift_cue_phases(ex)


EXPERTS: dict[str, Callable[[WaypointExpert], list[Phase]]] = {
    "Lift": _lift_phases,
    "PickPlaceCan": _pick_place_can_phases,
    "Stack": _stack_phases,
    "NutAssemblySquare": _square_phases,
    "LiftCue": _lift_cue_phases,
}

VARIANTS: dict[
    tuple[str, str], tuple[Callable[[WaypointExpert], list[Phase]], Callable[[WaypointExpert, dict], bool]]
] = {
    ("Lift", "place4"): (_lift_place_phases, _cube_placed),
}
"""Expert variants by (task, name): their phases and their success rule."""


def make_expert(
    task: str,
    env: RobosuiteEnv,
    rng: np.random.Generator | int | None = None,
    noise: ExpertNoise | float = 0.0,
    variant: str | None = None,
) -> WaypointExpert:
    """A scripted expert for ``task`` acting in ``env`` (it reads privileged sim state from it).

    ``noise`` is an :class:`ExpertNoise` or a scale for :meth:`ExpertNoise.from_scale`;
    ``variant`` one of :data:`VARIANTS` for the task (None: the task's own expert).
    """
    task_info(task)
    if task not in EXPERTS:
        raise ValueError(f"no scripted expert for task {task!r}; experts exist for: {', '.join(EXPERTS)}")
    check_variant(task, variant)
    if env.task != task:
        raise ValueError(f"expert task {task!r} does not match the env's task {env.task!r}")
    if not isinstance(noise, ExpertNoise):
        noise = ExpertNoise.from_scale(float(noise))
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if variant is None:
        return WaypointExpert(env, EXPERTS[task], rng, noise)
    phases, success = VARIANTS[(task, variant)]
    return WaypointExpert(env, phases, rng, noise, success)


def check_variant(task: str, variant: str | None) -> None:
    """ValueError naming the variants of ``task`` when ``variant`` is not one of them."""
    if variant is not None and (task, variant) not in VARIANTS:
        known = sorted(v for t, v in VARIANTS if t == task)
        raise ValueError(f"no expert variant {variant!r} for task {task!r}; its variants: {known or 'none'}")


__all__ = [
    "ExpertNoise",
    "Phase",
    "WaypointExpert",
    "EXPERTS",
    "VARIANTS",
    "check_variant",
    "make_expert",
    "orientation_error",
]
