"""The hub resolver: a local folder as is, else a hub id (or a zoo catalogue name) through the HF cache.

Students (``zoo.load``) and teachers (``zoo.teachers.load_teacher``) download through ``snapshot``, with one
offline check: with ``HF_HUB_OFFLINE`` set only the cache answers, and a missing repo fails with a message saying
how to pass a local folder instead. Publishing a student is ``zoo.publish``.
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

from zoo.catalogue import hub_id_for
from zoo.io import not_local, typo_hint

OFFLINE_HINT = (
    "To use it on a machine without network, download it where there is network "
    "(e.g. `hf download {id} --local-dir ./{local}` or `model.save_pretrained('./{local}')`), "
    "copy the folder here and pass the folder path instead of the hub id."
)


def is_offline() -> bool:
    """Whether the hub may not be reached: HF_HUB_OFFLINE as set now, or as huggingface_hub read it."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or bool(constants.HF_HUB_OFFLINE)


def snapshot(repo_id: str, allow_patterns: list[str], revision: str | None = None, **kwargs) -> Path:
    """A hub repo's files matching ``allow_patterns`` (never pickles), through the HF cache; offline, from the cache
    only. The one download path of students and teachers; callers turn its errors into their own messages."""
    folder = huggingface_hub.snapshot_download(  # looked up at call time: tests stand in for the cache
        repo_id, revision=revision, allow_patterns=allow_patterns, local_files_only=is_offline(), **kwargs
    )
    return Path(folder)


def resolve_model_folder(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
    allow_patterns: list[str] | None = None,
    required: tuple[str, ...] = ("config.json", "model.safetensors"),
    subfolder: str | None = None,
) -> Path:
    """A local folder as is, or a hub repo (or a zoo catalogue name's repo) downloaded through the HF cache.

    ``subfolder`` (as in transformers' ``from_pretrained``) picks a folder inside it, e.g. a run's ``int8``;
    ``"org/name/int8"`` is the same as ``"org/name", subfolder="int8"``. A hub id while offline (or unreachable)
    fails with a message saying how to pass a local folder instead; files already in the HF cache load offline.
    """
    path = Path(os.fspath(name_or_path)).expanduser()
    if subfolder and path.is_dir():
        if not (path / subfolder).is_dir():
            subs = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise FileNotFoundError(f"{path} has no subfolder {subfolder!r}; its subfolders are {subs}.")
        path = path / subfolder
    if path.is_dir():
        missing = [f for f in required if not (path / f).exists()]
        if missing:
            raise FileNotFoundError(
                f"{path} is missing {missing} (it holds {sorted(p.name for p in path.iterdir())}); "
                "a student folder is written by save_pretrained."
            )
        return path

    name = os.fspath(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 2 or path.exists():
        raise FileNotFoundError(
            f"{not_local(name) if not path.exists() else repr(name) + ' is not a folder'}. Pass a folder written by "
            "save_pretrained, or a hub id."
        )
    if name.count("/") == 2:  # org/name/subfolder
        name, sub = name.rsplit("/", 1)
        subfolder = f"{sub}/{subfolder}" if subfolder else sub
    name = hub_id_for(name)  # a name from the zoo's catalogue (`zoo list`) stands for its hub id
    sub = (subfolder or "").strip("/")
    local = name.replace("/", "--")
    hint = OFFLINE_HINT.format(id=name, local=local)
    patterns = allow_patterns or ["*.json", "*.safetensors", "*.txt", "*.md", "*.model", "*.png"]
    if sub:
        patterns = [f"{sub}/{p}" for p in patterns]
    try:
        folder = snapshot(name, patterns, revision=revision, cache_dir=cache_dir, token=token)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as e:
        raise ConnectionError(
            f"{typo_hint(name)}cannot download {name!r}: offline (HF_HUB_OFFLINE is set or no network). {hint}"
        ) from e
    except HfHubHTTPError as e:
        raise ConnectionError(f"cannot download {name!r} from the hub ({e}). {hint}") from e
    except OSError as e:  # connection errors surface as OSError subclasses in requests/httpx
        raise ConnectionError(f"cannot download {name!r}: {e}. {hint}") from e
    return resolve_model_folder(folder / sub if sub else folder, required=required)
