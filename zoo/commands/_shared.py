"""Helpers shared by the verbs of ``zoo.commands``."""

from __future__ import annotations


def parse_teachers(values: list[str] | None) -> dict[str, str]:
    """``--teacher MODALITY=PATH_OR_ID`` options as {modality: path or hub id}."""
    out = {}
    for v in values or []:
        if "=" not in v:
            raise ValueError(f"--teacher {v!r}: expected MODALITY=PATH_OR_ID, e.g. --teacher text=./my-bert.")
        m, p = v.split("=", 1)
        out[m.strip()] = p.strip()
    return out
