"""Files: atomic writes and safetensors reads with clear errors (hub ids resolve in ``zoo.hub``).

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
