"""Is the simulator installed? robosuite and mujoco are the optional ``sim`` extra.

A deployment machine installs the core (``pip install robopolicy``) without a simulator;
commands that need one call :func:`require_sim` before any work and get a clear error.
"""

from __future__ import annotations

import importlib.util

SIM_PACKAGES = ("robosuite", "mujoco")


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # blocked (sys.modules[name] = None) or a broken install
        return False


def sim_available() -> bool:
    return all(_installed(p) for p in SIM_PACKAGES)


def require_sim(what: str) -> None:
    """``ValueError`` naming the missing packages and the install command, if the simulator is absent."""
    missing = [p for p in SIM_PACKAGES if not _installed(p)]
    if missing:
        raise ValueError(
            f"{what} needs the simulator, but {', '.join(missing)} is not installed: "
            "pip install 'robopolicy[sim]' (robosuite 1.5.1, mujoco 3.3)"
        )
