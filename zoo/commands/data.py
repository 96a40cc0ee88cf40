"""``zoo data SOURCE``: load, check and summarise a dataset (``zoo.data``)."""

from __future__ import annotations

import argparse
import json
import sys

from zoo.data import load


def add_cli(subparsers) -> None:
    """Register ``zoo data SOURCE``: load, check and summarise a dataset."""
    p = subparsers.add_parser(
        "data",
        help="check a dataset and print a summary",
        description="Load a dataset (CSV/JSONL/Parquet file, <label>/<file> folder, save_to_disk folder, hub id, or "
        "'quickstart'), check every row, and print rows per split, modalities, labels and every problem found. "
        "Exits 1 when there are problems, unless --skip-bad.",
    )
    p.add_argument("source")
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
    print(json.dumps(data.summary(), indent=2, ensure_ascii=False) if args.json else data)
    if args.save_label_map:
        print(f"label map written to {data.save_label_map(args.save_label_map)}")
    if data.report.problems and not args.skip_bad:
        print(
            f"zoo data: {len(data.report.problems)} problem(s); fix them or pass --skip-bad to skip those rows.",
            file=sys.stderr,
        )
        return 1
    return 0
