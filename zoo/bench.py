"""Measuring models: accuracy, parameters, file size and latency, and the run's ``metrics.json``.

``metrics.json`` holds one entry per model under ``"models"`` (teacher, raw_student, distilled, pruned, int8,
onnx_int8, ...), each with ``accuracy`` (test split, 0-1), ``params``, ``size_bytes`` and ``latency_ms`` (batch 1,
one thread, median) with ``latency_spread_ms`` [p10, p90] (the run measures its models interleaved), plus whatever
else a stage records. Every number a card or table shows comes from here.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import torch

from zoo.io import atomic_write_json
from zoo.runs import METRICS_NAME, ordered


@contextmanager
def one_thread():
    """Run the block with one torch thread (latency is measured at one thread), restoring the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def interleaved_ms(calls: dict[str, Callable[[], object]], rounds: int = 30, warmup: int = 3) -> dict[str, dict]:
    """Batch-1 latency of each callable, measured together: every round calls each once, in turn, so a slow spell of
    the machine (another process, a frequency change) falls on all of them alike. Returns per key the median and
    the 10th and 90th percentiles in milliseconds (``{"median", "p10", "p90"}``)."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000.0)
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=10, method="inclusive") if len(ts) > 1 else [ts[0]] * 9
        out[k] = {"median": statistics.median(ts), "p10": q[0], "p90": q[-1]}
    return out


def ratio_apart(slow: dict, fast: dict) -> tuple[float, bool]:
    """slow / fast median ratio, and whether the two spreads are apart (slow's p10 above fast's p90): only then
    is "Nx lower latency" a claim the measurement supports."""
    return slow["median"] / fast["median"], slow["p10"] > fast["p90"]


def latency_ms(model: torch.nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 20, warmup: int = 3) -> float:
    """Median latency (ms) of ``model(**inputs)`` in eval mode under no_grad, at one thread.

    Pass a batch of one sample for the batch-1 latency the tables report.
    """
    was_training = model.training
    model.eval()
    try:
        with one_thread(), torch.inference_mode():
            return median_ms(lambda: model(**inputs), repeats=repeats, warmup=warmup)
    finally:
        model.train(was_training)


def count_params(model: torch.nn.Module) -> int:
    """Parameters plus integer weight buffers (a quantized model keeps its int8 weights as buffers)."""
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for b in model.buffers() if not b.is_floating_point() and b.dtype == torch.int8)
    return n


def folder_size_bytes(folder: str | os.PathLike, names: Iterable[str] = ("model.safetensors",)) -> int:
    """Size of the weight files of a saved model (what a user downloads to run it)."""
    return sum((Path(folder) / n).stat().st_size for n in names if (Path(folder) / n).exists())


@torch.inference_mode()
def accuracy(predict: Callable[[list[dict]], torch.Tensor], samples: Iterable[dict], batch_size: int = 64) -> float:
    """Top-1 accuracy of ``predict(raw samples) -> logits`` over labelled raw samples (0-1)."""
    correct = total = 0
    batch: list[dict] = []

    def flush():
        nonlocal correct, total
        labels = torch.tensor([int(s["label"]) for s in batch])
        logits = predict(batch)
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        total += len(batch)
        batch.clear()

    for s in samples:
        if s.get("label") is None:
            continue
        batch.append(s)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if total == 0:
        raise ValueError("accuracy: no labelled sample to evaluate on.")
    return correct / total


def student_predict(student: torch.nn.Module) -> Callable[[list[dict]], torch.Tensor]:
    """Raw samples -> logits with the student's own preprocessing, in eval mode."""

    def predict(samples: list[dict]) -> torch.Tensor:
        student.eval()
        batch = student.preprocess(samples)
        batch.pop("labels", None)
        return student(**batch)

    return predict


def model_entry(*, accuracy: float, params: int, size_bytes: int, latency_ms: float | None, **extra) -> dict:
    """One ``metrics.json`` model entry; extra keys (runtime, macs, keep_ratio...) are kept as given. ``latency_ms``
    None: measured later, with the other models (``set_latency``)."""
    entry = {
        "accuracy": round(float(accuracy), 6),
        "params": int(params),
        "size_bytes": int(size_bytes),
        "latency_ms": None if latency_ms is None else round(float(latency_ms), 4),
    }
    entry.update(extra)
    return entry


def set_latency(entry: dict, spread: dict) -> dict:
    """An entry's latency from ``interleaved_ms``: the median as ``latency_ms``, the 10th-90th percentile beside it
    as ``latency_spread_ms`` [p10, p90]."""
    entry["latency_ms"] = round(spread["median"], 4)
    entry["latency_spread_ms"] = [round(spread["p10"], 4), round(spread["p90"], 4)]
    return entry


def spread_of(entry: dict) -> dict | None:
    """An entry's latency as ``{"median", "p10", "p90"}``, or None without a measured spread."""
    spread = entry.get("latency_spread_ms")
    if entry.get("latency_ms") is None or not isinstance(spread, (list, tuple)) or len(spread) != 2:
        return None
    return {"median": float(entry["latency_ms"]), "p10": float(spread[0]), "p90": float(spread[1])}


def format_ms(entry: dict) -> str:
    """``2.14 (2.05-2.31)``: the median and, when measured, its 10th-90th percentile spread."""
    if entry.get("latency_ms") is None:
        return "-"
    spread = spread_of(entry)
    return f"{entry['latency_ms']:.2f}" + (f" ({spread['p10']:.2f}-{spread['p90']:.2f})" if spread else "")


def read_metrics(folder: str | os.PathLike) -> dict:
    path = Path(folder) / METRICS_NAME
    if not path.exists():
        return {"models": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or restore it from the run folder.") from e
    data.setdefault("models", {})
    return data


def update_metrics(folder: str | os.PathLike, models: dict | None = None, **sections) -> dict:
    """Merge model entries (and top-level sections such as ``run``) into ``folder/metrics.json``, atomically."""
    data = read_metrics(folder)
    for name, entry in (models or {}).items():
        data["models"][name] = entry
    data.update(sections)
    data["models"] = {k: data["models"][k] for k in ordered(data["models"])}
    atomic_write_json(Path(folder) / METRICS_NAME, data)
    return data


def format_table(metrics: dict) -> str:
    """The comparison table printed at the end of a run: accuracy, params, size, latency per model."""
    rows = [("model", "accuracy", "params", "size", "latency (ms, b=1; p10-p90)")]
    for name, e in metrics.get("models", {}).items():
        size = e.get("size_bytes")
        rows.append(
            (
                name,
                f"{100 * e['accuracy']:.2f}%" if e.get("accuracy") is not None else "-",
                f"{e['params'] / 1e6:.2f}M" if e.get("params") is not None else "-",
                f"{size / 2**20:.2f} MiB" if size is not None else "-",
                format_ms(e),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
