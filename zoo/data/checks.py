"""The row checks: ``RowChecker`` turns the tables a source was read into (``zoo.data.sources``) into a
``zoo.data.Data``: rows normalised, every file and text checked, labels mapped, splits made (see ``zoo.data``)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from zoo.data.dataset import (
    FULL_CHECK_MAX_FILES,
    MAX_LISTED_PROBLEMS,
    SPLIT_ALIASES,
    SPLITS,
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
from zoo.data.sources import undecoded
from zoo.modalities import MODALITIES


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


class RowChecker:
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
            ds = undecoded(ds)
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


def _empty_table(modalities):
    import datasets

    features = {"id": datasets.Value("string"), "label": datasets.Value("int64")}
    features.update({m: datasets.Value("string") for m in modalities})
    features.update({"_file": datasets.Value("string"), "_row": datasets.Value("int64")})
    return datasets.Dataset.from_dict({k: [] for k in features}, features=datasets.Features(features))
