"""Run-directory checkpoints.

Layout::

    RUN_DIR/checkpoints/step_<n>/policy/        deployable policy (EMA weights), Policy.save format
    RUN_DIR/checkpoints/step_<n>/train_state/
        model.safetensors                       raw (non-EMA) weights
        state.pt                                optimizer, LR scheduler, EMA counters, RNG states,
                                                data-order state, step (torch.save of tensors and
                                                plain dicts; loaded with weights_only=True)
        COMPLETE                                written last: marks a usable checkpoint
    RUN_DIR/latest -> checkpoints/step_<n>/policy   (relative symlink; a copy where links fail)
    RUN_DIR/best   -> checkpoints/step_<m>/policy   best evaluation success so far
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

COMPLETE = "COMPLETE"
_STEP_RE = re.compile(r"^step_(\d+)$")


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step}"


def rng_state() -> dict[str, Any]:
    """Global RNG states: torch CPU (+ CUDA), numpy and Python's ``random``."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "python": _python_state_to_tensor(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
    random.setstate(_python_state_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(directory: Path, model: nn.Module, state: dict[str, Any]) -> None:
    """Raw weights as safetensors and everything else as ``state.pt``; ``COMPLETE`` last."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(directory / "model.safetensors"))
    torch.save(state, directory / "state.pt")
    (directory / COMPLETE).write_text("ok\n")


def load_train_state(directory: Path, model: nn.Module) -> dict[str, Any]:
    """Load raw weights into ``model`` (strict) and return the ``state.pt`` dict."""
    if not (directory / COMPLETE).is_file():
        raise FileNotFoundError(f"{directory} is not a complete training checkpoint")
    weights = load_file(str(directory / "model.safetensors"))
    model.load_state_dict(weights, strict=True)
    return torch.load(directory / "state.pt", weights_only=True, map_location="cpu")


def latest_complete(run_dir: Path) -> Path | None:
    """The newest ``checkpoints/step_<n>`` whose train state is complete, if any."""
    best: tuple[int, Path] | None = None
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    for d in root.iterdir():
        m = _STEP_RE.match(d.name)
        if m and (d / "train_state" / COMPLETE).is_file() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), d)
    return best[1] if best else None


def point(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target`` (atomic replace); copy if links fail."""
    tmp = link.with_name(link.name + ".tmp")
    _remove(tmp)
    try:
        tmp.symlink_to(Path("checkpoints") / target.relative_to(link.parent / "checkpoints"))
    except (OSError, ValueError):
        shutil.copytree(target, tmp)
    if link.is_dir() and not link.is_symlink():
        _remove(link)
    tmp.replace(link)


def prune(run_dir: Path, keep: int, protect: tuple[Path, ...]) -> None:
    """Delete all but the ``keep`` newest step checkpoints, never one in ``protect``."""
    if keep <= 0:
        return
    root = run_dir / "checkpoints"
    steps = sorted((int(m.group(1)), d) for d in root.iterdir() if (m := _STEP_RE.match(d.name)) is not None)
    protected = {p.resolve() for p in protect if p.exists()}
    for _, d in steps[:-keep]:
        if d.resolve() not in protected and (d / "policy").resolve() not in protected:
            shutil.rmtree(d, ignore_errors=True)


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)


def _numpy_state_to_tensors(st: tuple) -> dict[str, Any]:
    return {"keys": torch.from_numpy(st[1].astype(np.int64)), "pos": st[2], "gauss": st[3], "cached": st[4]}


def _numpy_state_from_tensors(d: dict[str, Any]) -> tuple:
    return ("MT19937", d["keys"].numpy().astype(np.uint32), int(d["pos"]), int(d["gauss"]), float(d["cached"]))


def _python_state_to_tensor(st: tuple) -> dict[str, Any]:
    return {"version": st[0], "internal": torch.tensor(st[1], dtype=torch.int64), "gauss": st[2]}


def _python_state_from_tensor(d: dict[str, Any]) -> tuple:
    return (int(d["version"]), tuple(int(x) for x in d["internal"].tolist()), d["gauss"])
