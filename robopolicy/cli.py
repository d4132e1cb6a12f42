"""``robopolicy`` command line. Each command group lives beside its code and registers itself
through ``add_parser(subparsers)``; this module only assembles them (imports are lazy so that
``--help`` is fast and one broken optional part does not break the others)."""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, module that defines add_parser(subparsers))
COMMANDS = [
    ("demos", "robopolicy.envs.cli"),
    ("data", "robopolicy.data.cli"),
    ("train", "robopolicy.train.cli"),
    ("eval", "robopolicy.eval.cli"),
    ("quickstart", "robopolicy.quickstart"),
    ("bench", "robopolicy.inference.bench"),
    ("import-checkpoint", "robopolicy.checkpoints.cli"),
    ("run", "robopolicy.control.cli"),
    ("daemon", "robopolicy.daemon.cli"),
    ("emulate-arm", "robopolicy.control.emulator.cli"),
]


class UserError(Exception):
    """An error caused by the user's input: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robopolicy",
        description="Robot-manipulation policies: demos -> Zarr store -> train -> evaluate -> deploy.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:  # keep the rest of the CLI usable
            p = sub.add_parser(name, help=f"(unavailable: {e})")
            p.set_defaults(func=lambda args, e=e: _unavailable(e))
            continue
        mod.add_parser(sub)
    return parser


def _unavailable(e: Exception) -> int:
    print(f"error: this command is unavailable: {e}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (UserError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
