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


def recipe_and_overrides(items: list[str], flags: dict, default: str | None = "quickstart") -> tuple:
    """Positional ``RECIPE`` and ``key=value`` items (in any order, anywhere on the line) -> (recipe, overrides).

    ``flags`` maps recipe keys to the values of the options that set them (``{"student": args.student}``): an
    override of the same key with another value is a conflict, as are two recipes or one key given twice with
    different values. Each conflict is an error that names both values.
    """
    recipes = [item for item in items if "=" not in item]
    if len(recipes) > 1:
        raise ValueError(f"two recipes given ({recipes[0]!r} and {recipes[1]!r}); give one recipe, then key=value.")
    seen: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            continue
        key, value = (part.strip() for part in item.split("=", 1))
        if key in seen and seen[key] != value:
            raise ValueError(f"{key} is given twice ({key}={seen[key]} and {key}={value}); keep one.")
        seen[key] = value
    for key, (option, value) in flags.items():
        if value is not None and key in seen and seen[key] != str(value):
            raise ValueError(f"{option} {value} and {key}={seen[key]} disagree; give one of them.")
    return (recipes[0] if recipes else default), [item for item in items if "=" in item]
