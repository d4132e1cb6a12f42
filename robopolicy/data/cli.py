"""``robopolicy data``: inspect, validate, repair and import episode stores.

    robopolicy data info PATH [--json]
    robopolicy data validate PATH [--deep]
    robopolicy data repair PATH [--dry-run]
    robopolicy data import {robomimic,lerobot,zarr} SRC --out DST [--overwrite] [--zarr-format 2|3]
                          [--video-backend auto|torchcodec|pyav]
    robopolicy data export lerobot STORE --out DIR [--video/--no-video] [--vcodec C] [--repo-id ID]

``validate`` exits 0 when the store is OK (notes, e.g. an incomplete generation, do not fail it),
1 when it found problems (each names the field, chunk or entry), 2 on a usage error, a path that
is not an episode store, or a check that could not run. ``repair`` rolls back only the partly
written tail a crash mid-append leaves (after backing up the metadata next to the store); it
exits 0 when done or when there is nothing to repair, 1 when it refuses a store damaged
otherwise (nothing is changed), 2 as ``validate``.

Imports write to ``DST.partial`` and rename it to ``DST`` only when complete; on failure the
partial store is deleted, so ``DST`` is never half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore, StoreCorruptError, repair_store
from robopolicy.outputs import check_output_dir, discard, staging_dir, swap_in

VALIDATE_HELP = """\
Check an episode store.

Always: attributes, shapes and dtypes, a partly written tail episode, chunk files (and the
frames in a shard's index) missing inside the episodes -- zarr would silently read those as
zeros -- and the low-dim float fields decoded in full (non-finite values, undecodable chunks).
--deep also decodes every chunk of every array (data/* and meta/*) and parses every episode's
metadata, naming each damaged field and chunk. Damaged bytes are caught for certain only where
the codec has a checksum (crc32c in v3 stores written by robopolicy); Blosc alone has none, so
there only damage that breaks decompression is found (a --deep run lists such arrays).

An incomplete `demos generate` run (store attribute `generation`) is printed as a note and does
not fail the check.

exit codes:
  0  no problems (notes may be printed)
  1  problems found (listed on stdout)
  2  usage error, not an episode store, or the check could not run
"""

REPAIR_HELP = """\
Roll back a partly written tail episode (what a crash mid-append leaves past the last complete
episode: data past the last episode end, one extra metadata entry, an unwritten last
episode_ends entry) and nothing else. A store damaged in any other way is refused and left
unchanged. Before changing anything, meta/ and every array's metadata document are copied to
<parent>/<name>.meta-backup-<timestamp>/ (with repair.json saying what was dropped); the dropped
steps' chunk files stay in place, so copying the backup back undoes the repair. Do not run it
on a store another process is writing.

exit codes:
  0  rolled back, nothing to repair, or --dry-run
  1  refused: the store is damaged otherwise (nothing changed)
  2  usage error, not an episode store, read-only (.zip), or the repair could not run
"""


EXPORT_HELP = """\
Write an episode store as a LeRobotDataset v3 folder with lerobot's own writer
(LeRobotDataset.create / add_frame / save_episode / finalize): needs lerobot, i.e. the real
environment (make real-env). Nothing is sent to the Hugging Face Hub.

Fields: image.<cam> -> observation.images.<cam>, state -> observation.state, action -> action,
reward / done -> next.reward / next.done, other fields <x> -> observation.<x>. fps is the
store's control_rate; each episode's task is its metadata's task. The rest of the episode
metadata (seed, success, ...) goes to meta/robopolicy.json, which `data import lerobot` reads
back. Videos are lossy (AV1 by default); --no-video stores lossless PNG images.

--out must not exist: the dataset is written to a hidden sibling and renamed when complete.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="inspect, validate, repair, import and export episode stores (Zarr)")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    info = sub.add_parser("info", help="episodes, steps, fields, attributes of a store")
    info.add_argument("path", help="store path (.zarr directory or .zarr.zip)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=cmd_info)

    val = sub.add_parser(
        "validate",
        help="check a store; exit 0 OK, 1 problems found, 2 not a store / could not run",
        description=VALIDATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    val.add_argument("path", help="store path")
    val.add_argument("--deep", action="store_true", help="decode every chunk of every array (reads the whole store)")
    val.set_defaults(func=cmd_validate)

    rep = sub.add_parser(
        "repair",
        help="roll back a partly written tail episode (keeps a backup of the metadata)",
        description=REPAIR_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("path", help="store path")
    rep.add_argument("--dry-run", action="store_true", help="only show what would be dropped")
    rep.set_defaults(func=cmd_repair)

    imp = sub.add_parser("import", help="import robomimic HDF5 / LeRobotDataset / diffusion_policy Zarr")
    imp.add_argument("format", choices=["robomimic", "lerobot", "zarr"], help="source format")
    imp.add_argument("src", help="source file or folder")
    imp.add_argument("--out", required=True, help="destination store path (.zarr)")
    imp.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    imp.add_argument("--zarr-format", type=int, choices=[2, 3], default=3, help="Zarr format to write (default 3)")
    imp.add_argument(
        "--video-backend",
        choices=["auto", "torchcodec", "pyav"],
        default="auto",
        help="lerobot only: video decoder (default auto: torchcodec where it loads, else pyav)",
    )
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser(
        "export",
        help="write a store as a LeRobotDataset v3 folder (lerobot's own writer; the real env)",
        description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("format", choices=["lerobot"], help="target format")
    exp.add_argument("store", help="episode store path (.zarr)")
    exp.add_argument("--out", required=True, help="new dataset folder (must not exist; nothing is replaced)")
    exp.add_argument(
        "--video",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cameras as MP4 videos (default) or, with --no-video, PNG images (lossless)",
    )
    exp.add_argument(
        "--vcodec",
        choices=["libsvtav1", "h264"],
        default="libsvtav1",
        help="video codec (default libsvtav1, lerobot's default: AV1, lossy)",
    )
    exp.add_argument("--repo-id", help="dataset name recorded by lerobot (default local/<out name>)")
    exp.add_argument("--fields", help="comma-separated fields to export (default all)")
    exp.add_argument("--fps", type=int, help="frames per second (default: the store's control_rate)")
    exp.add_argument("--robot-type", help="robot_type recorded in meta/info.json (e.g. so101_follower)")
    exp.add_argument("--task", default="", help="task text for episodes whose metadata has none")
    exp.set_defaults(func=cmd_export)


def codec_str(c: object) -> str:
    """Short codec description: ``blosc(zstd, clevel=3, bitshuffle)``, ``crc32c``."""
    if hasattr(c, "cname") and hasattr(c, "clevel"):
        name = lambda v: str(getattr(v, "value", v))  # noqa: E731  (enums of zarr's BloscCodec)
        shuffle = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}.get(c.shuffle, name(c.shuffle))
        return f"blosc({name(c.cname)}, clevel={c.clevel}, {shuffle})"
    if type(c).__name__ == "Crc32cCodec":
        return "crc32c"
    return str(c)


def resume_command(store: EpisodeStore) -> str:
    """The ``demos generate --append`` line that continues the store's generation."""
    attrs = store.attrs
    source = str(attrs.get("source", ""))
    task = attrs.get("task") or (source.removeprefix("scripted:") if source.startswith("scripted:") else "TASK")
    cmd = f"robopolicy demos generate --task {task} --out {store.path} --append"
    cameras = attrs.get("cameras")
    if isinstance(cameras, list) and cameras:
        cmd += f" --cameras {','.join(str(c) for c in cameras)}"
        sizes = {int(z.shape[1]) for k, z in store.fields.items() if k.startswith("image.") and z.ndim == 4}
        if len(sizes) == 1 and sizes != {84}:
            cmd += f" --image-size {sizes.pop()}"
    return cmd


def generation_info(store: EpisodeStore) -> dict | None:
    """The store's ``generation`` attribute (see ``EpisodeStore.generation_status``) plus a
    one-line ``summary`` and, while incomplete, the ``resume`` command; None if absent."""
    gen = store.generation_status()
    if gen is None:
        return None
    req, done = gen["requested"], gen["n_success"]
    counts = f"{'?' if done is None else done} of {'?' if req is None else req} requested successful demos"
    if gen["complete"]:
        return {**gen, "summary": f"generation: complete ({counts})", "resume": None}
    resume = resume_command(store)
    return {**gen, "summary": f"generation: INCOMPLETE — {counts} (resume with `{resume}`)", "resume": resume}


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
        "generation": generation_info(store),
        "partial_tail": store.partial_tail.to_dict() if store.partial_tail else None,
    }
    if success:
        info["success"] = {"count": int(sum(bool(s) for s in success)), "of": len(success)}
    return info


def cmd_info(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a partly written tail is shown below
        store = EpisodeStore.open(args.path, mode="r")
    with store:
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
    if info["generation"] is not None:
        print(info["generation"]["summary"])
    if info["partial_tail"] is not None:
        print(
            f"partly written tail episode (ignored): {store.partial_tail.describe()}; roll it back with "
            f"`robopolicy data repair {info['path']}`"
        )
    print("fields:")
    for k, f in info["fields"].items():
        comp = ", ".join(f["compressors"]) or "none"
        shards = f" shards {tuple(f['shards'])}" if f["shards"] else ""
        print(f"  {k:<28} {str(tuple(f['shape'])):<22} {f['dtype']:<8} chunks {tuple(f['chunks'])}{shards}  {comp}")
    print("attributes:")
    for k, v in info["attrs"].items():
        print(f"  {k}: {json.dumps(v)}")
    return 0


def _could_not_run(what: str, path: str, e: BaseException) -> int:
    """Exit 2 for an unexpected failure (never 1, which means 'problems found' / 'refused')."""
    traceback.print_exc(file=sys.stderr)
    print(f"error: could not {what} {path}: {type(e).__name__}: {e}", file=sys.stderr)
    return 2


def cmd_validate(args: argparse.Namespace) -> int:
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a partly written tail is one of the problems listed
            try:
                store = EpisodeStore.open(args.path, mode="r")
            except StoreCorruptError as e:  # damage: a finding, not a usage error
                store, problems = None, [str(e)]
        if store is not None:
            with store:
                try:
                    problems = store.validate(deep=args.deep)
                except StoreCorruptError as e:
                    problems = [str(e)]
                gen = generation_info(store)
                if gen is not None and not gen["complete"]:
                    notes.append(gen["summary"].replace("generation: ", "generation ", 1))
                if args.deep:
                    plain = [k for k, ok in store.checksummed().items() if not ok]
                    if plain:
                        notes.append(
                            f"no checksum in {', '.join(plain)} (Blosc has none): damaged bytes that still "
                            "decompress cannot be detected there"
                        )
    except (FileNotFoundError, ValueError):  # not a store, bad path: exit 2 through the CLI
        raise
    except Exception as e:  # noqa: BLE001
        return _could_not_run("validate", args.path, e)
    if not problems:
        print(f"{args.path}: OK" + (" (every chunk decoded)" if args.deep else ""))
    else:
        print(f"{args.path}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
    for n in notes:
        print(f"  note: {n}")
    return 1 if problems else 0


def cmd_repair(args: argparse.Namespace) -> int:
    try:
        result = repair_store(args.path, dry_run=args.dry_run)
    except StoreCorruptError as e:
        print(f"error: {e}", file=sys.stderr)
        print(
            f"refused: {args.path} was not changed (`robopolicy data validate --deep {args.path}` for details)",
            file=sys.stderr,
        )
        return 1
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # noqa: BLE001
        return _could_not_run("repair", args.path, e)
    tail = result.tail
    if not tail:
        print(f"{args.path}: nothing to repair ({tail.n_episodes} episodes, {tail.n_steps} steps, all complete)")
        return 0
    print(
        f"{args.path}: partly written tail episode past the {tail.n_episodes} complete episodes ({tail.n_steps} steps)"
    )
    print(f"  {'would drop' if result.dry_run else 'dropped'}: {tail.describe()}")
    if result.dry_run:
        print("dry run: nothing changed (run without --dry-run to roll it back)")
        return 0
    print(f"  backup of meta/ and the array metadata: {result.backup}")
    print("  (repair.json there lists what was dropped; copy its files back into the store to undo)")
    print(f"rolled back: {args.path} now holds {tail.n_episodes} episodes ({tail.n_steps} steps)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from robopolicy.data.importers import IMPORTERS

    dst = Path(args.out)
    src = Path(args.src)
    if not src.exists():
        raise FileNotFoundError(f"source not found: {src}")
    if args.video_backend != "auto" and args.format != "lerobot":
        raise ValueError(f"--video-backend applies to lerobot imports only, not {args.format}")
    check_output_dir(dst, "store", overwrite=args.overwrite)  # a file or a folder of other files is refused
    if src.resolve() == dst.resolve():
        raise ValueError(f"--out {dst} is the source itself; import into another path")
    partial = staging_dir(dst)
    bar = tqdm(desc=f"import {args.format}", unit="ep", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        kw = {"video_backend": None if args.video_backend == "auto" else args.video_backend}
        kw = kw if args.format == "lerobot" else {}
        store = IMPORTERS[args.format](src, partial, zarr_format=args.zarr_format, progress=progress, **kw)
        n_ep, n_steps = store.n_episodes, store.n_steps
    except ImportError as e:
        discard(partial)
        raise ValueError(str(e)) from None
    except BaseException:
        discard(partial)
        raise
    finally:
        bar.close()
    swap_in(partial, dst)  # the old store stays whole until the new one is complete
    print(f"imported {n_ep} episodes ({n_steps} steps) from {src} into {dst}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from robopolicy.data.exporters import EXPORTERS

    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise ValueError(f"output {out} already exists; export into a new folder (nothing is replaced)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a partly written tail is ignored (read-only)
        store = EpisodeStore.open(args.store, mode="r")
    bar = tqdm(desc=f"export {args.format}", unit="ep", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        EXPORTERS[args.format](
            store,
            out,
            use_videos=args.video,
            vcodec=args.vcodec,
            repo_id=args.repo_id,
            fields=args.fields.split(",") if args.fields else None,
            fps=args.fps,
            robot_type=args.robot_type,
            task=args.task,
            progress=progress,
        )
    except (ImportError, FileExistsError) as e:
        raise ValueError(str(e)) from None
    finally:
        bar.close()
        store.close()
    kind = f"{args.vcodec} videos" if args.video else "PNG images"
    print(f"exported {store.n_episodes} episodes ({store.n_steps} steps, cameras as {kind}) from {args.store} to {out}")
    return 0
