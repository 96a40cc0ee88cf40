"""The ``zoo`` command line: wires the verbs of ``zoo.commands`` together (one module per verb)."""

from __future__ import annotations

import argparse
import importlib
import sys

from zoo.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="distill-zoo: multimodal knowledge distillation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"zoo.commands.{name}").add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options (`zoo distill --out x stages.a.steps=5`): argparse leaves those
    # positionals over once an option ended the first run of them, so they are collected here
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "items") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.items = [*args.items, *extra]
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
        OSError,
    ) as e:  # user errors: one clear line, no traceback
        print(f"zoo {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
