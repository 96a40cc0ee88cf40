"""``zoo prune DIR --keep K --out OUT``: structured pruning of a student folder (``zoo.compress.prune``)."""

from __future__ import annotations

import argparse

import torch

from zoo.bench import update_metrics
from zoo.compress.hardware import copy_metrics, data_batches, metrics_entry
from zoo.compress.prune import CRITERIA, SCOPES, prune_student, pruned_widths
from zoo.io import staged_folder
from zoo.students import load_student


def _cmd_prune(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    with staged_folder(args.out, overwrite=args.overwrite) as stage:  # a whole new folder, swapped in at the end
        student = load_student(args.dir)
        batches = None
        if args.criterion == "taylor":
            batches, note = data_batches(student, args.data, args.batches, args.batch_size, split="train")
            print(f"taylor importance: {note}")
        pruned = prune_student(
            student, keep=args.keep, criterion=args.criterion, scope=args.scope, round_to=args.round_to,
            importance_batches=batches,
        )  # fmt: skip
        copy_metrics(args.dir, stage)
        pruned.save_pretrained(stage)
        entry = metrics_entry(pruned, stage, args.data, keep_ratio=args.keep, criterion=args.criterion)
        if entry["accuracy"] is None:
            entry["note"] = "accuracy before KD recovery unknown: pass --data, or recover with the recipe's prune stage"
        update_metrics(stage, {"pruned": entry})
    before, after = student.num_params(), pruned.num_params()
    print(f"pruned {args.dir} -> {args.out}: {before / 1e6:.2f}M -> {after / 1e6:.2f}M params ({after / before:.0%}); "
          f"widths {pruned_widths(pruned)}")  # fmt: skip
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("prune", help="structured pruning of a student folder (channels, heads, MLP neurons)")
    p.add_argument("dir", help="student folder (config.json + model.safetensors)")
    p.add_argument("--keep", type=float, required=True, help="share of channels / heads / neurons kept, in (0, 1]")
    p.add_argument("--out", required=True, help="folder to write the pruned student to")
    p.add_argument("--criterion", choices=CRITERIA, default="l1", help="importance: weight L1 or Taylor |w * grad|")
    p.add_argument("--scope", choices=SCOPES, default="global", help="rank units across layers or within each")
    p.add_argument("--round-to", type=int, default=8, help="round channel widths to a multiple of this (default 8)")
    p.add_argument("--data", help="data source (zoo.data.load) for taylor importance and the accuracy in metrics")
    p.add_argument("--batches", type=int, default=8, help="batches for taylor importance (default 8)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overwrite", action="store_true", help="replace an --out folder that zoo did not write")
    p.set_defaults(func=_cmd_prune)
