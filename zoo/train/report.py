"""Measuring a finished run: metrics.json's model entries (teacher, raw_student, distilled and the compressed
students on the test split), the onnx_int8 entry, the run section, the curves, the card and the table; and
``evaluate_folder`` for a saved student (``zoo eval``)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zoo import data as zdata
from zoo.bench import (
    accuracy,
    count_params,
    folder_size_bytes,
    format_table,
    interleaved_ms,
    latency_ms,
    model_entry,
    one_thread,
    set_latency,
    student_predict,
    update_metrics,
)
from zoo.cards import write_card
from zoo.compress.export import export_onnx, onnx_session, run_onnx
from zoo.compress.guard import compare_answers
from zoo.compress.stages import COMPRESSION_STAGES
from zoo.modalities import IGNORE_INDEX
from zoo.plots import CURVES_NAME, plot_training_curves, read_jsonl
from zoo.runs import JSONL_NAME, MODELS
from zoo.students import load_student
from zoo.train.rows import collate_rows, split_inputs


def carries(teacher, sample: dict) -> bool:
    if teacher.modality == "image-text":
        return sample.get("image") is not None and sample.get("text") is not None
    return sample.get(teacher.modality) is not None


def evaluate_folder(folder: str | os.PathLike, data_source: str, split: str = "test") -> dict:
    """Accuracy, params, size and batch-1 latency of a saved student on a split of ``data_source``."""
    student = load_student(folder)
    names = student.config.id2label  # read the data's labels by the student's names: another order is remapped
    label_map = {int(k): v for k, v in names.items()} if names else None
    if data_source == "quickstart":
        ds = zdata.quickstart()
    else:
        try:
            ds = zdata.load(data_source, label_map=label_map)
        except zdata.DataError as e:
            if label_map is None or "unknown label" not in str(e):
                raise
            raise ValueError(
                f"{data_source} has labels the student {folder} does not know (it predicts {list(names.values())}); "
                f"evaluate it on data with those label names ({(str(e).splitlines()[1:] or [str(e)])[0].strip()})."
            ) from e
    if names and {int(k): str(v) for k, v in names.items()} != {int(k): str(v) for k, v in ds.id2label.items()}:
        raise ValueError(
            f"{folder} predicts the labels {dict(names)}; {data_source} has {ds.id2label}. Evaluate on data with the "
            "student's label names."
        )
    if split not in ds.splits or not len(ds.splits[split]):
        raise ValueError(f"{data_source} has no {split!r} rows; splits: {list(ds.splits)}.")
    samples = list(ds.splits[split])
    n_student = student.config.num_classes
    if ds.num_labels != n_student:
        raise ValueError(f"{folder} predicts {n_student} classes; {data_source} has {ds.num_labels} labels.")
    acc = accuracy(student_predict(student), samples)
    one = student.preprocess(samples[:1])
    one.pop("labels")
    return model_entry(
        accuracy=acc,
        params=count_params(student),
        size_bytes=folder_size_bytes(folder),
        latency_ms=latency_ms(student, one),
        split=split,
        samples=len(samples),
    )


def measure(run) -> dict:
    """metrics.json: teacher, raw_student, distilled (and later stages) on the test split; the run section."""
    acc, r = run.accelerator, run.recipe
    t0 = time.perf_counter()
    models, calls = {}, {}  # calls: each model's batch-1 call, timed together at the end
    split = "test" if len(run.rows.get("test", [])) else "validation"
    example = latency_example(run, split)
    if run.is_main:
        models["teacher"], calls["teacher"] = teacher_entry(run, split, example)
    students = {"distilled": run.out}
    if hasattr(run, "raw_student"):
        students["raw_student"] = run.phase_dir("raw_student") / "final"
    for name, spec in COMPRESSION_STAGES.items():
        sub = spec.folder
        done = run.state["completed"].get(name) or {}
        if done.get("status") == "done":
            folder = run.out / sub
            if run.is_main:
                shutil.copytree(run.phase_dir(name) / "final", folder, dirs_exist_ok=True)
                (folder / "criterion.safetensors").unlink(missing_ok=True)
            students[sub] = folder
    acc.wait_for_everyone()
    predictions, labels = {}, None
    for name, folder in students.items():
        model = load_student(folder)
        ev = run.evaluate(model, split)
        predictions[name], labels = ev["predictions"], ev["labels"]
        if run.is_main:
            models[name], calls[name] = student_entry(run, model, folder, ev["accuracy"], example)
    # each compression step against the student it started from: a small test split moves by whole samples, and
    # the share of answers that stayed the same tells a real loss from churn that happens to net out
    source = "distilled"
    for name in [spec.folder for spec in COMPRESSION_STAGES.values()]:
        if run.is_main and name in models and source in predictions:
            same, lost, gained = compare_answers(predictions[source], predictions[name], labels)
            models[name].update(
                compared_with=source, answers_unchanged=round(same, 6), answers_lost=lost, answers_gained=gained
            )
        if name in students and MODELS[name].float_weights:  # the next step started from this student
            source = name
    fit = (run.state["completed"].get("hardware_adapt") or {}).get("latency_fit")
    if fit and "hardware" in models:  # the budget it was fitted to, on its runtime (the entry's latency is torch's)
        models["hardware"]["latency_budget"] = {
            "runtime": fit.get("runtime"), "budget_ms": fit.get("budget_ms"),
            "latency_ms": fit.get("latency_ms"), "keep": fit.get("keep"),
        }  # fmt: skip
    if "int8" in students and run.is_main:  # the deployment path of the int8 student: onnxruntime
        try:
            models["onnx_int8"], calls["onnx_int8"] = onnx_entry(run, students["int8"], split, example)
        except Exception as e:  # an export problem must not lose a finished run
            run.log(f"onnx_int8 not measured: {type(e).__name__}: {e}")
    if run.is_main:
        # one process, the models in turn in every round: the spreads are comparable, and a ratio is only claimed
        # (cards.highlights) where they do not overlap
        with one_thread(), torch.inference_mode():
            spreads = interleaved_ms(calls, rounds=r.train.latency_repeats, warmup=2)
        for name, spread in spreads.items():
            set_latency(models[name], spread)
    if hasattr(run, "raw_student") and run.is_main:
        shutil.copytree(run.phase_dir("raw_student") / "final", run.out / "raw_student", dirs_exist_ok=True)
        (run.out / "raw_student" / "criterion.safetensors").unlink(missing_ok=True)
    run.timings["measure"] = time.perf_counter() - t0
    section = {
        "recipe": r.name,
        "recipe_settings": r.to_dict(),
        # id: the source as the user gave it, a hub id or a path (the card's dataset); none for a Data object
        "dataset": {
            "name": run.data.source,
            "id": r.data.source,
            "splits": {k: len(v) for k, v in run.data.splits.items()},
        },
        "split": split,
        "student": r.student,
        "teachers": {m: str(p) for m, p in run.teacher_paths.items()},
        "teachers_trained_here": run.trained_teachers,
        "stages": run.stage_log,
        "raw_student": run.state["completed"].get("raw_student"),
        "controller": next((s["controller"] for s in run.stage_log if s.get("controller")), None),
        "timings_seconds": {k: round(v, 2) for k, v in run.timings.items()},
        "num_processes": acc.num_processes,
        "torch_threads": torch.get_num_threads(),
        "teacher_validation_accuracy": run.teacher_validation,
        "warnings": run.warnings,
        "truncation": getattr(run, "truncation", None),
        "final_model": "distilled",
    }
    data = None
    if run.is_main:
        data = update_metrics(run.out, models=models, run=section)
        curves = plot_training_curves(read_jsonl(run.out / JSONL_NAME), run.out / CURVES_NAME)
        # every student folder is complete on its own (pushed alone, it keeps its card, metrics and curves): the
        # same comparison, with run.final_model naming the folder's own model for its card's model-index
        folders = {run.out: "distilled", **{run.out / MODELS[k].folder: k for k in students if k != "distilled"}}
        for folder, key in folders.items():
            if folder != run.out:
                update_metrics(folder, models=data["models"], run={**section, "final_model": key})
                if curves is not None:
                    shutil.copy2(curves, folder / CURVES_NAME)
            try:
                write_card(folder)
            except Exception as e:  # a card problem must not lose a finished run
                run.log(f"model card of {folder} not written: {type(e).__name__}: {e}")
        print("\n" + format_table(data), flush=True)
    acc.wait_for_everyone()
    return data


def onnx_entry(run, folder: Path, split: str, example: int) -> dict:
    """Export the int8 student to ``folder/model.onnx`` (QDQ) and measure that graph in onnxruntime: accuracy
    on ``split``; returns (entry, its batch-1 call on the same sample as the torch rows, for the latency)."""
    model = load_student(folder)
    rows = run.rows[split]
    inputs, _, _ = split_inputs(collate_rows([rows[i] for i in range(min(2, len(rows)))]))
    path = export_onnx(model, folder / "model.onnx", inputs)
    session = onnx_session(path, threads=1)
    correct = total = 0
    for start in range(0, len(rows), run.recipe.data.eval_batch_size):
        batch = collate_rows([rows[i] for i in range(start, min(start + run.recipe.data.eval_batch_size, len(rows)))])
        inputs, labels, _ = split_inputs(batch)
        keep = labels != IGNORE_INDEX
        correct += int((run_onnx(session, inputs).argmax(-1)[keep] == labels[keep]).sum())
        total += int(keep.sum())
    one = {k: v[None] for k, v in rows[example].items() if k not in ("id", "labels")}
    entry = model_entry(
        accuracy=correct / max(total, 1),
        params=count_params(model),
        size_bytes=path.stat().st_size,
        latency_ms=None,
        runtime="onnxruntime",
        file=f"{folder.name}/{path.name}",
    )
    return entry, lambda: run_onnx(session, one)


def latency_example(run, split: str) -> int:
    """Index of the sample latency is measured on: the first one carrying the most modalities."""
    rows = run.rows[split]
    best, best_n = 0, -1
    for i in range(min(len(rows), 200)):
        s = rows.raw(i)
        n = sum(s.get(m) is not None for m in run.modalities)
        if n > best_n:
            best, best_n = i, n
    return best


def student_entry(run, model, folder: Path, accuracy: float, example: int) -> tuple[dict, Callable]:
    """A student's entry (latency filled in later) and its batch-1 call in eval mode."""
    item = run.rows["test" if len(run.rows.get("test", [])) else "validation"][example]
    inputs = {k: v[None] for k, v in item.items() if k not in ("id", "labels")}
    entry = model_entry(
        accuracy=accuracy, params=count_params(model), size_bytes=folder_size_bytes(folder), latency_ms=None
    )
    model.eval()
    return entry, lambda: model(**inputs)


def teacher_entry(run, split: str, example: int) -> dict:
    """The teachers together, as the student is taught: each predicts the samples of its modality, fused per
    sample the way the KD target is (``losses.teacher_fusion``). Returns (entry, the teachers' batch-1 call)."""
    rows = run.rows[split]
    samples = [rows.raw(i) for i in range(len(rows))]

    def predict(batch: list[dict]) -> torch.Tensor:  # the fused KD target at T = 1
        outs = {}
        for m, t in run.teachers.items():
            if t.num_classes == run.num_classes and any(carries(t, s) for s in batch):
                outs[m] = t(batch, layers=[])
        return run.criterion.teacher_log_probs(outs, 1.0, len(batch))[0]

    one = [samples[example]]
    classifiers = [t for t in run.teachers.values() if t.num_classes == run.num_classes]
    # an encoder teacher (embeddings only, no logits) has no accuracy to report: null, and the card says why
    acc = accuracy(predict, samples, batch_size=64) if classifiers else None
    extra = {} if classifiers else {"no_accuracy": "encoder teacher"}
    params = sum(sum(p.numel() for p in t.parameters()) for t in run.teachers.values())
    size = sum(sum(p.numel() * p.element_size() for p in t.parameters()) for t in run.teachers.values())
    entry = model_entry(
        accuracy=acc or 0.0, params=params, size_bytes=size, latency_ms=None, teachers=list(run.teachers)
    )
    entry.update(accuracy=entry["accuracy"] if classifiers else None, **extra)
    return entry, lambda: [t(one, layers=[]) for t in run.teachers.values() if carries(t, one[0])]
