"""Importers into an :class:`~robopolicy.data.store.EpisodeStore`.

Each importer has the signature ``import_X(src, dst, *, overwrite=False, progress=None, **kw) -> EpisodeStore``
and writes episode by episode with :meth:`EpisodeStore.add_episode`. ``progress`` is called
``progress(done, total)`` after every episode (the CLI passes a tqdm update).

* :mod:`.robomimic` : robomimic HDF5 (``data/demo_*/obs/<key>``, ``actions``)
* :mod:`.zarr_dp`   : diffusion_policy Zarr (v2 directory or ``.zarr.zip``)
* :mod:`.lerobot`   : LeRobotDataset v3 local folder (lerobot in its own environment)
"""

from __future__ import annotations

from robopolicy.data.importers.lerobot import import_lerobot
from robopolicy.data.importers.robomimic import ROBOMIMIC_RENAME, import_robomimic, robomimic_key_to_field
from robopolicy.data.importers.zarr_dp import import_diffusion_policy_zarr

IMPORTERS = {
    "robomimic": import_robomimic,
    "zarr": import_diffusion_policy_zarr,
    "lerobot": import_lerobot,
}

__all__ = [
    "IMPORTERS",
    "ROBOMIMIC_RENAME",
    "import_diffusion_policy_zarr",
    "import_lerobot",
    "import_robomimic",
    "robomimic_key_to_field",
]
