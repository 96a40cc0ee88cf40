"""Hardware adaptation: latency on a named runtime, MAC counts, and the widest pruning that meets a latency budget.

Runtimes (batch 1, one thread, median over repeats):
- ``torch``: eager PyTorch;
- ``torch_compile``: ``torch.compile(fullgraph=True)`` (inductor); the first calls compile, so warm-up is longer;
- ``onnxruntime``: the student exported with ``zoo.compress.export.export_onnx`` and run by ONNX Runtime's CPU provider;
- ``openvino``, ``tvm``: that ONNX graph compiled by OpenVINO / TVM for this CPU (``zoo.compress.runtimes``, optional
  extras). ``check_runtime`` says before any work whether a runtime is installed and, given a student, whether the
  runtime has every operator of its graph.

``fit_latency_budget`` bisects the pruning keep ratio on measured latency (latency falls as keep falls, up to noise
and width rounding) and checks that the chosen student runs on the runtime with outputs matching eager PyTorch. The
trainer's hardware_adapt stage calls it, then recovers accuracy with KD. This module also holds the helpers the
prune / quantize / export commands share: data batches for calibration and importance, and metrics entries.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from zoo.bench import (
    accuracy,
    count_params,
    folder_size_bytes,
    latency_ms,
    median_ms,
    model_entry,
    one_thread,
    read_metrics,
    student_predict,
    update_metrics,
)
from zoo.compress import runtimes
from zoo.compress.export import example_batch, export_onnx
from zoo.compress.prune import CRITERIA, SCOPES, TARGETS, _prune, pruned_widths, taylor_scores
from zoo.compress.quant import is_qat, is_quantized
from zoo.data import load
from zoo.runs import METRICS_NAME

RUNTIMES = runtimes.HARDWARE_RUNTIMES
# largest |logit difference| vs eager torch accepted when checking a runtime (float graphs; int8 gets 20x)
RUNTIME_ATOL = 1e-3


def _first(batch: dict[str, torch.Tensor], n: int = 1) -> dict[str, torch.Tensor]:
    return {k: v[:n] for k, v in batch.items() if k != "labels"}


def count_macs(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Multiply-accumulates of one forward on ``batch`` (convolutions, matmuls and attention), via FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    return counter.get_total_flops() // 2


def check_runtime(runtime: str, student: nn.Module | None = None) -> None:
    """Fail early when ``runtime`` is unknown or not installed, or (given ``student``) lacks an operator of the
    student's graph: OpenVINO must convert its ONNX graph, TVM must have a converter for every node and import it.
    Cheap next to the compile and the latency trials (no build); the errors name the runtime and the operators."""
    runtimes.check_installed(runtime)
    if student is None or runtime not in runtimes.EXTRAS:
        return
    tmp = Path(tempfile.mkdtemp(prefix="zoo-ops-"))
    try:
        path = export_onnx(student, tmp / "model.onnx")  # in eval mode for the export, its mode restored
        if runtime == "openvino":
            runtimes.convert_openvino(path)
        else:
            runtimes.import_tvm(path, batch_size=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def runtime_latency_ms(
    student: nn.Module, batch: dict[str, torch.Tensor], runtime: str = "torch", repeats: int = 20, check: bool = True
) -> tuple[float, float]:
    """(median latency in ms at batch 1 and one thread, max |logit diff| vs eager torch) on ``runtime``.

    The first sample of ``batch`` is used. With ``check``, outputs that do not match eager PyTorch (beyond
    ``RUNTIME_ATOL``, 20x that for int8 graphs whose rounding may differ) are an error naming the runtime.
    """

    runtimes.check_installed(runtime)
    one = _first(batch)
    student.eval()
    with torch.no_grad():
        ref = student(**one)
    diff = 0.0
    if runtime == "torch":
        return latency_ms(student, one, repeats=repeats), diff
    if runtime == "torch_compile":
        compiled = torch.compile(student, fullgraph=True, dynamic=False)
        with one_thread(), torch.no_grad():
            try:
                diff = float((compiled(**one) - ref).abs().max())
            except Exception as e:  # inductor raises many types; name the runtime and the cause
                raise RuntimeError(f"the student does not compile with torch.compile(fullgraph=True): {e}") from e
        ms = latency_ms(compiled, one, repeats=repeats, warmup=3)
    else:  # the ONNX graph on its runtime: as is, or compiled by OpenVINO / TVM at batch 1
        tmp = Path(tempfile.mkdtemp(prefix="zoo-onnx-"))
        try:
            path = export_onnx(student, tmp / "model.onnx", {k: v.repeat_interleave(2, 0) for k, v in one.items()})
            if runtime == "openvino":
                path = runtimes.export_openvino(path, tmp / "openvino")
            elif runtime == "tvm":
                path = runtimes.export_tvm(path, tmp / "tvm", (1,))
            compiled = runtimes.session(path, threads=1)
            diff = float((compiled.logits(one) - ref).abs().max())
            feeds = compiled.feeds(one)
            ms = median_ms(lambda: compiled.run(feeds), repeats=repeats)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tol = RUNTIME_ATOL * (20 if is_quantized(student) else 1) * max(1.0, float(ref.abs().max()))
    if check and not diff <= tol:
        raise RuntimeError(
            f"the student's outputs on {runtime} differ from eager torch by {diff:.3g} (tolerance {tol:.3g}): "
            "an op is not supported faithfully on this runtime."
        )
    return ms, diff


def fit_latency_budget(
    student: nn.Module,
    budget_ms: float | None,
    runtime: str,
    example_batch: dict[str, torch.Tensor],
    criterion: str = "l1",
    scope: str = "global",
    round_to: int = 8,
    importance_batches: Iterable | None = None,
    min_keep: float = 0.1,
    steps: int = 6,
    repeats: int = 20,
    budget_ratio: float | None = None,
) -> tuple[nn.Module, dict]:
    """The widest pruned student (largest keep ratio) whose batch-1 latency on ``runtime`` is within ``budget_ms``.

    Bisects the keep ratio over [min_keep, 1] for ``steps`` rounds, pruning the float ``student`` afresh at each
    ratio (importance computed once) and measuring it on ``runtime``. A student already within budget is returned
    as is (keep 1.0). A budget not met even at ``min_keep`` is an error giving the latency reached there.
    ``budget_ratio`` (with ``budget_ms=None``) sets the budget to that fraction of the student's own latency, taken
    from the same measurement as the trials (a separate measurement's noise could put the budget above it).
    Returns (student, report) with the budget, measured latency, runtime, keep and every trial.
    """

    runtimes.check_installed(runtime)
    if is_quantized(student) or is_qat(student):
        raise ValueError(
            "fit_latency_budget prunes, so it takes the float student: run it before quantizing (quant_finetune), "
            "then quantize the result."
        )
    if (budget_ms is None) == (budget_ratio is None):
        raise ValueError("give one latency budget: budget_ms, or budget_ratio of the student's own latency.")
    if not (budget_ms if budget_ms is not None else budget_ratio) > 0:
        raise ValueError(f"latency budget {budget_ms!r} ms / ratio {budget_ratio!r} must be positive.")
    if not 0.0 < min_keep < 1.0:
        raise ValueError(f"min_keep {min_keep!r} must be in (0, 1).")
    if criterion not in CRITERIA or scope not in SCOPES:
        raise ValueError(f"criterion {criterion!r} / scope {scope!r}: choose from {list(CRITERIA)} / {list(SCOPES)}.")
    weights = None
    if criterion == "taylor":
        if importance_batches is None:
            raise ValueError("criterion 'taylor' needs importance_batches (a few batches of training data).")
        weights = taylor_scores(student, importance_batches)
    trials = []

    def measure(model: nn.Module, keep: float) -> float:
        ms, diff = runtime_latency_ms(model, example_batch, runtime, repeats=repeats)
        trials.append({"keep": round(keep, 4), "latency_ms": round(ms, 4), "max_abs_diff": diff})
        return ms

    full_ms = measure(student, 1.0)
    if budget_ms is None:
        budget_ms = budget_ratio * full_ms
    report = {"budget_ms": float(budget_ms), "runtime": runtime, "criterion": criterion, "batch_size": 1}
    report["full_latency_ms"] = round(full_ms, 4)
    if full_ms <= budget_ms:
        return student, {**report, "latency_ms": round(full_ms, 4), "keep": 1.0, "met": True, "trials": trials}

    def prune(keep: float) -> nn.Module:
        return _prune(student, keep, weights, criterion, scope, round_to, TARGETS)

    best, best_keep = prune(min_keep), min_keep
    best_ms = measure(best, min_keep)
    if best_ms > budget_ms:
        raise ValueError(
            f"latency budget {budget_ms} ms on {runtime} is out of reach: the student takes {full_ms:.2f} ms, and "
            f"{best_ms:.2f} ms even pruned to keep={min_keep}. Raise the budget or start from a smaller architecture."
        )
    lo, hi = min_keep, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = prune(mid)
        ms = measure(candidate, mid)
        if ms <= budget_ms:
            lo, best, best_keep, best_ms = mid, candidate, mid, ms
        else:
            hi = mid
    report.update(latency_ms=round(best_ms, 4), keep=round(best_keep, 4), met=True, widths=pruned_widths(best))
    return best, {**report, "trials": trials}


# ------------------------------------------------------------------------------ shared by the CLI commands
def data_batches(
    student: nn.Module, source: str | None, num_batches: int = 8, batch_size: int = 32, split: str = "train"
) -> tuple[list[dict], str]:
    """(flat batches, a note saying where they came from) for calibration or importance.

    With ``source``, batches of ``split`` loaded by ``zoo.data.load(source)`` and run through the student's own
    preprocessing; without, synthetic batches (random pixels, white noise, random tokens) from
    ``zoo.compress.export.example_batch``, which calibrate worse than real data.
    """
    if source is None:
        batches = [example_batch(student, batch_size=batch_size, seed=i) for i in range(num_batches)]
        return batches, (
            f"no --data given: using {num_batches} synthetic batches of {batch_size} (random images, noise, random "
            "tokens); pass --data SOURCE to use real samples."
        )

    data = load(source)
    names = list(data.splits)
    if split not in data.splits:
        split = names[0]
    rows = data[split]
    batches, samples = [], []
    for sample in rows:
        samples.append(sample)
        if len(samples) == batch_size:
            batches.append(student.preprocess(samples))
            samples = []
            if len(batches) == num_batches:
                break
    if samples and len(batches) < num_batches:
        batches.append(student.preprocess(samples))
    if not batches:
        raise ValueError(f"{source}: the {split} split has no rows to calibrate on.")
    return batches, f"using {len(batches)} batches of the {split} split of {source}"


def evaluate_accuracy(student: nn.Module, source: str) -> float:
    """Top-1 accuracy on the test split (or the last split) of ``zoo.data.load(source)``."""

    data = load(source)
    split = "test" if "test" in data.splits else list(data.splits)[-1]
    return accuracy(student_predict(student), data[split])


def metrics_entry(student: nn.Module, folder: str | Path, source: str | None, known: dict | None = None, **extra):
    """A metrics.json entry for a saved student: accuracy (from ``source``'s test split, else ``known``), params,
    size of model.safetensors and eager-torch latency at batch 1, one thread."""

    acc = evaluate_accuracy(student, source) if source else (known or {}).get("accuracy")
    entry = model_entry(
        accuracy=0.0 if acc is None else acc,
        params=count_params(student),
        size_bytes=folder_size_bytes(folder),
        latency_ms=latency_ms(student, example_batch(student, 1)),
        runtime="torch",
        **extra,
    )
    entry["accuracy"] = None if acc is None else entry["accuracy"]  # unknown stays null, never a made-up 0
    return entry


def copy_metrics(src: str | Path, dst: str | Path) -> None:
    """Start ``dst``'s metrics.json from ``src``'s, so the lineage (teacher, distilled, ...) stays with the model."""

    if (Path(src) / METRICS_NAME).exists() and Path(src).resolve() != Path(dst).resolve():
        data = read_metrics(src)
        Path(dst).mkdir(parents=True, exist_ok=True)
        update_metrics(dst, data.pop("models"), **data)
