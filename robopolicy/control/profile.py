"""Hardware profiles: one YAML per arm in ``hardware/`` (format: ``hardware/README.md``).

A profile is data the drivers and the safety filter read: joint names and limits, the home pose,
the end-effector workspace box (delta end-effector spaces only), the largest change of each action
dim per tick, the gripper's limits and rate, the control rate, and for a lerobot arm the map from
our names to lerobot's. It names its action space (a key of :data:`ACTION_SPACES`), whose
:class:`~robopolicy.types.ActionSpec` gives the action dims the profile's limits refer to:

============ ========= ==================================================================
osc_pose     delta     robosuite OSC_POSE: end-effector offsets, a zero arm action holds;
                       needs ``workspace``
joint_pos    absolute  joint position targets [rad], one dim per joint (``joints.names``)
                       plus the gripper dim; limits = the joint limits; no ``workspace``
============ ========= ==================================================================

``load_profile("robosuite_panda")`` reads ``hardware/robosuite_panda.yaml``; a path works too.
Every missing, unknown or bad key is a ``ValueError`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.config import REPO_ROOT, from_dict, load_yaml
from robopolicy.types import ActionSpec, osc_pose_action_spec

PROFILE_DIR = REPO_ROOT / "hardware"
"""Where :func:`load_profile` looks up a profile by name."""


class ActionKind(str, enum.Enum):
    """How an action space's arm dims command the arm; the safety filter's hold and rate anchor follow it."""

    DELTA_EEF = "delta_eef"
    """Offsets of the end-effector goal: a zero arm action holds; needs a ``workspace`` box."""
    ABSOLUTE_JOINT = "absolute_joint"
    """Joint position targets: holding means commanding the present position; no ``workspace``."""


@dataclass(frozen=True)
class ActionSpace:
    """An action space a profile can name: its kind, and its spec built from the profile."""

    kind: ActionKind
    build: Callable[[HardwareProfile], ActionSpec]

    @property
    def absolute(self) -> bool:
        return self.kind is ActionKind.ABSOLUTE_JOINT


def joint_pos_action_spec(profile: HardwareProfile) -> ActionSpec:
    """Absolute joint position targets: one dim per joint of ``profile.joints`` [rad], limits the
    joint limits, then the gripper dim (continuous, ``gripper.low/high`` in ``gripper.units``)."""
    j, g = profile.joints, profile.gripper
    return ActionSpec(
        names=(*j.names, g.dim),
        low=(*j.lower, g.low),
        high=(*j.upper, g.high),
        units=("rad",) * len(j.names) + (g.units,),
        discrete=(False,) * (len(j.names) + 1),
    )


ACTION_SPACES: dict[str, ActionSpace | Callable[[], ActionSpec]] = {
    "osc_pose": ActionSpace(ActionKind.DELTA_EEF, lambda profile: osc_pose_action_spec()),
    "joint_pos": ActionSpace(ActionKind.ABSOLUTE_JOINT, joint_pos_action_spec),
}
"""Action spaces a profile can name. A value may also be a zero-argument factory of a fixed
:class:`ActionSpec`, which is a delta end-effector space."""


def get_action_space(name: str) -> ActionSpace:
    """The :class:`ActionSpace` registered as ``name`` (KeyError if none)."""
    space = ACTION_SPACES[name]
    if isinstance(space, ActionSpace):
        return space
    return ActionSpace(ActionKind.DELTA_EEF, lambda profile: space())


@dataclass(frozen=True)
class JointLimits:
    """Joint names and position limits [rad]; a reading more than ``tolerance`` past a limit is a fault."""

    names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0:
            raise ValueError("names: at least one joint is needed")
        if len(set(self.names)) != n:
            raise ValueError(f"names: duplicate joint names in {list(self.names)}")
        for key in ("lower", "upper"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"{key} has {len(getattr(self, key))} entries, names has {n}")
        bad = [self.names[i] for i in range(n) if not self.lower[i] < self.upper[i]]
        if bad:
            raise ValueError(f"lower must be < upper, not so for joints {bad}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")


@dataclass(frozen=True)
class HomePose:
    """Joint positions [rad] and gripper command of the home pose."""

    joint_pos: tuple[float, ...]
    gripper: float


@dataclass(frozen=True)
class Workspace:
    """Box for the end-effector position [m] and how the delta action dims ``dims`` move it
    (``metres_per_unit`` metres of goal offset per action unit)."""

    low: tuple[float, float, float]
    high: tuple[float, float, float]
    dims: tuple[str, str, str]
    metres_per_unit: float

    def __post_init__(self) -> None:
        bad = [axis for axis, lo, hi in zip("xyz", self.low, self.high) if not lo < hi]
        if bad:
            raise ValueError(f"low must be < high, not so on axes {bad}")
        if not self.metres_per_unit > 0:
            raise ValueError(f"metres_per_unit must be > 0, got {self.metres_per_unit}")


@dataclass(frozen=True)
class GripperLimits:
    """The gripper action dim ``dim``: its command range, largest change per tick and units (for
    the spec of a joint space; a fixed action space brings its own)."""

    dim: str
    low: float
    high: float
    max_delta: float
    units: str = ""

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"low must be < high, got low={self.low}, high={self.high}")
        if not self.max_delta > 0:
            raise ValueError(f"max_delta must be > 0, got {self.max_delta}")


JOINT_UNITS = ("degrees", "radians")
"""Joint units a lerobot robot may report (``degrees``: ``use_degrees=True``)."""


@dataclass(frozen=True)
class LerobotMap:
    """How a lerobot ``Robot`` names and scales what the profile describes.

    Attributes:
        robot_type: lerobot's registered robot config name (``so101_follower``).
        keys: ``{our joint or gripper dim: lerobot's action/observation key}`` (``<motor>.pos``),
            for every joint of ``joints.names`` and the gripper dim.
        joint_units: the units of lerobot's joint values (:data:`JOINT_UNITS`); ours are radians.
        gripper_scale: our gripper value = ``gripper_scale`` * lerobot's gripper value.
        teleop_type: lerobot's leader arm for this follower (``so101_leader``), if any.
        cameras: ``{our camera name: lerobot's camera key}``; a camera the driver is given that
            is not listed keeps its name.
    """

    robot_type: str
    keys: dict[str, str]
    joint_units: str
    gripper_scale: float = 1.0
    teleop_type: str = ""
    cameras: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.robot_type:
            raise ValueError("robot_type must not be empty")
        if self.joint_units not in JOINT_UNITS:
            raise ValueError(f"joint_units: {self.joint_units!r} is not one of {list(JOINT_UNITS)}")
        if not self.gripper_scale > 0:
            raise ValueError(f"gripper_scale must be > 0, got {self.gripper_scale}")
        dup = sorted({v for v in self.keys.values() if list(self.keys.values()).count(v) > 1})
        if dup:
            raise ValueError(f"keys: lerobot keys {dup} are used more than once")


@dataclass(frozen=True)
class HardwareProfile:
    """An arm as the drivers and the safety filter see it (one ``hardware/*.yaml``).

    Attributes:
        name: the profile's name (the file stem by convention).
        action_space: a key of :data:`ACTION_SPACES`; :attr:`action_spec` is its spec.
        control_hz: control ticks per second.
        joints: joint names and limits.
        home: the home pose.
        workspace: the end-effector box and the action dims that move the end effector; required
            by a delta end-effector space, not allowed for a joint space.
        max_delta: ``{action dim: largest change per tick}`` for every arm dim (all but the gripper).
        gripper: the gripper dim's limits and rate.
        lerobot: the map to a lerobot robot's names and units (lerobot arms only).
        source: the file it was loaded from (not compared).
    """

    name: str
    action_space: str
    control_hz: float
    joints: JointLimits
    home: HomePose
    max_delta: dict[str, float]
    gripper: GripperLimits
    workspace: Workspace | None = None
    lerobot: LerobotMap | None = None
    source: str = dataclasses.field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"action_space: unknown {self.action_space!r}; known: {sorted(ACTION_SPACES)}")
        if not self.control_hz > 0:
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")
        space = get_action_space(self.action_space)
        if space.absolute and self.gripper.dim in self.joints.names:
            raise ValueError(
                f"gripper.dim: {self.gripper.dim!r} is also a joint name; the {self.action_space} dims clash"
            )
        spec = self.action_spec
        n = len(self.joints.names)
        if len(self.home.joint_pos) != n:
            raise ValueError(f"home.joint_pos has {len(self.home.joint_pos)} entries, joints.names has {n}")
        outside = [
            self.joints.names[i]
            for i, q in enumerate(self.home.joint_pos)
            if not self.joints.lower[i] <= q <= self.joints.upper[i]
        ]
        if outside:
            raise ValueError(f"home.joint_pos is outside the joint limits for {outside}")
        g = self.gripper
        if g.dim not in spec.names:
            raise ValueError(f"gripper.dim: {g.dim!r} is not an action dim of {self.action_space} {list(spec.names)}")
        i = spec.names.index(g.dim)
        if g.low < spec.low[i] or g.high > spec.high[i]:
            raise ValueError(
                f"gripper.low/high [{g.low}, {g.high}] exceed the action limits [{spec.low[i]}, {spec.high[i]}]"
            )
        if spec.discrete[i] and (g.low, g.high) != (spec.low[i], spec.high[i]):
            raise ValueError(
                f"gripper.low/high [{g.low}, {g.high}] must equal the limits [{spec.low[i]}, {spec.high[i]}] "
                f"of the discrete action dim {g.dim!r}"
            )
        if not g.low <= self.home.gripper <= g.high:
            raise ValueError(f"home.gripper {self.home.gripper} is outside gripper.low/high [{g.low}, {g.high}]")
        if space.kind is ActionKind.DELTA_EEF and self.workspace is None:
            raise ValueError(f"workspace is required by the delta end-effector action space {self.action_space!r}")
        if space.absolute and self.workspace is not None:
            raise ValueError(
                f"workspace is not allowed with the joint action space {self.action_space!r} "
                "(its limits are the joint limits)"
            )
        if self.workspace is not None:
            unknown = [d for d in self.workspace.dims if d not in spec.names or d == g.dim]
            if unknown:
                raise ValueError(f"workspace.dims: {unknown} are not arm action dims of {self.action_space}")
        arm_dims = [d for d in spec.names if d != g.dim]
        missing = [d for d in arm_dims if d not in self.max_delta]
        extra = [d for d in self.max_delta if d not in arm_dims]
        if missing or extra:
            raise ValueError(f"max_delta must hold exactly the arm dims {arm_dims}: missing {missing}, unknown {extra}")
        bad = [d for d, v in self.max_delta.items() if not v > 0]
        if bad:
            raise ValueError(f"max_delta must be > 0, not so for {bad}")
        if self.lerobot is not None:
            ours = [*self.joints.names, g.dim]
            missing = [d for d in ours if d not in self.lerobot.keys]
            extra = [d for d in self.lerobot.keys if d not in ours]
            if missing or extra:
                raise ValueError(
                    f"lerobot.keys must map exactly the joints and the gripper {ours}: missing {missing}, unknown {extra}"
                )

    @property
    def action_kind(self) -> ActionKind:
        """Whether :attr:`action_space` is a delta end-effector or an absolute joint space."""
        return get_action_space(self.action_space).kind

    @property
    def action_spec(self) -> ActionSpec:
        """The :class:`ActionSpec` of :attr:`action_space`."""
        return get_action_space(self.action_space).build(self)

    @property
    def period_s(self) -> float:
        """Seconds per control tick."""
        return 1.0 / self.control_hz

    def max_delta_vector(self, spec: ActionSpec | None = None) -> np.ndarray:
        """Largest change per tick of every dim of ``spec`` (default :attr:`action_spec`), the
        gripper's from ``gripper.max_delta``: ``(Da,)`` float64."""
        spec = spec or self.action_spec
        return np.array([self.gripper.max_delta if d == self.gripper.dim else self.max_delta[d] for d in spec.names])


def known_profiles() -> list[str]:
    """Names of the profiles in :data:`PROFILE_DIR`."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve_profile(profile: HardwareProfile | str | Path) -> HardwareProfile:
    """A profile as given, or loaded by name or path."""
    return profile if isinstance(profile, HardwareProfile) else load_profile(profile)


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load ``hardware/<name>.yaml``, or the YAML file at a path.

    Raises ValueError naming the known profiles for an unknown name, and naming the file and the
    key for a missing, unknown or bad key.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(
                f"unknown hardware profile {str(name_or_path)!r}; known profiles: {known_profiles()} (in {PROFILE_DIR})"
            )
    elif not path.is_file():
        raise ValueError(f"hardware profile file not found: {path}")
    data = load_yaml(path)
    missing = _missing_keys(HardwareProfile, data, "")
    if missing:
        raise ValueError(f"hardware profile {path}: missing key(s) {missing}")
    if "source" in data:
        raise ValueError(f"hardware profile {path}: 'source' is set by the loader, not the file")
    try:
        return from_dict(HardwareProfile, {**data, "source": str(path)})
    except ValueError as e:
        raise ValueError(f"hardware profile {path}: {e}") from None


def _missing_keys(cls: type, data: Any, where: str) -> list[str]:
    """Dotted names of the required fields of dataclass ``cls`` (and its nested dataclasses) that
    ``data`` lacks."""
    if not isinstance(data, Mapping):
        return []
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in data:
            if required:
                out.append(key)
        else:
            nested = [t for t in (*typing.get_args(hints[f.name]), hints[f.name]) if dataclasses.is_dataclass(t)]
            if nested:  # a dataclass field, or an optional one (``X | None``)
                out += _missing_keys(nested[0], data[f.name], key)
    return out


__all__ = [
    "ACTION_SPACES",
    "JOINT_UNITS",
    "PROFILE_DIR",
    "ActionKind",
    "ActionSpace",
    "GripperLimits",
    "HardwareProfile",
    "HomePose",
    "JointLimits",
    "LerobotMap",
    "Workspace",
    "get_action_space",
    "joint_pos_action_spec",
    "known_profiles",
    "load_profile",
    "resolve_profile",
]
