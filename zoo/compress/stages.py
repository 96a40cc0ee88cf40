"""The compression stages in one table: each stage's attempts, how it prepares a candidate, how it finalizes it,
the run subfolder it is saved to and its metrics.json key.

A stage's ``prepare(run, stage, student, settings, phase)`` returns ``(candidate, fit report, reference)``: the
compressed student to recover with KD, what made it (saved in the metrics), and the frozen starting student its
``reference`` / ``quant`` loss terms distil from (None without those terms); ``(None, why, None)`` skips the stage.
``zoo.compress.guard.compression_stage`` runs the attempts under the accuracy guard.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass

from zoo.compress.hardware import check_runtime, fit_latency_budget
from zoo.compress.prune import prune_student
from zoo.compress.quant import calibrate, convert_int8, prepare_qat
from zoo.io import atomic_write_json
from zoo.students import load_student
from zoo.train.rows import collate_rows


@dataclass(frozen=True)
class CompressionStage:
    """One compression stage of a recipe (``stages.<name>``).

    Args:
        attempts: the settings to try in order, from the recipe stage (the guard moves to the next on a drop).
        prepare: builds the candidate from the incoming student (see the module docstring).
        folder: the run subfolder the kept student is copied to, also its metrics.json key (``zoo.runs``).
        finalize: turns the recovered candidate into the saved student (int8 conversion), identity by default.
    """

    attempts: Callable
    prepare: Callable
    folder: str
    finalize: Callable = lambda candidate: candidate  # noqa: E731


def example_batches(run, n: int) -> list[dict]:
    rows = run.rows["train"]
    bs = run.recipe.data.batch_size
    out = []
    for i in range(n):
        idx = range(i * bs, min((i + 1) * bs, len(rows)))
        if not len(idx):
            break
        batch = collate_rows([rows[j] for j in idx])
        batch.pop("ids")
        out.append(batch)
    return out


def _prepare_prune(run, stage, student, settings: dict, phase: str):
    resumed = _resume_start(run, phase)
    if resumed is not None:
        return resumed[0], resumed[1], _reference(stage, student)
    candidate = prune_student(
        student, keep=settings["keep"], criterion=stage.criterion, importance_batches=example_batches(run, 4)
    )
    result = {"params_before": student.num_params(), "params_after": candidate.num_params()}
    _save_start(run, phase, candidate, result)
    return candidate.train(), result, _reference(stage, student)


def _save_start(run, phase: str, candidate, result: dict) -> None:
    """Keep a compression attempt's starting student and what made it (``start/``), so a resumed run restarts the
    attempt from the same student and still reports how it was fitted."""
    start = run.phase_dir(phase) / "start"
    if run.is_main:
        start.mkdir(parents=True, exist_ok=True)
        atomic_write_json(start / "fit.json", result)  # before the weights: their presence marks a complete start/
        candidate.save_pretrained(start)
    run.accelerator.wait_for_everyone()


def _resume_start(run, phase: str):
    """(student, fit report) saved by :func:`_save_start` when resuming and the attempt had begun, else None."""
    start = run.phase_dir(phase) / "start"
    if not (run.resume and (start / "model.safetensors").exists()):
        return None
    report = json.loads((start / "fit.json").read_text()) if (start / "fit.json").exists() else {}
    return load_student(start).train(), report


def _reference(stage, student):
    """The stage's starting student, frozen, when its loss has a ``reference`` (or ``quant``) KD term; else None."""
    if stage.weights.reference <= 0 and stage.weights.quant <= 0:
        return None
    return copy.deepcopy(student).eval().requires_grad_(False)


def _prepare_quant(run, stage, student, settings: dict, phase: str):
    qat = prepare_qat(copy.deepcopy(student))
    calibrate(qat, example_batches(run, stage.calibration_batches))
    return qat.train(), {}, _reference(stage, student)


def _prepare_hardware(run, stage, student, settings: dict, phase: str):
    budget, ratio = settings.get("latency_budget_ms"), settings.get("latency_budget_ratio")
    if budget is None and ratio is None:
        return None, "neither hardware_adapt.latency_budget_ms nor latency_budget_ratio is set", None
    resumed = _resume_start(run, phase)
    if resumed is not None:
        fit = resumed[1].get("latency_fit") or {}
        if "budget_ms" in fit:  # the budget the saved student was fitted to, as the first run logged it
            settings["latency_budget_ms"] = round(fit["budget_ms"], 3)
        return resumed[0], resumed[1], _reference(stage, student)
    check_runtime(settings["runtime"], student)  # an operator the runtime lacks: named before the trials
    example = example_batches(run, 1)[0]
    example = {k: v[:1] for k, v in example.items() if k != "labels"}
    try:
        # a ratio is of the incoming student's latency on this machine, measured by the fit itself
        ratio = ratio if budget is None else None
        candidate, report = fit_latency_budget(student, budget, settings["runtime"], example, budget_ratio=ratio)
    except ValueError as e:  # out of reach on this machine: keep the student as it is and say why
        return None, str(e), None
    settings["latency_budget_ms"] = round(report["budget_ms"], 3)
    result = {"latency_fit": {k: report[k] for k in ("keep", "latency_ms", "budget_ms", "runtime") if k in report}}
    _save_start(run, phase, candidate, result)
    return candidate.train(), result, _reference(stage, student)


def _budget(stage) -> list[dict]:
    return [{"latency_budget_ms": stage.latency_budget_ms, "latency_budget_ratio": stage.latency_budget_ratio,
             "runtime": stage.runtime}]  # fmt: skip


COMPRESSION_STAGES: dict[str, CompressionStage] = {
    "prune": CompressionStage(
        attempts=lambda stage: [{"keep": k} for k in [stage.keep, *stage.retry_keeps]],
        prepare=_prepare_prune,
        folder="pruned",
    ),
    "quant_finetune": CompressionStage(
        attempts=lambda stage: [{}], prepare=_prepare_quant, folder="int8", finalize=convert_int8
    ),
    "hardware_adapt": CompressionStage(attempts=_budget, prepare=_prepare_hardware, folder="hardware"),
}
