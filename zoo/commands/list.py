"""``zoo list``: the registered student architectures and the zoo's published students."""

from __future__ import annotations

import argparse

import torch

from zoo.catalogue import print_catalogue
from zoo.modalities import MODALITIES
from zoo.registry import create_student, list_models


def _cmd_list(args: argparse.Namespace) -> int:
    print(f"{'architecture':<16} {'params (text+image+audio, 10 classes)':>40}")
    with torch.device("meta"):
        for name in list_models():
            n = create_student(name, modalities=MODALITIES, num_classes=10).num_params()
            print(f"{name:<16} {n / 1e6:>39.2f}M")
    print_catalogue()
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("list", help="list the registered student architectures and the zoo's published students")
    p.set_defaults(func=_cmd_list)
