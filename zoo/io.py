"""Files: atomic writes, safetensors reads with clear errors, and hub-id-or-folder resolution.

Every write goes to a temporary file in the target folder and is renamed over the target, so an interrupted
run never leaves a half-written checkpoint or card behind. Weights are read from safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch

OFFLINE_HINT = (
    "To use it on a machine without network, download it where there is network "
    "(e.g. `hf download {id} --local-dir ./{local}` or `model.save_pretrained('./{local}')`), "
    "copy the folder here and pass the folder path instead of the hub id."
)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success rename it over ``path``, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 (and some writers replace the file); it gets what open() would give it
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, data, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=False) + "\n")


def save_state_dict_atomic(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None):
    """Save tensors as safetensors atomically. Shared or non-contiguous tensors are cloned first."""
    from safetensors.torch import save_file

    seen, tensors = set(), {}
    for k, v in state.items():
        t = v.detach()
        if t.data_ptr() in seen or not t.is_contiguous():
            t = t.contiguous().clone()
        seen.add(t.data_ptr())
        tensors[k] = t.cpu()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_state_dict_checked(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or corrupt file is an error that names it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("*")) if path.parent.is_dir() else []
        hint = (
            " Pickled checkpoints (.bin, .pt) are never loaded: convert them to safetensors."
            if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in others)
            else ""
        )
        raise FileNotFoundError(f"{path} is missing (the folder holds {others}).{hint}")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path} is not a valid safetensors file ({e}); it is truncated or was modified. Re-save or re-download it."
        ) from e


def replace_folder_contents(src: Path, dst: Path, names: Iterable[str] | None = None) -> None:
    """Move files from ``src`` into ``dst`` one by one with atomic renames (same filesystem)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if names is not None and p.name not in names:
            continue
        target = dst / p.name
        if p.is_dir():
            if target.exists():
                shutil.rmtree(target)
            os.replace(p, target)
        else:
            os.replace(p, target)


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


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
    from zoo.catalogue import hub_id_for

    name = os.fspath(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 2 or path.exists():
        raise FileNotFoundError(f"{name!r} is not a folder. Pass a folder written by save_pretrained, or a hub id.")
    if name.count("/") == 2:  # org/name/subfolder
        name, sub = name.rsplit("/", 1)
        subfolder = f"{sub}/{subfolder}" if subfolder else sub
    name = hub_id_for(name)  # a name from the zoo's catalogue (`zoo list`) stands for its hub id
    sub = (subfolder or "").strip("/")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    local = name.replace("/", "--")
    hint = OFFLINE_HINT.format(id=name, local=local)
    patterns = allow_patterns or ["*.json", "*.safetensors", "*.txt", "*.md", "*.model", "*.png"]
    if sub:
        patterns = [f"{sub}/{p}" for p in patterns]
    try:
        folder = snapshot_download(name, revision=revision, cache_dir=cache_dir, token=token, allow_patterns=patterns)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as e:
        raise ConnectionError(f"cannot download {name!r}: offline (HF_HUB_OFFLINE is set or no network). {hint}") from e
    except HfHubHTTPError as e:
        raise ConnectionError(f"cannot download {name!r} from the hub ({e}). {hint}") from e
    except OSError as e:  # connection errors surface as OSError subclasses in requests/httpx
        raise ConnectionError(f"cannot download {name!r}: {e}. {hint}") from e
    return resolve_model_folder(Path(folder) / sub if sub else Path(folder), required=required)
