"""Drivers by name: ``@register_driver("mock")`` on a :class:`Driver` subclass, ``make_driver("mock", ...)``.

Built-in drivers are imported only when asked for, so ``make_driver("mock")`` never imports the
simulator.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from robopolicy.control.drivers.base import Driver

_REGISTRY: dict[str, type[Driver]] = {}

BUILTIN_DRIVERS: dict[str, str] = {
    "koch": "robopolicy.control.drivers.lerobot",
    "lerobot": "robopolicy.control.drivers.lerobot",
    "mock": "robopolicy.control.drivers.mock",
    "robosuite": "robopolicy.control.drivers.robosuite",
    "so100": "robopolicy.control.drivers.lerobot",
    "so101": "robopolicy.control.drivers.lerobot",
}
"""Built-in driver name -> the module that registers it."""


def register_driver(name: str):
    """Class decorator: ``@register_driver("robosuite")`` on a :class:`Driver` subclass (sets its ``name``)."""

    def wrap(cls: type[Driver]) -> type[Driver]:
        if not (isinstance(cls, type) and issubclass(cls, Driver)):
            raise TypeError(f"@register_driver({name!r}) must decorate a Driver subclass")
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"driver name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def known_drivers() -> list[str]:
    """Names of the built-in and registered drivers."""
    return sorted(set(BUILTIN_DRIVERS) | set(_REGISTRY))


def driver_class(name: str) -> type[Driver]:
    """The class registered as ``name`` (importing its built-in module); ValueError naming the known drivers."""
    if name not in _REGISTRY and name in BUILTIN_DRIVERS:
        importlib.import_module(BUILTIN_DRIVERS[name])
    if name not in _REGISTRY:
        raise ValueError(f"unknown driver {name!r}; known drivers: {', '.join(known_drivers())}")
    return _REGISTRY[name]


def make_driver(name: str, **kwargs: Any) -> Driver:
    """Build driver ``name`` with ``kwargs`` (not connected yet).

    ``profile=`` takes a :class:`~robopolicy.control.profile.HardwareProfile`, a profile name in
    ``hardware/`` or a YAML path; an unknown profile name is a ValueError listing the known ones.
    An option the driver does not take is a ValueError listing the options it does.
    """
    cls = driver_class(name)
    params = inspect.signature(cls.__init__).parameters
    options = [p for p in params if p != "self" and params[p].kind not in (params[p].VAR_POSITIONAL,)]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in options)
        if unknown:
            raise ValueError(f"driver {name!r} has no option(s) {unknown}; its options: {options}")
    return cls(**kwargs)


__all__ = ["BUILTIN_DRIVERS", "driver_class", "known_drivers", "make_driver", "register_driver"]
