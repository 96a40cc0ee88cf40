"""The ``zoo`` command line: wires the verbs of ``zoo.commands`` together (one module per verb)."""

from __future__ import annotations

import argparse
import importlib
import sys

from zoo import __version__, console
from zoo.commands import COMMANDS


def _add_common(parser: argparse.ArgumentParser) -> None:
    """-q / -v / --no-progress, accepted before or after the verb (SUPPRESS: a verb's parser does not reset what
    the top-level one read)."""
    options = parser._option_string_actions
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="results only")
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="also the libraries' messages"
    )
    if "--no-progress" not in options:
        parser.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="distill-zoo: multimodal knowledge distillation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"zoo.commands.{name}").add_cli(sub)
    for verb in sub.choices.values():
        _add_common(verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options (`zoo distill --out x stages.a.steps=5`): argparse leaves those
    # positionals over once an option ended the first run of them, so they are collected here
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "items") or any(e.startswith("-") for e in extra):
            # an option the verb does not know: the verb's usage, not the top-level one
            verb = parser._subparsers._group_actions[0].choices.get(args.command) if args.command else None
            (verb or parser).error(f"unrecognized arguments: {' '.join(extra)}")
        args.items = [*args.items, *extra]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    console.configure(
        quiet=getattr(args, "quiet", False),
        verbose=getattr(args, "verbose", False),
        no_progress=getattr(args, "no_progress", False),
    )
    args.no_progress = not console.progress
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
