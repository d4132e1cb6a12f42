"""``robopolicy data``: inspect, validate and import episode stores.

    robopolicy data info PATH [--json]
    robopolicy data validate PATH
    robopolicy data import {robomimic,lerobot,zarr} SRC --out DST [--overwrite] [--zarr-format 2|3]

Imports write to ``DST.partial`` and rename it to ``DST`` only when complete; on failure the
partial store is deleted, so ``DST`` is never half-written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="inspect, validate and import episode stores (Zarr)")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    info = sub.add_parser("info", help="episodes, steps, fields, attributes of a store")
    info.add_argument("path", help="store path (.zarr directory or .zarr.zip)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=cmd_info)

    val = sub.add_parser("validate", help="check a store; exit 0 if OK, 1 with the problems listed")
    val.add_argument("path", help="store path")
    val.set_defaults(func=cmd_validate)

    imp = sub.add_parser("import", help="import robomimic HDF5 / LeRobotDataset / diffusion_policy Zarr")
    imp.add_argument("format", choices=["robomimic", "lerobot", "zarr"], help="source format")
    imp.add_argument("src", help="source file or folder")
    imp.add_argument("--out", required=True, help="destination store path (.zarr)")
    imp.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    imp.add_argument("--zarr-format", type=int, choices=[2, 3], default=3, help="Zarr format to write (default 3)")
    imp.set_defaults(func=cmd_import)


def codec_str(c: object) -> str:
    """Short codec description: ``blosc(zstd, clevel=3, bitshuffle)``."""
    if hasattr(c, "cname") and hasattr(c, "clevel"):
        name = lambda v: str(getattr(v, "value", v))  # noqa: E731  (enums of zarr's BloscCodec)
        shuffle = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}.get(c.shuffle, name(c.shuffle))
        return f"blosc({name(c.cname)}, clevel={c.clevel}, {shuffle})"
    return str(c)


def store_info(store: EpisodeStore) -> dict:
    """Summary of a store as plain JSON-able data."""
    lengths = store.episode_lengths
    fields = {}
    for k, z in store.fields.items():
        fields[k] = {
            "shape": list(z.shape),
            "dtype": str(z.dtype),
            "chunks": list(z.chunks),
            "shards": list(z.shards) if z.shards else None,
            "compressors": [codec_str(c) for c in z.compressors],
        }
    metas = store.episodes_metadata
    success = [m["success"] for m in metas if "success" in m]
    info = {
        "path": str(store.path),
        "zarr_format": store.zarr_format,
        "episodes": store.n_episodes,
        "steps": store.n_steps,
        "fields": fields,
        "attrs": store.attrs,
        "episode_length": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "max": int(lengths.max()) if len(lengths) else 0,
            "mean": float(lengths.mean()) if len(lengths) else 0.0,
            "median": float(np.median(lengths)) if len(lengths) else 0.0,
        },
    }
    if success:
        info["success"] = {"count": int(sum(bool(s) for s in success)), "of": len(success)}
    return info


def cmd_info(args: argparse.Namespace) -> int:
    with EpisodeStore.open(args.path, mode="r") as store:
        info = store_info(store)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    el = info["episode_length"]
    print(f"{info['path']}  (zarr v{info['zarr_format']})")
    print(f"episodes: {info['episodes']}   steps: {info['steps']}")
    print(f"episode length: min {el['min']}  max {el['max']}  mean {el['mean']:.1f}  median {el['median']:.1f}")
    if "success" in info:
        print(f"success: {info['success']['count']} / {info['success']['of']}")
    print("fields:")
    for k, f in info["fields"].items():
        comp = ", ".join(f["compressors"]) or "none"
        shards = f" shards {tuple(f['shards'])}" if f["shards"] else ""
        print(f"  {k:<28} {str(tuple(f['shape'])):<22} {f['dtype']:<8} chunks {tuple(f['chunks'])}{shards}  {comp}")
    print("attributes:")
    for k, v in info["attrs"].items():
        print(f"  {k}: {json.dumps(v)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            store = EpisodeStore.open(args.path, mode="r")
        except ValueError as e:  # inconsistent store: a problem to report, not a usage error
            if "not an episode store" in str(e):
                raise
            problems = [str(e)]
        else:
            with store:
                problems = store.validate()
    problems += [f"warning: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
    if not problems:
        print(f"{args.path}: OK")
        return 0
    print(f"{args.path}: {len(problems)} problem(s)")
    for p in problems:
        print(f"  - {p}")
    return 1


def cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from robopolicy.data.importers import IMPORTERS

    dst = Path(args.out)
    src = Path(args.src)
    if not src.exists():
        raise FileNotFoundError(f"source not found: {src}")
    if dst.exists() and not args.overwrite:
        raise ValueError(f"{dst} already exists (pass --overwrite to replace it)")
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    bar = tqdm(desc=f"import {args.format}", unit="ep", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        store = IMPORTERS[args.format](src, partial, zarr_format=args.zarr_format, progress=progress)
        n_ep, n_steps = store.n_episodes, store.n_steps
    except ImportError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(str(e)) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        bar.close()
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    partial.rename(dst)
    print(f"imported {n_ep} episodes ({n_steps} steps) from {src} into {dst}")
    return 0
