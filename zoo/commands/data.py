"""``zoo data SOURCE``: load, check and summarise a dataset (``zoo.data``)."""

from __future__ import annotations

import argparse
import json
import sys

from zoo.commands._shared import SOURCE_HELP, parse_teachers
from zoo.data import load
from zoo.modalities import MODALITIES
from zoo.modalities.text import train_wordpiece_tokenizer
from zoo.teachers import load_teacher
from zoo.train.rows import truncation_lines, truncation_report


def add_cli(subparsers) -> None:
    """Register ``zoo data SOURCE``: load, check and summarise a dataset."""
    p = subparsers.add_parser(
        "data",
        help="check a dataset and print a summary",
        description="Load a dataset, check every row, and print rows per split, modalities, labels, every problem "
        "found and how many rows the preprocessing truncates. Exits 1 when there are problems, unless --skip-bad.",
    )
    p.add_argument("source", help=f"SOURCE: {SOURCE_HELP}")
    for key in ("text", "image", "audio", "label", "id", "split"):
        p.add_argument(
            f"--{key}-column", default=key, metavar="NAME", help=f"column holding the {key} (default: {key})"
        )
    p.add_argument("--skip-bad", action="store_true", help="skip rows with problems (they are still listed)")
    p.add_argument(
        "--allow-outside-paths", action="store_true", help="accept media paths that leave the data file's folder"
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-map", default=None, help="JSON label map to use (labels outside it are problems)")
    p.add_argument("--save-label-map", default=None, metavar="PATH", help="write the label map JSON here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--teacher", action="append", default=[], metavar="MODALITY=PATH",
        help="also report how many rows this teacher's preprocessing truncates (text past its max_length); a text "
        "teacher's tokenizer also measures the student's (tokenizer: teacher / auto), else a WordPiece trained here",
    )  # fmt: skip
    p.add_argument("--max-length", type=int, default=64, help="the student's text max_length (the user recipe's: 64)")
    p.add_argument("--vocab-size", type=int, default=4096, help="without a text teacher: the student's WordPiece size")
    p.add_argument("--clip-seconds", type=float, default=1.0, help="the student's audio clip length (default: 1.0)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    data = load(
        args.source,
        text_column=args.text_column,
        image_column=args.image_column,
        audio_column=args.audio_column,
        label_column=args.label_column,
        id_column=args.id_column,
        split_column=args.split_column,
        on_error="skip",
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        label_map=args.label_map,
        allow_outside_paths=args.allow_outside_paths,
    )
    truncation = _truncation(data, args)
    summary = {**data.summary(), "truncation": truncation}
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else data)
    if not args.json:
        for split, report in truncation.items():
            for line in truncation_lines(report, split):
                print(line)
    if args.save_label_map:
        print(f"label map written to {data.save_label_map(args.save_label_map)}")
    if data.report.problems and not args.skip_bad:
        print(
            f"zoo data: {len(data.report.problems)} problem(s); fix them or pass --skip-bad to skip those rows.",
            file=sys.stderr,
        )
        return 1
    return 0


def _truncation(data, args: argparse.Namespace) -> dict:
    """Per split, what the student's preprocessing (audio clips; text with a given teacher's tokenizer) and each
    given teacher's cut: ``zoo.train.rows.truncation_report``."""
    teachers = {m: load_teacher(p, modality=m) for m, p in parse_teachers(args.teacher).items()}
    pre = {}
    if "audio" in data.modalities:
        pre["audio"] = MODALITIES["audio"].preprocessor(MODALITIES["audio"].config(clip_seconds=args.clip_seconds))
    tokenizer = getattr(getattr(teachers.get("text"), "processors", None), "processor", None)
    if "text" in data.modalities and tokenizer is None:  # the student's own (tokenizer: train): a WordPiece on train
        texts = [t for t in data.splits["train"].dataset["text"] if t]
        tokenizer = train_wordpiece_tokenizer(texts, vocab_size=args.vocab_size) if texts else None
    if "text" in data.modalities and tokenizer is not None:
        config = MODALITIES["text"].config(max_length=args.max_length, vocab_size=len(tokenizer))
        pre["text"] = MODALITIES["text"].preprocessor(tokenizer, config)
    return {name: truncation_report(split, pre, teachers) for name, split in data.splits.items() if len(split)}
