"""``zoo teacher MODEL --data SOURCE --out DIR``: fine-tune a pretrained model into the task teacher."""

from __future__ import annotations

import argparse
import os

from zoo import data as zdata
from zoo.teachers.finetune import FinetuneSettings, finetune_teacher

TFIDF_FOLDS = 5  # cross-fitting a TF-IDF teacher costs seconds; without it its train-row outputs are near one-hot


def _cmd_teacher(args: argparse.Namespace) -> int:
    import torch

    if os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(1)  # these machines share one core between two vCPUs: more threads only stall
    settings = FinetuneSettings(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length if args.max_length > 0 else None,
        folds=args.folds if args.folds is not None else (TFIDF_FOLDS if args.model == "tfidf" else 1),
        seed=args.seed,
        group_by_length=not args.no_group_by_length,
    )
    settings.validate()  # before the data is read
    data = zdata.load(args.data, on_error="skip" if args.skip_bad else "raise", seed=args.seed)
    finetune_teacher(
        args.model,
        data,
        args.out,
        modality=args.modality,
        settings=settings,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
    )
    return 0


def add_cli(sub) -> None:
    d = FinetuneSettings()
    p = sub.add_parser(
        "teacher",
        help="fine-tune a pretrained model (transformers / timm folder, hub id, scratch:MODALITY) as the task teacher",
        description="zoo teacher MODEL --data SOURCE --out DIR: a transformers folder or hub id gets a new "
        "classification head sized to the data's labels (AutoModelFor{Sequence,Image,Audio}Classification); a timm "
        "folder gets a new classifier; scratch:text|image|audio builds the quickstart's small teacher; tfidf fits "
        "TF-IDF + logistic regression on the texts; ensemble:DIR1,DIR2 joins teacher folders into one. The best "
        "validation checkpoint is kept; DIR/metrics.json holds its validation and test accuracy, DIR/README.md a "
        "card. Pass DIR to `zoo distill --teacher MODALITY=DIR`.",
    )
    p.add_argument(
        "model", help="transformers / timm folder, hub id, timm model name, scratch:MODALITY, tfidf, ensemble:DIR1,DIR2"
    )
    p.add_argument(
        "--data", required=True, help="dataset source, as for zoo distill (a folder of train/validation/test.csv too)"
    )
    p.add_argument("--out", required=True, help="teacher folder to write")
    p.add_argument("--modality", default=None, choices=["text", "image", "audio"], help="default: from the model")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length, help="text tokens (0: the tokenizer's limit)")
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        help=f"K > 1: K cross-fitted teachers, each without a fold (default {d.folds}; tfidf: {TFIDF_FOLDS})",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--no-group-by-length",
        action="store_true",
        help="text: plain random batches (default: batches of similar length, less padding)",
    )
    p.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--skip-bad", action="store_true", help="drop rows with problems instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.set_defaults(func=_cmd_teacher)
