"""``zoo distill [RECIPE] [--data SOURCE] [--teacher MODALITY=PATH ...] [--student NAME] [--out DIR] [--resume]
[key=value ...]``: run a recipe (``zoo.train.run``)."""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from zoo.commands._shared import SOURCE_HELP, parse_teachers, recipe_and_overrides
from zoo.train.loop import StopRun
from zoo.train.run import distill


def _cmd_distill(args: argparse.Namespace) -> int:
    if os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(1)  # these machines share one core between two vCPUs: more threads only stall
    recipe, overrides = recipe_and_overrides(
        args.items,
        {
            "student": ("--student", args.student),
            "data.source": ("--data", args.data),
            "data.unlabeled": ("--unlabeled", args.unlabeled),
        },
        default=None,
    )
    # the offline demo without data; your data gets the recipe made for it (every label, epochs sized to the data)
    recipe = recipe or ("user" if args.data and args.data != "quickstart" else "quickstart")
    t0 = time.perf_counter()
    try:
        distill(
            recipe,
            args.out,
            data_source=args.data,
            teachers=parse_teachers(args.teacher),
            student=args.student,
            overrides=overrides,
            resume=args.resume,
            progress=not args.no_progress,
            unlabeled=args.unlabeled,
            overwrite=args.overwrite,
            skip_bad=args.skip_bad,
            allow_outside_paths=args.allow_outside_paths,
        )
    except StopRun as e:
        if _is_main_process():
            print(f"zoo distill: {e}", file=sys.stderr)
        return 3
    if _is_main_process():  # one line for a run of several processes
        print(f"zoo distill: done in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


def _is_main_process() -> bool:
    """Whether this is the run's main process (after a run: accelerate's state is set up by then)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def add_cli(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distill teachers into a student with a staged recipe (no arguments: the offline quickstart demo)",
        description="zoo distill [RECIPE] [--data SOURCE] [--teacher MODALITY=PATH_OR_ID ...] [--student NAME] "
        "[--out DIR] [--resume] [key=value ...]",
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="RECIPE|key=value",
        help="recipe name or YAML file and key=value overrides (anywhere)",
    )
    p.add_argument("--data", default=None, metavar="SOURCE", help=f"dataset (default: the recipe's): {SOURCE_HELP}")
    p.add_argument("--teacher", action="append", metavar="MODALITY=PATH_OR_ID", help="a teacher per modality")
    p.add_argument("--unlabeled", default=None, metavar="SOURCE", help="rows without labels: the teachers label them")
    p.add_argument("--student", default=None, help="registered student architecture (e.g. hybrid_tiny)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run --out holds (default: refuse)")
    p.add_argument("--skip-bad", action="store_true", help="drop data rows with problems instead of stopping")
    p.add_argument(
        "--allow-outside-paths", action="store_true", help="accept media paths that leave the data file's folder"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (never shown when not on a terminal)")
    p.set_defaults(func=_cmd_distill)
