"""``zoo catalogue add RUN_DIR --name NAME`` / ``zoo catalogue list``: maintain the zoo's catalogue of published
students (``zoo.catalogue``)."""

from __future__ import annotations

import argparse

from zoo.catalogue import add_from_run, print_catalogue


def _cmd_catalogue(args: argparse.Namespace) -> int:
    if args.action == "add":
        entry = add_from_run(args.run_dir, args.name, args.hub_id, ship=args.ship)
        shipped = f"; weights shipped in model_cards/{entry['folder']}/" if entry.get("folder") else ""
        print(f"added {entry['name']} ({entry['hub_id']}); card: {entry['card']}{shipped}")
    print_catalogue()
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("catalogue", help="maintain the zoo's catalogue of published students (add, list)")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add (or replace) a published student from a run folder")
    add.add_argument("run_dir", help="output folder of `zoo distill` (config.json, model.safetensors, metrics.json)")
    add.add_argument(
        "--name", required=True, help="org/short-name or short-name, e.g. distill-zoo/hybrid-tiny-quickstart"
    )
    add.add_argument("--hub-id", default=None, help="hub repo the student is published at (default: the name)")
    add.add_argument(
        "--ship", action="store_true", help="copy the weights into model_cards/: the name loads offline (package data)"
    )
    actions.add_parser("list", help="print the published students")
    p.set_defaults(func=_cmd_catalogue)
