"""Helpers shared by the verbs of ``zoo.commands``."""

from __future__ import annotations

# the --data / SOURCE forms, for every verb's --help (README: "SOURCE is ...")
SOURCE_HELP = (
    "a CSV / JSONL / Parquet file (columns id, text, image path, audio path, label; split 80/10/10, stratified, "
    "seeded); a folder of split files (train.csv, validation.csv, test.csv, or .jsonl / .parquet: the rows of each "
    "file form that split); a folder <label>/<file>.{png,jpg,wav,flac}; a save_to_disk folder; a hub dataset id; "
    "or quickstart"
)


def parse_teachers(values: list[str] | None) -> dict[str, str]:
    """``--teacher MODALITY=PATH_OR_ID`` options as {modality: path or hub id}."""
    out = {}
    for v in values or []:
        if "=" not in v:
            raise ValueError(f"--teacher {v!r}: expected MODALITY=PATH_OR_ID, e.g. --teacher text=./my-bert.")
        m, p = v.split("=", 1)
        out[m.strip()] = p.strip()
    return out
