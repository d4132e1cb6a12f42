"""Output paths that never lose a user's data.

Every command that writes a directory checks it *before* any work starts
(:func:`check_output_dir`): a regular file is refused, an existing path is refused without
``overwrite``, and with ``overwrite`` only a path of the expected kind (an episode store, a
run directory, an evaluation report) or an empty directory may be replaced. The replacement
is written to a temporary sibling (:func:`staging_dir`) and swapped in by two renames only
when it is complete (:func:`swap_in`), so an interrupted or failed job leaves the old output
as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def is_episode_store(path: Path) -> bool:
    """A Zarr episode store (v2 or v3 directory with ``meta/episode_ends``), read without zarr."""
    ends = path / "meta" / "episode_ends"
    return path.is_dir() and ((ends / "zarr.json").is_file() or (ends / ".zarray").is_file())


def is_run_dir(path: Path) -> bool:
    """A training run directory (``train_config.yaml`` or ``run.json`` or ``checkpoints/``)."""
    return path.is_dir() and any((path / n).exists() for n in ("train_config.yaml", "run.json", "checkpoints"))


def is_report_dir(path: Path) -> bool:
    """An evaluation report directory (``report.json``)."""
    return path.is_dir() and (path / "report.json").is_file()


KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "store": ("an episode store", is_episode_store),
    "run": ("a run directory", is_run_dir),
    "report": ("an evaluation report", is_report_dir),
}


def check_output_dir(path: str | os.PathLike, kind: str, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """Check an output directory before any work; ``ValueError`` naming the path if it may not be written.

    ``kind`` is ``"store"``, ``"run"`` or ``"report"``. With ``overwrite`` an existing path must
    be of that kind or an empty directory; nothing is touched here.
    """
    path = Path(path)
    what, is_kind = KINDS[kind]
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{flag} {path} is a broken symbolic link")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; it must be a directory ({what})")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{flag} {path}: its parent {parent} is a file")
    if path.exists():
        if not overwrite:
            raise ValueError(f"output {path} already exists (pass --overwrite / overwrite=True to replace it)")
        if not is_kind(path) and any(path.iterdir()):
            raise ValueError(
                f"refusing to overwrite {path}: it is not {what} and not empty "
                f"(its files are kept; choose another {flag} or empty it yourself)"
            )
    return path


def staging_dir(path: str | os.PathLike) -> Path:
    """A fresh temporary sibling ``.<name>.partial-<pid>`` of ``path`` (removed first if a stale one exists)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def swap_in(staged: Path, path: Path) -> None:
    """Replace ``path`` by the complete ``staged`` directory: rename the old one aside, rename
    ``staged`` in, then delete the old one. At every instant one of the two is complete."""
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    try:
        staged.rename(path)
    except BaseException:
        if old is not None:
            old.rename(path)
        raise
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def discard(staged: Path) -> None:
    """Remove an unfinished staging directory."""
    shutil.rmtree(staged, ignore_errors=True)
