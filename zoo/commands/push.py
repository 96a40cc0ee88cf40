"""``zoo push DIR REPO_ID``: check a student folder and upload it to the hub (``zoo.publish``)."""

from __future__ import annotations

import argparse
import sys

from zoo.publish import push_folder


def _cmd_push(args: argparse.Namespace) -> int:
    try:
        url = push_folder(args.dir, args.repo_id, private=args.private, message=args.message)
    except ConnectionError as e:
        print(f"zoo push: error: {e}", file=sys.stderr)
        return 1
    print(url)
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("push", help="check a student folder and upload it to the Hugging Face hub")
    p.add_argument("dir", help="student folder (config.json, model.safetensors, README.md, metrics.json)")
    p.add_argument("repo_id", help="hub repo to create or update, e.g. my-org/my-student")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=_cmd_push)
