"""Exporters from an :class:`~robopolicy.data.store.EpisodeStore` to other formats.

Each exporter has the signature ``export_X(store, out, *, progress=None, **kw) -> Path``; ``out``
must not exist (nothing is ever replaced) and is written only once complete.

* :mod:`.lerobot` : LeRobotDataset v3 (lerobot's own writer, in the ``real`` environment)
"""

from __future__ import annotations

from robopolicy.data.exporters.lerobot import export_lerobot, field_to_lerobot_key

EXPORTERS = {"lerobot": export_lerobot}

__all__ = ["EXPORTERS", "export_lerobot", "field_to_lerobot_key"]
