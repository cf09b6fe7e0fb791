"""`pac` command line: parse -> config -> call the library. Every subcommand has `--help`.

Each module in this package owns one command (group) and exposes `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pac import __version__
from pac.config import ConfigError

# Command modules, in the order `pac --help` lists them. Imported lazily so `pac --help` stays fast.
COMMANDS = ("pipeline", "core", "tasks", "data", "train", "finetune", "evaluate", "collect", "registry")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pac", description="Perceiver-Actor-Critic offline RL: data, training, evaluation, deployment.")
    parser.add_argument("--version", action="version", version=f"pac {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"pac.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"pac.cli.{name}":
                continue  # command group not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"pac: configuration error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        # Bad input (datasets, checkpoints, credentials, files): the message names the problem.
        if args.verbose:
            raise
        print(f"pac: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pac: interrupted", file=sys.stderr)
        return 130
