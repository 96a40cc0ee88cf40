"""Reading a data source into tables: CSV / TSV / JSONL / Parquet files, split files, ``<label>/<file>`` folders,
``save_to_disk`` folders and hub datasets (``read_source``), with ``datasets`` and its progress bars quiet. The
rows are checked afterwards (``zoo.data.checks``)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from zoo.data.dataset import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    SPLIT_ALIASES,
    SPLITS,
    TABLE_FORMATS,
    TEXT_EXTENSIONS,
    DataError,
)
from zoo.modalities import MODALITIES


@contextlib.contextmanager
def quiet_datasets():
    """Hide datasets' progress bars while loading (a summary is printed instead), restoring the setting."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _read_table(path: Path):
    import datasets

    kwargs = {"sep": "\t"} if path.suffix.lower() == ".tsv" else {}
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes).")
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"):
        _check_text_table(path)
    try:
        return datasets.load_dataset(TABLE_FORMATS[path.suffix.lower()], data_files=str(path), split="train", **kwargs)
    except Exception as e:  # datasets wraps parser errors in several types; name the file either way
        raise DataError(
            f"{path} cannot be read as {TABLE_FORMATS[path.suffix.lower()]} ({type(e).__name__}: {e})"
        ) from e


def _check_text_table(path: Path) -> None:
    """Name the byte offset of a non-UTF-8 byte and the row of a malformed JSONL line (datasets only logs them)."""
    offset, jsonl = 0, path.suffix.lower() == ".jsonl"
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}: byte {offset + e.start} (line {number}) is not UTF-8 ({line[e.start : e.start + 1]!r}); "
                    "save the file as UTF-8."
                ) from e
            if jsonl and text.strip():
                try:
                    json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}: line {number} (byte {offset}) is not valid JSON ({e.msg} at column {e.colno}); "
                        "each line must be one JSON object."
                    ) from e
            offset += len(line)


def _split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = SPLIT_ALIASES.get(path.stem.lower())
        if split and path.is_file() and path.suffix.lower() in TABLE_FORMATS:
            if split in found:
                raise DataError(f"{folder} holds two {split} files: {found[split].name} and {path.name}; keep one.")
            found[split] = path
    return found


def read_source(source) -> tuple[list[tuple[str | None, Any, str]], Path | None, str]:
    """-> parts [(split or None, datasets.Dataset, file name for messages)], base dir for relative paths, kind."""
    import datasets

    if isinstance(source, dict):
        parts = []
        for split, file in source.items():
            name = SPLIT_ALIASES.get(str(split).lower())
            if name is None:
                raise DataError(f"source split {split!r}: use one of {list(SPLITS)}.")
            path = Path(file)
            if not path.is_file():
                raise FileNotFoundError(f"{split} file not found: {path}")
            parts.append((name, _read_table(path), str(path)))
        return parts, Path(next(iter(source.values()))).parent, "split files"
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        if path.suffix.lower() not in TABLE_FORMATS:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(TABLE_FORMATS)}.")
        return [(None, _read_table(path), str(path))], path.parent, TABLE_FORMATS[path.suffix.lower()]
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            try:
                saved = datasets.load_from_disk(str(path))
            except Exception as e:
                raise DataError(f"{path} looks like save_to_disk output but cannot be loaded ({e}).") from e
            if isinstance(saved, datasets.DatasetDict):
                return [(k, v, f"{path}[{k}]") for k, v in saved.items()], path, "save_to_disk"
            return [(None, saved, str(path))], path, "save_to_disk"
        files = _split_files(path)
        if files:
            return [(s, _read_table(p), str(p)) for s, p in files.items()], path, "split files"
        return _read_folder(path), path, "folder"
    looks_like_path = (
        path.suffix.lower() in TABLE_FORMATS or str(source).startswith((".", "/", "~")) or os.sep * 2 in str(source)
    )
    if looks_like_path:
        raise FileNotFoundError(f"no such file or folder: {path}")
    return _read_hub(str(source)), None, "hub"


def _read_hub(source: str) -> list:
    import datasets
    import huggingface_hub

    hint = (
        "pass a local CSV/JSONL/Parquet file, a folder laid out as <label>/<file>, or a folder written by "
        "Dataset.save_to_disk instead"
    )
    if datasets.config.HF_HUB_OFFLINE or huggingface_hub.constants.HF_HUB_OFFLINE:
        raise DataError(
            f"{source!r} is not a local file or folder, and the Hugging Face hub is offline "
            f"(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set): {hint}."
        )
    try:
        loaded = datasets.load_dataset(source)
    except Exception as e:
        raise DataError(
            f"{source!r} is not a local file or folder and could not be loaded from the hub "
            f"({type(e).__name__}: {e}): {hint}."
        ) from e
    return [(k, v, f"{source}[{k}]") for k, v in loaded.items()]


def _read_folder(root: Path) -> list:
    """``root/<label>/<file>`` or ``root/<split>/<label>/<file>`` -> one table per split of (file, label, modality)."""
    import datasets

    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    by_split = bool(subdirs) and all(d.name.lower() in SPLIT_ALIASES for d in subdirs)
    groups = [(SPLIT_ALIASES[d.name.lower()], d) for d in subdirs] if by_split else [(None, root)]
    parts = []
    for split, folder in groups:
        cols: dict[str, list] = {"id": [], "label": [], "text_file": [], "image": [], "audio": []}
        for label_dir in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for f in sorted(label_dir.rglob("*")):
                ext = f.suffix.lower()
                if not f.is_file() or f.name.startswith("."):
                    continue
                modality = "image" if ext in IMAGE_EXTENSIONS else "audio" if ext in AUDIO_EXTENSIONS else None
                modality = "text" if ext in TEXT_EXTENSIONS else modality
                if modality is None:
                    continue
                rel = f.relative_to(root).as_posix()
                cols["id"].append(rel)
                cols["label"].append(label_dir.name)
                for m in MODALITIES:  # a folder's text is a .txt file, read while checking
                    cols["text_file" if m == "text" else m].append(None if m != modality else rel)
        if not cols["id"]:
            raise DataError(
                f"{folder} holds no <label>/<file> with a supported extension "
                f"({sorted(IMAGE_EXTENSIONS | AUDIO_EXTENSIONS | TEXT_EXTENSIONS)}); lay it out as <label>/<file>, "
                "or pass a CSV/JSONL/Parquet file or a save_to_disk folder."
            )
        ds = datasets.Dataset.from_dict(cols)
        parts.append((split, ds, str(folder)))
    return parts


def undecoded(ds):
    """Cast Image/Audio feature columns to decode=False so values are {bytes, path} (we decode them ourselves)."""
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, (datasets.Image, datasets.Audio)) and feature.decode:
            ds = ds.cast_column(name, type(feature)(decode=False))
    return ds
