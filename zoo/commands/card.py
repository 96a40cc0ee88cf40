"""``zoo card DIR``: regenerate a student folder's model card from its metrics.json (``zoo.cards``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cards import DEFAULT_LICENSE, write_card


def _cmd_card(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not (folder / "metrics.json").exists():
        raise FileNotFoundError(f"{folder / 'metrics.json'} is missing; `zoo card` renders a run folder's metrics.")
    path = write_card(folder, repo_id=args.repo_id, license=args.license)
    print(path)
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("card", help="regenerate a student folder's model card (README.md) from its metrics.json")
    p.add_argument("dir", help="student folder with config.json, model.safetensors and metrics.json")
    p.add_argument("--repo-id", default=None, help="hub id or catalogue name the usage code should load")
    p.add_argument("--license", default=None, help=f"license id (default: the run's, else {DEFAULT_LICENSE})")
    p.set_defaults(func=_cmd_card)
