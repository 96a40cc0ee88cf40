"""Reading a user's data set: ``load`` (tables, folders, save_to_disk folders, hub ids, the quickstart) and the
unlabeled rows; the readers of each format are in ``zoo.data.sources``, the row checks that build a
``zoo.data.Data`` in ``zoo.data.checks`` (see ``zoo.data``)."""

from __future__ import annotations

import os

from zoo import _quickstart as qs
from zoo.data.checks import RowChecker
from zoo.data.dataset import (
    MAX_LISTED_PROBLEMS,
    SAMPLE_RATE,
    SPLITS,
    Data,
    DataError,
    FileDecoder,
    Report,
    Split,
)
from zoo.data.sources import quiet_datasets, read_source, undecoded
from zoo.modalities import MODALITIES


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
    with quiet_datasets():
        parts, base_dir, kind = read_source(source)
    loader = RowChecker(columns, on_error, sampling_rate, full_check, label_map)
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

    with quiet_datasets():
        parts, base_dir, _ = read_source(source)
    decoder = FileDecoder(base_dir)
    names = {"text": text_column, "image": image_column, "audio": audio_column}
    wanted = [m for m in data.modalities]
    table: dict[str, list] = {"id": [], "label": [], **{m: [] for m in wanted}, "_file": [], "_row": []}
    problems = []
    for _, ds, file in parts:
        ds = undecoded(ds)
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
