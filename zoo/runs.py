"""The run folder's schema: which models a run measures, in which order, under which label, in which subfolder.

One table (``RUN_MODELS``) read by the report (``zoo.train.report``), the benchmark helpers (``zoo.bench``: the
order of metrics.json) and the cards (``zoo.cards``: table rows, labels). A model key not listed keeps its
metrics.json key as label and comes after the listed ones. No torch here: ``zoo --help`` imports it.

Output folder of ``zoo distill``::

    OUT/config.json, model.safetensors, tokenizer*    the distilled student
    OUT/raw_student/                                  the CE-only baseline
    OUT/pruned/, OUT/int8/, OUT/hardware/             the compression stages (when they ran and were kept)
                                                      each student folder also holds its own README.md card,
                                                      metrics.json (run.final_model: its key) and curves
    OUT/teachers/<modality>/                          teachers trained here (quickstart)
    OUT/metrics.json, metrics.jsonl, training_curves.png, README.md
    OUT/checkpoints/<phase>/step-<n>/                 resume points (zoo.checkpoint: safetensors + JSON)
    OUT/teacher_cache/                                teacher outputs with train.teacher_cache: run (default: shared,
                                                      in $ZOO_CACHE/teacher_cache, zoo.teachers.shared_cache_dir)
"""

from __future__ import annotations

from dataclasses import dataclass

STATE_NAME = "run_state.json"
JSONL_NAME = "metrics.jsonl"
METRICS_NAME = "metrics.json"
LOCAL_ONLY_DIRS = ("checkpoints", "teacher_cache", "teachers")  # stay local: resume points, teacher outputs


@dataclass(frozen=True)
class RunModel:
    """One model of a run: its metrics.json key, the label tables and cards show, and its folder in the run.

    Args:
        key: the model's key in metrics.json's ``models``.
        label: its display name.
        folder: where its weights are, relative to the run folder ("" for the top, None when not a student folder).
        float_weights: whether it is a float student (a later compression step is compared with the last one).
    """

    key: str
    label: str
    folder: str | None = None
    float_weights: bool = True


RUN_MODELS: tuple[RunModel, ...] = (
    RunModel("teacher", "teacher"),
    RunModel("raw_student", "raw student (no distillation)", "raw_student"),
    RunModel("base_student", "starting student"),
    RunModel("distilled", "distilled student", ""),
    RunModel("finetuned", "fine-tuned student", ""),
    RunModel("pruned", "pruned + KD recovery", "pruned"),
    RunModel("int8", "int8", "int8", float_weights=False),
    RunModel("onnx_fp32", "ONNX fp32"),
    RunModel("onnx_int8", "ONNX int8", "int8", float_weights=False),
    RunModel("openvino_fp32", "OpenVINO fp32"),
    RunModel("openvino_int8", "OpenVINO int8", "int8", float_weights=False),
    RunModel("tvm_fp32", "TVM fp32"),
    RunModel("tvm_int8", "TVM int8", "int8", float_weights=False),
    RunModel("hardware", "fitted to a latency budget", "hardware"),
)
MODELS = {m.key: m for m in RUN_MODELS}
MODEL_ORDER = [m.key for m in RUN_MODELS]
MODEL_LABELS = {m.key: m.label for m in RUN_MODELS}


def label(key: str) -> str:
    """The display name of a metrics.json model key (the key itself when it is not a known model)."""
    return MODEL_LABELS.get(key, key)


def ordered(keys) -> list[str]:
    """``keys`` in pipeline order: the known models first, in table order, then the others as given."""
    keys = list(keys)
    return [k for k in MODEL_ORDER if k in keys] + [k for k in keys if k not in MODELS]
