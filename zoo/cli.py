"""The ``zoo`` command line. Each subcommand lives with its feature; this file only wires them together.

A feature module registers itself with ``add_cli(subparsers)``: it adds its parser and sets
``func=handler`` on it. Modules are imported lazily so ``zoo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define add_cli(subparsers). Order is the order of `zoo --help`.
COMMAND_MODULES = [
    "zoo.registry",
    "zoo.distill",
    "zoo.commands.teacher",
    "zoo.data",
    "zoo.finetune",
    "zoo.cards",
    "zoo.hub",
    "zoo.prune",
    "zoo.quant",
    "zoo.export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="distill-zoo: multimodal knowledge distillation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        KeyError,
        TypeError,
    ) as e:  # user errors: one clear line, no traceback
        print(f"zoo {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
