"""Reading a user's data set: ``load`` (tables, folders, save_to_disk folders, hub ids, the quickstart), the
unlabeled rows, and the row checks that build a ``zoo.data.Data`` (see ``zoo.data``)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Any

from zoo import _quickstart as qs
from zoo.data.dataset import (
    AUDIO_EXTENSIONS,
    FULL_CHECK_MAX_FILES,
    IMAGE_EXTENSIONS,
    MAX_LISTED_PROBLEMS,
    SAMPLE_RATE,
    SPLIT_ALIASES,
    SPLITS,
    TABLE_FORMATS,
    TEXT_EXTENSIONS,
    Data,
    DataError,
    FileDecoder,
    Problem,
    Report,
    Split,
    check_text,
    decode_audio,
    decode_image,
    open_media,
)
from zoo.modalities import MODALITIES


# ------------------------------------------------------------------------------------------------------ load: public
def load(
    source: str | os.PathLike | dict,
    *,
    text_column: str = "text",
    image_column: str = "image",
    audio_column: str = "audio",
    label_column: str = "label",
    id_column: str = "id",
    split_column: str = "split",
    on_error: str = "raise",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    label_map: str | os.PathLike | dict | list | None = None,
    sampling_rate: int = SAMPLE_RATE,
    full_check: bool | None = None,
    allow_outside_paths: bool = False,
) -> Data:
    """Load, validate and split a dataset; see the module docstring for the sources and checks.

    Args:
        source: a table file, a folder (``<label>/<file>``, split files, or ``save_to_disk`` output), a hub id,
            ``"quickstart"`` (same as ``quickstart(seed=seed)``; the other options do not apply), or a dict
            ``{split: table file}``.
        *_column: column names of each modality, the label, the row id and the split.
        on_error: ``"raise"`` (one DataError listing every problem) or ``"skip"`` (drop bad rows, see report).
        val_fraction, test_fraction: share of all rows moved out of train into validation / test when the data
            does not define those splits (stratified by label when every label has enough rows), with ``seed``.
        label_map: a JSON file written by ``save_label_map``, ``{id: label}``, ``{label: id}`` or a list of label
            names; labels outside it are problems. Default: the sorted labels found (numbers sorted numerically).
        sampling_rate: audio is resampled to this rate.
        full_check: decode every image and audio file while loading (default: when there are at most 5000 files).
        allow_outside_paths: accept relative media paths that leave the data file's folder (``../x.png``).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r}: use 'raise' or 'skip'.")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise ValueError(f"{name}={fraction}: must be in [0, 1).")
    if isinstance(source, str) and source == "quickstart":
        return quickstart(seed=seed)
    columns = {
        "text": text_column,
        "image": image_column,
        "audio": audio_column,
        "label": label_column,
        "id": id_column,
        "split": split_column,
    }
    with _quiet_datasets():
        parts, base_dir, kind = _read_source(source)
    loader = _Loader(columns, on_error, sampling_rate, full_check, label_map)
    loader.allow_outside = allow_outside_paths
    return loader.build(parts, base_dir, f"{source} ({kind})", val_fraction, test_fraction, seed)


def load_unlabeled(
    source: str | os.PathLike,
    data: Data,
    *,
    text_column: str = "text",
    image_column: str = "image",
    audio_column: str = "audio",
    max_rows: int | None = None,
) -> Split:
    """Rows without labels for distillation (``zoo distill --unlabeled SOURCE``): the teacher labels them.

    ``source`` is a table file (or a folder of files) with the same modality columns as ``data``; a label column,
    if any, is ignored. Rows are checked like labelled ones (empty text, missing files); a bad row is an error that
    names the file and row. Returns a train-like split (ids ``unlabeled:<row>``, labels None) to join to train.
    """
    import datasets

    with _quiet_datasets():
        parts, base_dir, _ = _read_source(source)
    decoder = FileDecoder(base_dir)
    names = {"text": text_column, "image": image_column, "audio": audio_column}
    wanted = [m for m in data.modalities]
    table: dict[str, list] = {"id": [], "label": [], **{m: [] for m in wanted}, "_file": [], "_row": []}
    problems = []
    for _, ds, file in parts:
        ds = _undecoded(ds)
        cols = {m: c for m, c in names.items() if c in ds.column_names and m in wanted}
        if not cols:
            raise DataError(
                f"{file}: unlabeled rows need a column for one of the data's modalities {wanted} "
                f"(looked for {[names[m] for m in wanted]})."
            )
        values = {m: ds.data.column(c).to_pylist() for m, c in cols.items()}
        for i in range(len(ds)):
            row = {m: values[m][i] if m in values else None for m in wanted}
            if all(v is None or v == "" for v in row.values()):
                problems.append(f"{file} row {i}: no {' / '.join(cols.values())} value")
                continue
            text = row.get("text")
            if text is not None and (not isinstance(text, str) or not text.strip()):
                problems.append(f"{file} row {i}, column '{cols['text']}': empty text")
                continue
            table["id"].append(f"unlabeled:{len(table['id'])}")
            table["label"].append(None)
            for m in wanted:
                table[m].append(row[m])
            table["_file"].append(file)
            table["_row"].append(i)
            if max_rows is not None and len(table["id"]) >= max_rows:
                break
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        raise DataError(f"{source}: {len(problems)} problem(s) in the unlabeled rows:\n  {listed}")
    if not table["id"]:
        raise DataError(f"{source}: no unlabeled rows.")
    features = {"id": datasets.Value("string"), "label": datasets.Value("int64")}
    features.update({m: data.splits["train"].dataset.features.get(m, datasets.Value("string")) for m in wanted})
    features.update({"_file": datasets.Value("string"), "_row": datasets.Value("int64")})
    return Split("train", datasets.Dataset.from_dict(table, features=datasets.Features(features)), decoder)


def with_unlabeled(data: Data, unlabeled: Split) -> Data:
    """``data`` whose train split is followed by ``unlabeled``'s rows (labels None: KD only, no CE)."""
    import datasets

    train = data.splits["train"]
    columns = train.dataset.column_names
    extra = unlabeled.dataset.select_columns([c for c in columns if c in unlabeled.dataset.column_names])
    for c in columns:
        if c not in extra.column_names:
            extra = extra.add_column(c, [None] * len(extra))
    extra = extra.cast(train.dataset.features)
    joined = datasets.concatenate_datasets([train.dataset, extra.select_columns(columns)])
    decoders = _JoinedDecoder(train.decoder, unlabeled.decoder, len(train))
    splits = {**data.splits, "train": Split("train", joined, decoders)}
    out = Data(splits, data.id2label, data.report, data.source)
    out.unlabeled_rows = len(extra)
    return out


class _JoinedDecoder:
    """Decodes labelled rows with their decoder and unlabeled rows (files relative to their own file) with theirs."""

    def __init__(self, labelled, unlabeled, n_labelled: int):
        self.labelled, self.unlabeled = labelled, unlabeled
        self.fingerprint_extra = f"{getattr(labelled, 'fingerprint_extra', '')}+unlabeled"

    def __call__(self, row: dict) -> dict:
        dec = self.unlabeled if str(row["id"]).startswith("unlabeled:") else self.labelled
        return dec(row)

    def media_digest(self, value):
        try:
            return self.labelled.media_digest(value)
        except (FileNotFoundError, DataError):  # a path relative to the unlabeled file's folder
            return self.unlabeled.media_digest(value)


def quickstart(
    train_size: int = 1500,
    validation_size: int = 300,
    test_size: int = 300,
    *,
    seed: int = 0,
    modalities: tuple[str, ...] | list[str] = tuple(MODALITIES),
    modality_prob: float = 0.5,
    typo_rate: float = 0.15,
    noise: bool = True,
) -> Data:
    """The bundled offline dataset: labels 0-9, each row a seeded non-empty subset of text, image and audio.

    Fully offline (scikit-learn's digits, the committed espeak-ng clips, generated text) and deterministic for
    a given seed and sizes. Labels are balanced in every split. ``noise=False`` returns clean images and audio.
    """
    import datasets

    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities={list(modalities)}: pick a non-empty subset of {list(MODALITIES)}.")
    sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    if any(n < 0 for n in sizes.values()) or train_size < 1:
        raise ValueError(f"quickstart sizes {sizes}: train_size must be >= 1 and the others >= 0.")
    rows = qs.make_rows(
        sizes, seed=seed, modalities=tuple(modalities), modality_prob=modality_prob, typo_rate=typo_rate
    )
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "label": datasets.Value("int64"),
            **{m: datasets.Value("string") for m in MODALITIES},
        }
    )
    splits = {}
    for name in SPLITS:
        ds = datasets.Dataset.from_dict(rows[name], features=features)
        splits[name] = Split(name, ds, qs.QuickstartDecoder(seed=seed, split=name, noise=noise))
    return Data(splits, {i: str(i) for i in range(10)}, Report(), f"quickstart (seed {seed})")


# ----------------------------------------------------------------------------------------------------- load: reading
@contextlib.contextmanager
def _quiet_datasets():
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


def _read_source(source) -> tuple[list[tuple[str | None, Any, str]], Path | None, str]:
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


def _parse_label_map(label_map) -> dict[int, str]:
    if isinstance(label_map, (str, os.PathLike)):
        path = Path(label_map)
        try:
            label_map = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"label map {path} cannot be read as JSON ({e}).") from e
    if isinstance(label_map, dict) and "id2label" in label_map:
        label_map = label_map["id2label"]
    if isinstance(label_map, (list, tuple)):
        return {i: str(v) for i, v in enumerate(label_map)}
    if isinstance(label_map, dict):
        keys = list(label_map)
        try:
            if all(isinstance(v, int) for v in label_map.values()):  # label2id
                return {int(v): str(k) for k, v in label_map.items()}
            return {int(k): str(v) for k, v in label_map.items()}
        except (TypeError, ValueError) as e:
            raise DataError(f"label map keys {keys[:5]}: expected ids (int) -> names, or names -> ids.") from e
    raise DataError(f"label_map of type {type(label_map).__name__}: pass a JSON path, a dict or a list of names.")


def _label_sort_key(name: str):
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


# ------------------------------------------------------------------------------------------------ load: validation
class _Loader:
    """Normalises parts into rows, checks them, maps labels, splits, and wraps each split."""

    def __init__(self, columns, on_error, sampling_rate, full_check, label_map):
        self.columns, self.on_error, self.sampling_rate = columns, on_error, sampling_rate
        self.full_check, self.label_map = full_check, label_map
        self.report = Report()

    def _resolve_columns(self, ds, file: str) -> dict[str, str]:
        """Modality/label/id/split -> the column present in ``ds``; a missing column that was asked for is an error."""
        defaults = {"text": "text", "image": "image", "audio": "audio", "label": "label", "id": "id", "split": "split"}
        names = ds.column_names
        found = {}
        for key, col in self.columns.items():
            if col in names:
                found[key] = col
            elif key == "text" and "text_file" in names:
                found[key] = "text_file"
            elif col != defaults[key]:
                raise DataError(f"{file}: no column '{col}' ({key}_column); its columns are {names}.")
        if not any(m in found for m in MODALITIES):
            cols = {m: self.columns[m] for m in MODALITIES}
            raise DataError(
                f"{file}: none of the modality columns {cols} is present; its columns are {names}. "
                "Name them with text_column=, image_column=, audio_column= (CLI: --text-column ...)."
            )
        return found

    def build(self, parts, base_dir, source_name, val_fraction, test_fraction, seed) -> Data:
        import datasets

        decoder = FileDecoder(base_dir, self.sampling_rate)
        decoder.allow_outside = getattr(self, "allow_outside", False)
        rows: list[dict] = []  # normalised, undecoded rows of every part
        n_files = 0
        for split, ds, file in parts:
            ds = _undecoded(ds)
            cols = self._resolve_columns(ds, file)
            if "label" not in cols:
                raise DataError(
                    f"{file}: no label column '{self.columns['label']}'; its columns are {ds.column_names}. Name it "
                    "with label_column= (CLI: --label-column), or pass rows without labels as --unlabeled."
                )
            decoder.columns[file] = cols
            present = {k: ds.data.column(c).to_pylist() for k, c in cols.items()}
            n_files += sum(v is not None for m in ("image", "audio") for v in present.get(m, []))
            for i in range(len(ds)):
                row = {"_file": file, "_row": i, "_columns": cols, "_split": split}
                row["id"] = (
                    str(present["id"][i])
                    if "id" in present and present["id"][i] is not None
                    else (f"{Path(file).stem}:{i}" if len(parts) > 1 else str(i))
                )
                row["label"] = present["label"][i] if "label" in present else None
                for m in MODALITIES:
                    value = present[m][i] if m in present else None
                    row[m] = (
                        None if value is None or (isinstance(value, str) and value == "" and m != "text") else value
                    )
                if "split" in present:
                    row["_split_value"] = present["split"][i]
                rows.append(row)
        full = self.full_check if self.full_check is not None else n_files <= FULL_CHECK_MAX_FILES
        if not full:
            self.report.notes.append(
                f"{n_files} files: only headers were checked; pixels and samples are decoded when read."
            )
        id2label, label2id = self._labels(rows)
        bad: set[int] = set()
        seen_ids: dict[str, int] = {}
        for r, row in enumerate(rows):
            problems = self._check_row(row, decoder, full, label2id)
            if row["id"] in seen_ids:
                first = rows[seen_ids[row["id"]]]
                message = f"duplicate id {row['id']!r} (first in {first['_file']} row {first['_row']})"
                problems.append(self._problem(row, "id", message))
            seen_ids.setdefault(row["id"], r)
            if problems:
                bad.add(r)
                self.report.problems.extend(problems)
        if self.report.problems and self.on_error == "raise":
            listed = "\n  ".join(str(p) for p in self.report.problems[:MAX_LISTED_PROBLEMS])
            more = len(self.report.problems) - MAX_LISTED_PROBLEMS
            raise DataError(
                f"{source_name}: {len(self.report.problems)} problem(s) in {len(bad)} row(s):\n  {listed}"
                + (f"\n  ... and {more} more" if more > 0 else "")
                + "\nFix them, or pass on_error='skip' (CLI: --skip-bad) to skip these rows."
            )
        self.report.skipped_rows = len(bad)
        rows = [row for r, row in enumerate(rows) if r not in bad]
        if not rows:
            raise DataError(f"{source_name}: no usable rows left after skipping {len(bad)} bad row(s):\n{self.report}")
        used = {row["label_id"] for row in rows}
        if len(used) < 2:
            raise DataError(
                f"{source_name}: every usable row has the label {id2label[next(iter(used))]!r}; a classifier needs "
                "at least two classes."
            )
        assignment = self._splits(rows, val_fraction, test_fraction, seed)
        in_train = {rows[i]["label_id"] for i in assignment["train"]}
        for name in ("validation", "test"):
            if not any(row["_split"] == name for row in rows):
                continue  # carved out of train here (stratified): a rare label may land there by chance
            only = sorted({rows[i]["label_id"] for i in assignment[name]} - in_train)
            if only:
                first = next(rows[i] for i in assignment[name] if rows[i]["label_id"] == only[0])
                raise DataError(
                    f"{source_name}: label(s) {[id2label[k] for k in only]} appear in {name} but never in train "
                    f"(first in {first['_file']} row {first['_row']}); add train rows with them or drop those rows."
                )
        present_modalities = [m for m in MODALITIES if any(row[m] is not None for row in rows)]
        splits = {}
        for name in SPLITS:
            chosen = [rows[i] for i in assignment[name]]
            table = {"id": [row["id"] for row in chosen], "label": [row["label_id"] for row in chosen]}
            for m in present_modalities:
                table[m] = [row[m] for row in chosen]
            table["_file"] = [row["_file"] for row in chosen]
            table["_row"] = [row["_row"] for row in chosen]
            ds = datasets.Dataset.from_dict(table) if chosen else _empty_table(present_modalities)
            splits[name] = Split(name, ds, decoder)
        return Data(splits, id2label, self.report, source_name)

    def _problem(self, row: dict, key: str | None, message: str) -> Problem:
        column = row["_columns"].get(key, key) if key else None
        return Problem(row["_file"], row["_row"], column, message, row["_split"])

    def _check_row(self, row: dict, decoder: FileDecoder, full: bool, label2id: dict) -> list[Problem]:
        problems = []
        text = row["text"]
        if text is not None:
            try:
                if row["_columns"].get("text") == "text_file":  # a folder's .txt file: its content is the text
                    f, name = open_media(text, decoder.base_dir, decoder.allow_outside)
                    try:
                        text = Path(f).read_text(encoding="utf-8")
                    except UnicodeDecodeError as e:
                        raise DataError(f"{name} is not UTF-8 text ({e})") from e
                row["text"] = check_text(text)
            except (DataError, FileNotFoundError) as e:
                problems.append(self._problem(row, "text", str(e)))
        for m, decode in (("image", decode_image), ("audio", functools.partial(decode_audio, sampling_rate=None))):
            if row[m] is None:
                continue
            try:  # a check only: decode (or read the header), do not keep or resample
                decode(row[m], decoder.base_dir, full=full, allow_outside=decoder.allow_outside)
            except (DataError, FileNotFoundError) as e:
                problems.append(self._problem(row, m, str(e)))
        if all(row[m] is None for m in MODALITIES):
            cols = [row["_columns"][m] for m in MODALITIES if m in row["_columns"]]
            problems.append(self._problem(row, None, f"row has no modality: columns {cols} are all empty"))
        if "_split_value" in row:
            value = row["_split_value"]
            row["_split"] = SPLIT_ALIASES.get(str(value).strip().lower()) if value is not None else None
            if row["_split"] is None:
                allowed = sorted(set(SPLIT_ALIASES))
                problems.append(self._problem(row, "split", f"split {value!r} is not one of {allowed}"))
        label = row["label"]
        row["label_id"] = None
        if label is None or not _label_name(label):
            problems.append(self._problem(row, "label", "empty label; give every row a label"))
        else:
            key = _label_name(label)
            if key not in label2id:
                known = list(label2id)[:20]
                problems.append(self._problem(row, "label", f"unknown label {key!r}; the label map has {known}"))
            else:
                row["label_id"] = label2id[key]
        return problems

    def _labels(self, rows: list[dict]) -> tuple[dict[int, str], dict[str, int]]:
        if self.label_map is not None:
            id2label = _parse_label_map(self.label_map)
        else:
            names = {_label_name(row["label"]) for row in rows if row["label"] is not None} - {""}
            names = sorted(names, key=_label_sort_key)
            spelled: dict[float, str] = {}
            for name in names:  # "01" and "1", or "1" and "1.0", would silently become two classes
                number = _label_sort_key(name)
                if number[0] == 0 and number[1] in spelled:
                    first = next(r for r in rows if _label_name(r["label"]) == name)
                    raise DataError(
                        f"labels {spelled[number[1]]!r} and {name!r} (first in {first['_file']} row {first['_row']}) "
                        "are the same number written two ways; write every label the same way."
                    )
                if number[0] == 0:
                    spelled[number[1]] = name
            id2label = dict(enumerate(names))
        return id2label, {v: k for k, v in id2label.items()}

    def _splits(self, rows, val_fraction, test_fraction, seed) -> dict[str, list[int]]:
        """Row indices per split: from the data when it says, else carved out of train with ``seed``."""
        assignment: dict[str, list[int]] = {s: [] for s in SPLITS}
        unassigned = []
        for i, row in enumerate(rows):
            (assignment[row["_split"]] if row["_split"] else unassigned).append(i)
        assignment["train"] += unassigned
        if not assignment["train"]:
            raise DataError("the data defines no train rows; add a train split (or rows without a split).")
        total = sum(len(v) for v in assignment.values())
        for name, fraction in (("test", test_fraction), ("validation", val_fraction)):
            if assignment[name] or fraction == 0:
                continue
            n = int(round(fraction * total))
            train = assignment["train"]
            if n == 0 or n >= len(train):
                continue
            labels = [rows[i]["label_id"] if rows[i]["label_id"] is not None else -1 for i in train]
            keep, moved = _stratified_split(train, labels, n, seed, self.report, name)
            assignment["train"], assignment[name] = keep, moved
        return {k: sorted(v) for k, v in assignment.items()}


def _stratified_split(indices, labels, n, seed, report, name):
    from sklearn.model_selection import train_test_split

    try:
        keep, moved = train_test_split(indices, test_size=n, stratify=labels, random_state=seed)
    except ValueError as e:  # a label with a single row cannot be stratified
        report.notes.append(f"{name} split not stratified ({e}).")
        keep, moved = train_test_split(indices, test_size=n, random_state=seed)
    return list(keep), list(moved)


def _label_name(label) -> str:
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    return str(label).strip()


def _undecoded(ds):
    """Cast Image/Audio feature columns to decode=False so values are {bytes, path} (we decode them ourselves)."""
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, (datasets.Image, datasets.Audio)) and feature.decode:
            ds = ds.cast_column(name, type(feature)(decode=False))
    return ds


def _empty_table(modalities):
    import datasets

    features = {"id": datasets.Value("string"), "label": datasets.Value("int64")}
    features.update({m: datasets.Value("string") for m in modalities})
    features.update({"_file": datasets.Value("string"), "_row": datasets.Value("int64")})
    return datasets.Dataset.from_dict({k: [] for k in features}, features=datasets.Features(features))


# ----------------------------------------------------------------------------------------------------------------- cli
