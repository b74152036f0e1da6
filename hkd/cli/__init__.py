"""Command-line interface: ``python -m hkd <command>`` (also the ``hkd`` script).

Each command lives in its own module of this package and exposes
``add_parser(subparsers)``, which registers the sub-parser and sets
``func=run`` on it. ``run(args) -> int`` returns the exit status.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module under hkd.cli; the module is imported lazily so that
# `hkd eval` never pays for importing torch.
COMMANDS = {
    "presets": "hkd.cli.presets_cmd",
    "info": "hkd.cli.info_cmd",
    "synth": "hkd.cli.synth_cmd",
    "data": "hkd.cli.data_cmd",
    "predict": "hkd.cli.predict_cmd",
    "eval": "hkd.cli.eval_cmd",
    "compare": "hkd.cli.compare_cmd",
    "diagnose": "hkd.cli.diagnose_cmd",
    "train": "hkd.cli.train_cmd",
    "distill": "hkd.cli.train_cmd",
    "train-aux": "hkd.cli.aux_cmd",
    "jobs": "hkd.cli.jobs_cmd",
    "export": "hkd.cli.export_cmd",
    "import": "hkd.cli.import_cmd",
}


class CLIError(Exception):
    """A user-facing error: printed as ``hkd <command>: error: <message>`` with exit 2."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hkd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the library version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in COMMANDS.items():
        if wanted in COMMANDS and name != wanted:
            # cheap placeholder so `hkd --help` lists everything without importing it all
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # command not built yet
            raise
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.version:
        from hkd import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"hkd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hkd {args.command}: interrupted", file=sys.stderr)
        return 130
