"""``zoo eval DIR --data SOURCE``: measure a saved student on a split of a dataset."""

from __future__ import annotations

import argparse
import json

import torch

from zoo.train.report import evaluate_folder


def _cmd_eval(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    entry = evaluate_folder(args.dir, args.data, split=args.split)
    print(json.dumps(entry, indent=2))
    return 0


def add_cli(sub) -> None:
    e = sub.add_parser("eval", help="measure a saved student on a dataset's test split")
    e.add_argument("dir", help="student folder")
    e.add_argument("--data", required=True, help="dataset source (as for zoo distill)")
    e.add_argument("--split", default="test")
    e.set_defaults(func=_cmd_eval)
