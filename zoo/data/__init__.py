"""User datasets for fine-tuning and distillation: load, validate, map labels, split, decode lazily.

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

``dataset`` holds the loaded data set and the decoding, ``reading`` the entry points, ``sources`` the readers of each
format and ``checks`` the row checks.
"""

from zoo.data.dataset import Data, DataError, FileDecoder, Problem, Report, Split, decode_audio, decode_image
from zoo.data.reading import load, load_unlabeled, quickstart, with_unlabeled

__all__ = [
    "Data",
    "DataError",
    "FileDecoder",
    "Problem",
    "Report",
    "Split",
    "decode_audio",
    "decode_image",
    "load",
    "load_unlabeled",
    "quickstart",
    "with_unlabeled",
]
