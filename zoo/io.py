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


DIGEST_KEY = "zoo_sha256"  # safetensors metadata: the digest of the tensors, checked when the file is read


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (what a file's data means)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse NaN or infinite values in floating-point tensors, naming the first such tensor and ``source``."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{source}: tensor {name!r} holds {bad} NaN or infinite value(s); the weights are broken.")


def save_state_dict_atomic(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None):
    """Save tensors as safetensors atomically, with their digest in the metadata (``DIGEST_KEY``). Shared or
    non-contiguous tensors are cloned first."""
    from safetensors.torch import save_file

    seen, tensors = set(), {}
    for k, v in state.items():
        t = v.detach()
        if t.data_ptr() in seen or not t.is_contiguous():
            t = t.contiguous().clone()
        seen.add(t.data_ptr())
        tensors[k] = t.cpu()
    metadata = {**(metadata or {}), DIGEST_KEY: tensors_digest(tensors)}
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
    from safetensors import safe_open

    try:
        state = load_file(str(path), device=device)
        with safe_open(str(path), framework="pt") as f:
            expected = (f.metadata() or {}).get(DIGEST_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path} is not a valid safetensors file ({e}); it is truncated or was modified. Re-save or re-download it."
        ) from e
    if expected is not None and tensors_digest(state) != expected:
        raise ValueError(
            f"{path}: the tensors do not match the sha256 digest recorded when the file was saved; the file was "
            "modified or damaged. Re-save or re-download it."
        )
    return state


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


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a lock's or a leftover's owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(parent: Path) -> None:
    """Remove ``.save-<pid>-*`` and ``.<name>.new-<pid>`` folders that a killed process left in ``parent``; put back
    a ``.<name>.old-<pid>`` whose swap was cut between its two renames (its folder is missing)."""
    import re

    if not parent.is_dir():
        return
    for p in parent.iterdir():
        m = re.fullmatch(r"\.save-(\d+)-.*|\.(.+)\.(new|old)-(\d+)", p.name)
        if not p.is_dir() or m is None or pid_alive(int(m.group(1) or m.group(4))):
            continue
        original = parent / m.group(2) if m.group(3) == "old" else None
        if original is not None and not original.exists():
            p.rename(original)  # the new folder never arrived: the old one is the folder again
        else:
            shutil.rmtree(p, ignore_errors=True)


def is_zoo_output(folder: Path) -> bool:
    """A folder zoo wrote (a student: config.json with ``architecture``, or a metrics.json), or an empty one."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return True
    if (folder / "metrics.json").exists():
        return True
    try:
        return "architecture" in json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


@contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool = False):
    """Yield a new folder beside ``out`` to write a whole output into; on success it replaces ``out`` (two renames),
    on error it is removed. A kill leaves ``out`` as it was, or the new folder complete (a swap cut between its
    renames is put back by ``clean_leftovers``). A folder zoo did not write (a teacher's) needs ``overwrite``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out.parent)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose another --out.")
    if not overwrite and not is_zoo_output(out):
        raise FileExistsError(
            f"{out} holds files zoo did not write (no student config.json or metrics.json); pass --overwrite to "
            "replace it, or choose another --out."
        )
    stage = out.parent / f".{out.name}.new-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def not_local(name: str) -> str:
    """'no local path NAME' plus the closest file or folder beside it: a typo is not a hub problem."""
    import difflib

    path = Path(name).expanduser()
    parent = path.parent if path.parent.is_dir() else None
    names = [p.name for p in parent.iterdir()] if parent is not None else []
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    hint = f" (did you mean {os.fspath(parent / close[0])!r}?)" if close else ""
    return f"there is no local path {name!r}{hint}"


def typo_hint(name: str) -> str:
    """``not_local(name) + ", and "`` before a hub error when ``name`` may be a mistyped path (no ``org/`` part, or a
    close local name exists); "" for a plain ``org/name`` hub id."""
    message = not_local(name)
    return f"{message}, and " if "/" not in name or "did you mean" in message else ""
