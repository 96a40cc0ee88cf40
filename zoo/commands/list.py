"""``zoo list [--json]``: the registered student architectures and the zoo's published students."""

from __future__ import annotations

import argparse
import json

import torch

from zoo.catalogue import load_catalogue, print_catalogue
from zoo.modalities import MODALITIES
from zoo.registry import create_student, list_models


def _cmd_list(args: argparse.Namespace) -> int:
    with torch.device("meta"):
        params = {
            name: create_student(name, modalities=MODALITIES, num_classes=10).num_params() for name in list_models()
        }
    if args.json:
        print(json.dumps({"architectures": params, "published": load_catalogue()}, indent=2))
        return 0
    print(f"{'architecture':<16} {'params (text+image+audio, 10 classes)':>40}")
    for name, n in params.items():
        print(f"{name:<16} {n / 1e6:>39.2f}M")
    print_catalogue()
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("list", help="list the registered student architectures and the zoo's published students")
    p.add_argument("--json", action="store_true", help="print them as JSON (architecture: params; published entries)")
    p.set_defaults(func=_cmd_list)
