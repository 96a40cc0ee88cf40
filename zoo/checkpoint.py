"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

accelerate's ``save_state`` / ``load_state`` write the optimizer, scheduler, sampler and RNG states with
``torch.save`` and read them back with ``torch.load``, i.e. unpickling. The project loads weights from safetensors
only, so the trainer checkpoints through this module instead. A checkpoint folder holds::

    model.safetensors                      the trained module's state_dict (safetensors.torch.save_model)
    optimizer.safetensors, optimizer.json  optimizer.state_dict(): tensors under flat keys ("state.3.exp_avg"),
                                           the rest (param_groups, non-tensor values) as JSON
    scheduler.json                         the LR scheduler's state_dict
    rng.safetensors, rng.json              per process: torch CPU (and CUDA) generator states as uint8 tensors;
                                           python ``random`` and numpy's global RNG states as lists
    trainer_state.json                     the caller's state: step counters, controller, ...; plus the
                                           accelerator's step and grad-scaler state

The folder is written under a temporary name next to its target and renamed into place when complete, so a run
killed mid-save keeps its previous checkpoint. With several processes the main process writes (the RNG states of
all processes are gathered to it first) and every process reads.

In the JSON files, values JSON cannot hold keep their type through small tags: ``{"__tensor__": key}`` (a tensor in
the matching safetensors file), ``{"__tuple__": [...]}``, ``{"__items__": [[key, value], ...]}`` (a dict with
non-string keys, e.g. the optimizer's integer parameter ids) and ``{"__ndarray__": [...], "dtype": ...}``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.io import atomic_write_json, load_state_dict_checked, save_state_dict_atomic

TRAINER_STATE = "trainer_state.json"
FORMAT = "zoo-checkpoint-1"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


# ------------------------------------------------------------------------------- tensors + JSON, no pickle
def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON-serialisable data; its tensors move into ``tensors`` under dotted keys."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"{key}: dict key {k!r} ({type(k).__name__}) cannot be stored in JSON.")
        return {"__items__": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(
        f"{key}: a {type(obj).__name__} cannot be stored without pickle; give the object a state_dict of tensors, "
        "numbers, strings, lists and dicts."
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            if obj["__tensor__"] not in tensors:
                raise ValueError(f"{where}: tensor {obj['__tensor__']!r} is missing from the safetensors file.")
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {k: _decode(v, tensors, where) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    return obj


def save_tree(folder: Path, name: str, obj: Any) -> None:
    """Write ``obj`` (nested dicts / lists / tuples of tensors and plain values) as name.json [+ name.safetensors]."""

    tensors: dict[str, torch.Tensor] = {}
    data = _encode(obj, name, tensors)
    if tensors:
        save_state_dict_atomic(tensors, folder / f"{name}.safetensors")
    atomic_write_json(folder / f"{name}.json", data, indent=None)


def load_tree(folder: Path, name: str) -> Any:
    """Read what ``save_tree`` wrote: JSON and safetensors only."""

    path = folder / f"{name}.json"
    _require(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is damaged: delete {folder}.") from e
    st = folder / f"{name}.safetensors"
    tensors = load_state_dict_checked(st) if st.exists() else {}
    return _decode(data, tensors, str(st))


def _require(path: Path) -> None:
    if path.is_file():
        return
    folder = path.parent
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    old = any(n.endswith(_PICKLE_SUFFIXES) for n in names)
    hint = (
        " It holds pickled files (an accelerate save_state checkpoint from an older zoo), which are never loaded:"
        " delete the folder and run the phase again."
        if old
        else " Delete the folder to start the phase from its beginning."
    )
    raise FileNotFoundError(f"checkpoint {folder} has no {path.name} (it holds {names}).{hint}")


# ------------------------------------------------------------------------------------------------------ RNG
def _rng_state() -> dict:
    """This process's RNG states: python ``random``, numpy's global RNG, torch CPU (and CUDA) generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _gather_bytes(accelerator, data: bytes) -> list[bytes]:
    """``data`` of every process, on every process (uint8 tensors through the process group: no pickle)."""
    device = accelerator.device
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    sizes = accelerator.gather(torch.tensor([t.numel()], device=device)).tolist()
    parts = accelerator.gather(accelerator.pad_across_processes(t)).view(accelerator.num_processes, -1).cpu()
    return [bytes(parts[i, :n].numpy()) for i, n in enumerate(sizes)]


def _rng_of_all_processes(accelerator) -> list[dict]:
    """The RNG states of every process, in process order (each process's own when there is one)."""
    local = _rng_state()
    if accelerator is None or accelerator.num_processes == 1:
        return [local]
    from safetensors.torch import load, save

    tensors: dict[str, torch.Tensor] = {}
    data = _encode(local, "rng", tensors)
    tensors["json"] = torch.frombuffer(bytearray(json.dumps(data).encode("utf-8")), dtype=torch.uint8)
    states = []
    for blob in _gather_bytes(accelerator, save(tensors)):
        t = load(blob)
        states.append(_decode(json.loads(bytes(t.pop("json").numpy()).decode("utf-8")), t, "rng"))
    return states


# ------------------------------------------------------------------------------------------- save and load
def save_checkpoint(
    folder: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer,
    scheduler=None,
    trainer_state: dict | None = None,
    accelerator=None,
) -> Path:
    """Write a resumable checkpoint of a training loop into ``folder`` (atomically; see the module docstring).

    Call it on every process (the RNG states are gathered); only the main process writes. ``model``, ``optimizer``
    and ``scheduler`` may be the objects ``accelerator.prepare`` returned. ``trainer_state`` must be plain JSON.
    """
    folder = Path(folder)
    rngs = _rng_of_all_processes(accelerator)
    is_main = accelerator is None or accelerator.is_main_process
    if is_main:
        from safetensors.torch import save_model

        unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
        state = dict(trainer_state or {})
        state["checkpoint_format"] = FORMAT
        state["num_processes"] = len(rngs)
        if accelerator is not None:
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            state["accelerator"] = {"step": accelerator.step, "scaler": scaler}
        folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.parent.glob(".*.tmp"), *folder.parent.glob(".*.old")]:  # from a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            save_model(unwrapped, str(tmp / "model.safetensors"))  # drops duplicates of tied weights
            save_tree(tmp, "optimizer", optimizer.state_dict())
            if scheduler is not None:
                save_tree(tmp, "scheduler", scheduler.state_dict())
            save_tree(tmp, "rng", rngs)

            atomic_write_json(tmp / TRAINER_STATE, state)  # last: a folder with it is complete
            _move_into_place(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return folder


def _move_into_place(tmp: Path, folder: Path) -> None:
    if not folder.exists():
        os.replace(tmp, folder)
        return
    # a directory cannot be renamed over a non-empty one: move the old one aside first, then drop it
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    folder: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer,
    scheduler=None,
    accelerator=None,
) -> dict:
    """Restore what ``save_checkpoint`` wrote (safetensors and JSON only) and return the trainer state.

    Every process reads. Each restores the RNG state its own process index saved; a run resumed with more
    processes than it was saved with gives the extra processes the main process's RNG state.
    """
    from safetensors.torch import load_model

    folder = Path(folder)
    _require(folder / TRAINER_STATE)
    state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    if state.get("checkpoint_format") != FORMAT:
        raise ValueError(
            f"{folder / TRAINER_STATE}: checkpoint format {state.get('checkpoint_format')!r}, expected {FORMAT!r}. "
            "Delete the folder to start the phase again."
        )
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    _require(folder / "model.safetensors")
    device = str(next(unwrapped.parameters()).device)
    try:
        load_model(unwrapped, str(folder / "model.safetensors"), strict=True, device=device)
    except Exception as e:
        raise ValueError(f"{folder / 'model.safetensors'} does not fit the model being trained: {e}") from e
    opt_state = load_tree(folder, "optimizer")
    live = optimizer.state_dict()["param_groups"]
    if len(live) != len(opt_state["param_groups"]):
        raise ValueError(
            f"{folder / 'optimizer.json'} has {len(opt_state['param_groups'])} parameter groups; the optimizer has "
            f"{len(live)}."
        )
    optimizer.load_state_dict(opt_state)
    if scheduler is not None:
        scheduler.load_state_dict(load_tree(folder, "scheduler"))
    rngs = load_tree(folder, "rng")
    index = accelerator.process_index if accelerator is not None else 0
    _set_rng(rngs[index] if index < len(rngs) else rngs[0])
    if accelerator is not None and state.get("accelerator"):
        accelerator.step = state["accelerator"]["step"]
        if accelerator.scaler is not None and state["accelerator"]["scaler"] is not None:
            accelerator.scaler.load_state_dict(state["accelerator"]["scaler"])
    return state


def latest_checkpoint(parent: str | os.PathLike, prefix: str = "step-") -> Path | None:
    """The complete checkpoint ``parent/<prefix><n>`` with the highest n, or None."""
    parent = Path(parent)
    if not parent.is_dir():
        return None
    found = []
    for p in parent.glob(f"{prefix}*"):
        n = p.name[len(prefix) :]
        if n.isdigit() and (p / TRAINER_STATE).is_file():
            found.append((int(n), p))
    return max(found)[1] if found else None
