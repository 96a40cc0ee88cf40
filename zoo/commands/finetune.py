"""``zoo finetune STUDENT --data SOURCE``: fine-tune a pretrained student on a user's data (``zoo.finetune``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from zoo.bench import format_table
from zoo.commands._shared import parse_teachers
from zoo.finetune import finetune


def _cmd_finetune(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # two threads on a shared core only slow training down
    out = args.out or f"{Path(str(args.student).rstrip('/')).name}-finetuned"
    try:
        folder = finetune(
            args.student,
            args.data,
            out,
            teachers=parse_teachers(args.teacher),
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            temperature=args.temperature,
            seed=args.seed,
            skip_bad=args.skip_bad,
        )
    except OSError as e:  # a hub id, catalogue name or teacher id while offline; a missing folder
        print(f"zoo finetune: error: {e}", file=sys.stderr)
        return 1
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    print(format_table(metrics))
    print(f"wrote {folder}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pretrained student on your data (new heads when labels differ)")
    p.add_argument("student", help="catalogue name, hub id or student folder")
    p.add_argument("--data", required=True, help="data source for zoo.data.load (file, folder, hub id, quickstart)")
    p.add_argument("--teacher", action="append", metavar="MODALITY=PATH", help="add KD from a teacher (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: <student>-finetuned)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--temperature", type=float, default=2.0, help="KD temperature (with --teacher)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="drop data rows with problems instead of stopping")
    p.set_defaults(func=_cmd_finetune)
