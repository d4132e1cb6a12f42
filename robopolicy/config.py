"""Typed configs: frozen dataclasses <-> plain dicts (JSON / YAML), dotted-key overrides.

No ``_target_`` strings and no code in YAML: a config file is data that fills a dataclass,
and every unknown key or badly typed value is a ``ValueError`` naming the key.

* Parts chosen by a tag (a backbone: U-Net or transformer) are a :class:`TaggedConfig` family:
  registered types, written as ``{kind: unet, down_dims: [...]}``.
* A dataclass may define a classmethod ``migrate_dict(data) -> data`` that rewrites an older
  layout of its dict into the current one; :func:`from_dict` applies it first.
* :func:`merge_dicts` lays one config dict over another section by section (presets + overrides).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """A user path as given, else relative to the repository root; FileNotFoundError if neither."""
    p = Path(path)
    if p.exists():
        return p
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    raise FileNotFoundError(f"file not found: {path} (also looked under {REPO_ROOT})")


def to_dict(obj: Any) -> Any:
    """Dataclass / spec / enum / tuple tree -> JSON-able data."""
    if hasattr(obj, "to_dict") and not isinstance(obj, type):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (tuple, list)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


class TaggedConfig:
    """Base of a family of frozen-dataclass configs chosen by a ``kind`` tag (registered types,
    never a boolean flag).

    A family root subclasses this and names itself (``family = "backbone"``); each member is a
    frozen dataclass registered with ``@Root.register("unet")``. In data a member is a mapping
    holding its tag, ``{kind: unet, down_dims: [...]}``; a field of another member is refused by
    name (``backbone.n_layer is not a field of the unet backbone (its fields: [...])``).
    """

    family: ClassVar[str] = ""
    """Name of the family in messages (set on the root)."""
    kind: ClassVar[str] = ""
    """The member's tag (set by :meth:`register`)."""
    kinds: ClassVar[dict[str, type]] = {}
    """Registered members of the family, by tag (one table per root)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__:
            cls.kinds = {}

    @classmethod
    def register(cls, kind: str):
        """Class decorator: ``@BackboneConfig.register("unet")`` on a frozen dataclass member."""

        def wrap(member: type[T]) -> type[T]:
            if not (isinstance(member, type) and issubclass(member, cls) and dataclasses.is_dataclass(member)):
                raise TypeError(
                    f"@{cls.__name__}.register({kind!r}) must decorate a dataclass subclass of {cls.__name__}"
                )
            if cls.kinds.get(kind, member) is not member:
                raise ValueError(f"{cls.family} kind {kind!r} is already registered by {cls.kinds[kind].__qualname__}")
            member.kind = kind
            cls.kinds[kind] = member
            return member

        return wrap

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> TaggedConfig:
        """The member named by ``data["kind"]`` (a member class may leave the tag out)."""
        where = where or cls.family
        registered = sorted(k for k, m in cls.kinds.items() if issubclass(m, cls))
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping with a kind (one of {registered}), got {data!r}")
        kind = data.get("kind", cls.kind or None)
        if kind is None:
            raise ValueError(f"{where}.kind is missing: one of {registered}")
        member = cls.kinds.get(kind)
        if member is None or not issubclass(member, cls):
            raise ValueError(f"{where}.kind: {kind!r} is not a registered {cls.family} (registered: {registered})")
        names = sorted(f.name for f in dataclasses.fields(member) if f.init)
        for key in data:
            if key != "kind" and key not in names:
                raise ValueError(f"{where}.{key} is not a field of the {kind} {cls.family} (its fields: {names})")
        return from_dict(member, {k: v for k, v in data.items() if k != "kind"}, where)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}}


def merge_dicts(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base`` section by section: nested mappings merge key by key, except a
    section whose ``kind`` changes, which ``over`` replaces whole (its fields belong to another
    type). Neither input is modified."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if (
            isinstance(old, Mapping)
            and isinstance(value, Mapping)
            and value.get("kind", old.get("kind")) == old.get("kind")
        ):
            out[key] = merge_dicts(old, value)
        else:
            out[key] = value
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except (TypeError, ValueError, KeyError) as e:
                errors.append(str(e))
        raise ValueError(f"{where}: {value!r} matches none of {args} ({'; '.join(errors)})")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=False)))
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if issubclass(tp, TaggedConfig):
            return value if isinstance(value, tp) else tp.from_dict(value, where)
        if hasattr(tp, "from_dict") and isinstance(value, Mapping):
            return tp.from_dict(value)
        if dataclasses.is_dataclass(tp):
            if isinstance(value, tp):
                return value
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
            return from_dict(tp, value, where)
        if issubclass(tp, enum.Enum):
            try:
                return tp(value)
            except ValueError:
                raise ValueError(f"{where}: {value!r} is not one of {[m.value for m in tp]}") from None
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError(f"{where}: expected a bool, got {value!r}")
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"{where}: expected an int, got {value!r}")
            try:
                return int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: expected an int, got {value!r}") from None
        if tp is float:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: expected a number, got {value!r}") from None
        if tp is str:
            if not isinstance(value, str):
                raise ValueError(f"{where}: expected a string, got {value!r}")
            return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ValueError.

    ``cls.migrate_dict`` (if defined) first upgrades an older layout of ``data``. A ValueError
    of the constructor (``__post_init__``) is prefixed with ``where``, the path of this part."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    migrate = getattr(cls, "migrate_dict", None)
    if migrate is not None:
        data = migrate(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where or cls.__name__}: {e}") from None
    except ValueError as e:
        if not where or str(e).startswith(where):
            raise
        raise ValueError(f"{where}: {e}") from None


def key_values(items: list[str], flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` from a repeatable CLI flag -> ``{k: parsed YAML v}``; ``flag`` names it in errors."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b.c=value`` -> ("a.b.c", parsed YAML value)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ValueError(f"override {text!r} has an empty key")
    return key.strip(), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted-key overrides to a nested dict (before it is turned into a dataclass)."""
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if p not in node else node[p]
                if not isinstance(node[p], dict):
                    raise ValueError(f"override {text!r}: {p!r} is not a section")
            node = node[p]
        node[parts[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level")
    return data
