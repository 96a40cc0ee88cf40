"""A loaded data set (``Data``, its ``Split``s), the problems found in it and the decoding of its media files.

See ``zoo.data`` for what ``load`` reads and checks.

``load(source)`` takes a CSV / TSV / JSONL / Parquet file whose rows hold text, image paths, audio paths and a
label (paths relative to the file), a folder laid out as ``<label>/<file>`` (optionally ``<split>/<label>/<file>``),
a folder of split files (``train.csv``, ``validation.jsonl``, ...), a folder written by ``save_to_disk``, a hub
dataset id, or ``"quickstart"`` (the bundled offline digits dataset, see ``zoo._quickstart``). Tables are read
with ``datasets``; images are decoded with PIL and audio with soundfile and resampled with torchaudio (never
``datasets.Audio`` decoding, which needs torchcodec and FFmpeg).

Every row is checked when loading: a missing or unreadable file, an empty or corrupt audio file, an empty text, an
unknown label, a row without any modality, a duplicate id. Each problem names the file, row (0-based data row)
and column. ``on_error="raise"`` raises one ``DataError`` listing them; ``on_error="skip"`` drops those rows and
lists them in ``data.report``. Small data is decoded once up front; large data only has its file headers checked
and is decoded when read, with the same file/row/column in any error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.io import atomic_write_text
from zoo.modalities import MODALITIES

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "eval": "validation",
    "test": "test",
    "testing": "test",
}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3"}
TEXT_EXTENSIONS = {".txt"}
TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Decode every file up front when there are at most this many; above it, check headers and decode when read.
FULL_CHECK_MAX_FILES = 5000
MAX_LISTED_PROBLEMS = 20
# Images above this many pixels are refused from their header, before decoding (a 10000x10000 PNG takes ~3 GB).
MAX_IMAGE_PIXELS = 50_000_000
SAMPLE_RATE = 16000


class DataError(ValueError):
    """A dataset problem the user must fix (or skip): the message names the file, row and column."""


@dataclass
class Problem:
    """One bad cell or row: where it is and what is wrong."""

    file: str
    row: int | None
    column: str | None
    message: str
    split: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}"
        if self.column is not None:
            where += f", column '{self.column}'"
        return f"{where}: {self.message}"


@dataclass
class Report:
    """What loading found: problems (rows skipped when ``on_error='skip'``) and notes worth knowing."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped_rows: int = 0

    def __bool__(self) -> bool:
        return bool(self.problems)

    def __str__(self) -> str:
        if not self.problems:
            lines = ["problems: none"]
        else:
            lines = [f"problems: {len(self.problems)} (rows skipped: {self.skipped_rows})"]
        lines += [f"  {p}" for p in self.problems]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- decoding
def _media_name(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("path") or "<embedded bytes>"
    return str(value)


def open_media(value: Any, base_dir: Path | None, allow_outside: bool = False):
    """A path-like value or ``{"bytes", "path"}`` dict -> (something PIL/soundfile can open, display name).

    A relative path that leaves ``base_dir`` (``../../x.png``) is refused unless ``allow_outside``: a data file
    should not read files its author did not put beside it.
    """
    if isinstance(value, dict):
        if value.get("bytes"):
            return io.BytesIO(value["bytes"]), _media_name(value)
        value = value.get("path")
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute() and base_dir is not None:
        inside = os.path.normpath(base_dir / path)
        if not allow_outside and os.path.relpath(inside, os.path.normpath(base_dir)).split(os.sep)[0] == "..":
            raise DataError(
                f"{value} leaves the data file's folder {base_dir}; move the file inside it, or allow it with "
                "allow_outside_paths=True (CLI: --allow-outside-paths)"
            )
        path = base_dir / path
    if str(value).startswith(("http://", "https://")):
        raise DataError(f"{value} is a URL; URLs are not fetched, download the file and give its path")
    if not path.exists():
        raise FileNotFoundError(f"file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes)")
    return path, str(path)


def decode_image(value: Any, base_dir: Path | None = None, full: bool = True, allow_outside: bool = False):
    """Open an image with PIL and load its pixels; without ``full`` only read the header and return None.

    An image above ``MAX_IMAGE_PIXELS`` is refused from its header (``Image.open`` reads only the header).
    """
    from PIL import Image, UnidentifiedImageError

    f, name = open_media(value, base_dir, allow_outside)
    try:
        image = Image.open(f)
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            image.close()
            raise DataError(
                f"{name} is {width}x{height} = {width * height} pixels, over the limit of {MAX_IMAGE_PIXELS}; "
                "resize it before loading"
            )
        if not full:
            image.close()
            return None
        image.load()
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{name} cannot be read as an image ({type(e).__name__}: {e})") from e
    return image


def _wav_shortfall(f) -> tuple[int, int] | None:
    """(bytes the WAV's data chunk promises, bytes it holds) when a RIFF/WAVE file is cut short, else None."""
    import struct

    if not isinstance(f, (str, os.PathLike)):
        return None
    with open(f, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = os.fstat(fh.fileno()).st_size
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                held = size - fh.tell()
                return (length, held) if length > held and length != 0xFFFFFFFF else None
            fh.seek(length + (length & 1), 1)


def decode_audio(
    value: Any,
    base_dir: Path | None = None,
    full: bool = True,
    sampling_rate: int | None = SAMPLE_RATE,
    allow_outside: bool = False,
) -> dict | None:
    """Read audio with soundfile, average channels, resample with torchaudio -> ``{"array", "sampling_rate"}``.

    Without ``full`` only the header is read (frame count and rate), and None is returned. ``sampling_rate=None``
    keeps the file's rate.
    """
    import soundfile as sf

    f, name = open_media(value, base_dir, allow_outside)
    short = _wav_shortfall(f)
    if short:
        raise DataError(f"{name} is cut short: its header promises {short[0]} bytes of samples, it holds {short[1]}")
    try:
        if not full:
            info = sf.info(f)
            if info.frames == 0:
                raise DataError(f"{name} is empty audio (0 samples)")
            return None
        array, rate = sf.read(f, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise DataError(f"{name} cannot be read as audio ({type(e).__name__}: {e})") from e
    if array.size == 0:
        raise DataError(f"{name} is empty audio (0 samples)")
    if not np.isfinite(array).all():
        raise DataError(f"{name} holds NaN or infinite samples")
    array = array.mean(axis=1)
    if sampling_rate is None:
        sampling_rate = rate
    elif rate != sampling_rate:
        import torch
        import torchaudio.functional as AF

        array = AF.resample(torch.from_numpy(array), rate, sampling_rate).numpy()
    return {"array": np.ascontiguousarray(array, dtype=np.float32), "sampling_rate": sampling_rate}


def check_text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise DataError("empty text")
    return text


class FileDecoder:
    """Decodes a normalised row (text, image and audio as paths or byte dicts) into a raw sample (picklable)."""

    def __init__(self, base_dir: Path | None, sampling_rate: int = SAMPLE_RATE, columns: dict | None = None):
        self.base_dir, self.sampling_rate = base_dir, sampling_rate
        self.columns = columns or {}  # source file -> {modality: column name}, for error messages
        self.fingerprint_extra = f"files-sr{sampling_rate}"
        self.allow_outside = False  # relative paths may leave base_dir (load(allow_outside_paths=True))

    def __call__(self, row: dict) -> dict:
        sample = {"id": row["id"], "label": row["label"]}
        for m in MODALITIES:
            if m not in row:
                continue
            value = row[m]
            try:
                if value is None:
                    sample[m] = None
                elif m == "text":
                    sample[m] = check_text(value)
                elif m == "image":
                    sample[m] = decode_image(value, self.base_dir, allow_outside=self.allow_outside)
                else:
                    sample[m] = decode_audio(
                        value, self.base_dir, sampling_rate=self.sampling_rate, allow_outside=self.allow_outside
                    )
            except (DataError, FileNotFoundError) as e:  # lazy decoding of large data: still say where
                column = self.columns.get(row["_file"], {}).get(m, m)
                raise DataError(f"{row['_file']} row {row['_row']}, column '{column}': {e}") from e
        return sample

    def media_digest(self, value: Any) -> str:
        """A content hash of one image/audio value, for fingerprints."""
        if isinstance(value, dict) and value.get("bytes"):
            return hashlib.sha256(value["bytes"]).hexdigest()
        f, _ = open_media(value, self.base_dir, self.allow_outside)
        with open(f, "rb") as fh:
            return (
                hashlib.file_digest(fh, "sha256").hexdigest()
                if hasattr(hashlib, "file_digest")
                else (hashlib.sha256(fh.read()).hexdigest())
            )


# ------------------------------------------------------------------------------------------------------------ split
class Split:
    """One split: ``len``, ``split[i]`` -> decoded raw sample, iteration; rows live in a ``datasets.Dataset``.

    ``split.dataset`` holds the undecoded rows (columns id, label, text, image, audio; None where a row lacks a
    modality), ``split.has("audio")`` says which rows carry a modality, ``split.labels`` gives label ids
    (-100 for unlabeled rows).
    """

    def __init__(self, name: str, dataset, decoder: Callable[[dict], dict]):
        self.name, self.dataset, self.decoder = name, dataset, decoder
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"split[{index!r}]: index with an int; use split.select(indices) for subsets")
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for the {self.name} split of {len(self)} rows")
        return self.decoder(self.dataset[index])

    def __iter__(self) -> Iterator[dict]:
        for row in self.dataset:
            yield self.decoder(row)

    def __repr__(self) -> str:
        counts = ", ".join(f"{m} {int(self.has(m).sum())}" for m in MODALITIES if m in self.dataset.column_names)
        return f"Split({self.name!r}, rows={len(self)}, {counts})"

    def has(self, modality: str) -> np.ndarray:
        """Boolean array: which rows carry ``modality``."""
        if modality not in self.dataset.column_names:
            return np.zeros(len(self), dtype=bool)
        return np.array([v is not None for v in self.dataset[modality]], dtype=bool)

    @property
    def ids(self) -> list[str]:
        """Every row's id, read from the undecoded rows (no media is decoded)."""
        return [str(x) for x in self.dataset["id"]]

    @property
    def labels(self) -> np.ndarray:
        return np.array([-100 if y is None else y for y in self.dataset["label"]], dtype=np.int64)

    def select(self, indices) -> Split:
        return Split(self.name, self.dataset.select(list(indices)), self.decoder)

    def fingerprint(self) -> str:
        """sha256 over every row's id, label, text and image/audio content (file bytes), and the decoder."""
        if self._fingerprint is None:
            h = hashlib.sha256(str(getattr(self.decoder, "fingerprint_extra", "")).encode())
            digest = getattr(self.decoder, "media_digest", None)
            for row in self.dataset:
                parts = [row["id"], str(row["label"]), str(row.get("text"))]
                for m in ("image", "audio"):
                    value = row.get(m)
                    parts.append("" if value is None else digest(value) if digest else str(value))
                h.update(json.dumps(parts).encode())
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint


# ------------------------------------------------------------------------------------------------------------- data
class Data:
    """A loaded dataset: ``splits`` {train, validation, test}, label maps, modalities, fingerprints, report."""

    def __init__(self, splits: dict[str, Split], id2label: dict[int, str], report: Report, source: str):
        self.splits, self.report, self.source = splits, report, source
        self.id2label = {int(k): str(v) for k, v in id2label.items()}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if any(s.has(m).any() for s in self.splits.values())]

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]

    def fingerprint(self, split: str) -> str:
        """Stable hash of a split's content (ids, labels, text, image and audio bytes)."""
        return self.splits[split].fingerprint()

    def save_label_map(self, path: str | os.PathLike) -> Path:
        """Write ``{"id2label": {...}, "label2id": {...}}`` as JSON (atomically); ``load(label_map=path)`` reads it."""
        path = Path(path)
        body = {"id2label": {str(k): v for k, v in self.id2label.items()}, "label2id": self.label2id}
        atomic_write_text(path, json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        return path

    def summary(self) -> dict:
        """Counts per split: rows, rows per modality, rows per label; plus the report."""
        out = {"source": self.source, "splits": {}, "modalities": self.modalities, "id2label": self.id2label}
        for name, split in self.splits.items():
            labels = Counter(int(y) for y in split.labels)
            out["splits"][name] = {
                "rows": len(split),
                "modalities": {m: int(split.has(m).sum()) for m in MODALITIES},
                "combinations": _combinations(split),
                "labels": {
                    self.id2label.get(k, "<unlabeled>") if k >= 0 else "<unlabeled>": v
                    for k, v in sorted(labels.items())
                },
            }
        out["problems"] = [str(p) for p in self.report.problems]
        out["skipped_rows"] = self.report.skipped_rows
        out["notes"] = list(self.report.notes)
        return out

    def __str__(self) -> str:
        s = self.summary()
        names = list(self.splits)
        lines = [f"source: {self.source}", f"modalities: {', '.join(s['modalities']) or 'none'}", ""]
        lines.append(f"{'':20}" + "".join(f"{n:>12}" for n in names) + f"{'total':>12}")

        def row(title: str, values: list[int]) -> str:
            return f"{title[:20]:20}" + "".join(f"{v:>12}" for v in values) + f"{sum(values):>12}"

        lines.append(row("rows", [s["splits"][n]["rows"] for n in names]))
        for m in MODALITIES:
            counts = [s["splits"][n]["modalities"][m] for n in names]
            if sum(counts):
                lines.append(row(f"  {m}", counts))
        combos = sorted({c for n in names for c in s["splits"][n]["combinations"]}, key=lambda c: (c.count("+"), c))
        if len(combos) > 1:
            lines.append("rows carrying")
            for combo in combos:
                lines.append(row(f"  {combo}", [s["splits"][n]["combinations"].get(combo, 0) for n in names]))
        lines.append(f"labels ({self.num_labels}):")
        label_names = list(self.id2label.values())
        if any("<unlabeled>" in s["splits"][n]["labels"] for n in names):
            label_names.append("<unlabeled>")
        for label in label_names:
            lines.append(row(f"  {label}", [s["splits"][n]["labels"].get(label, 0) for n in names]))
        lines.append("")
        lines.append(str(self.report))
        return "\n".join(lines)

    __repr__ = __str__


def _combinations(split: Split) -> dict[str, int]:
    """Rows per combination of modalities, e.g. {"text": 40, "image+audio": 12}."""
    carried = {m: split.has(m) for m in MODALITIES}
    names = ["+".join(m for m in MODALITIES if carried[m][i]) for i in range(len(split))]
    return dict(sorted(Counter(names).items()))
