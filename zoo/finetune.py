"""Fine-tuning a pretrained student on new data: ``zoo finetune NAME_OR_ID_OR_DIR --data SOURCE``.

The student is loaded with ``zoo.load`` (catalogue name, hub id or folder; a shipped catalogue student loads offline).
Unless it already predicts exactly the data's labels, its heads are replaced (``reset_head``) by one fresh ``label``
head sized to the data, and ``config.tasks`` / ``config.id2label`` follow the data's label map: a pretrained student's
``embedding`` head gives way, its trunk is the starting point. Training is one phase of the distillation loop
(``zoo.train.loop.train_phase``, through a ``FinetuneRun``): cross-entropy on labels, plus logit KD (the ``kl`` loss
term, from the teacher-output cache) from each ``--teacher MODALITY=PATH`` on the rows that carry its modality. The
result is a new student folder (weights, config, metrics.json, training curve, card whose ``base_model`` is the student
it started from).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import zoo
import zoo.data
from zoo import bench, console
from zoo.cards import is_hub_id, write_card
from zoo.catalogue import hub_id_for
from zoo.plots import CURVES_NAME, plot_training_curves
from zoo.recipe import ControllerSettings, DataSettings, Recipe, Stage, Stages, Temperature, TrainSettings
from zoo.runs import JSONL_NAME, METRICS_NAME, STATE_NAME
from zoo.train.loop import train_phase
from zoo.train.rows import Rows
from zoo.train.run import Run
from zoo.train.teaching import load_teachers

FINAL = "finetuned"


def _base_model_id(name: str) -> str:
    """The hub id a fine-tuned card names as base_model: the catalogue entry's, the hub id itself, or the repo
    a local folder was published as (its card's model name, when the card was written for a hub id)."""

    folder = Path(name).expanduser()
    if folder.is_dir():
        card = folder / "README.md"
        if card.exists():
            from huggingface_hub import ModelCard

            try:
                model_name = ModelCard.load(card).data.model_name
            except Exception:  # a hand-written or broken card just gives no hub id
                model_name = None
            if model_name and "/" in model_name and is_hub_id(model_name):
                return model_name
        return str(folder)
    return hub_id_for(name)


def replace_heads_for_labels(student, id2label: dict, task: str = "label") -> bool:
    """Give the student one fresh ``task`` head sized to ``id2label`` (through the family's public ``reset_head``)
    unless it already predicts exactly those labels; True when replaced. A pretrained student's task (e.g. the
    ``embedding`` head of a task-agnostic text student) is dropped: only the trunk is the starting point."""
    new = {str(k): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}
    if student.config.tasks == {task: len(new)} and student.config.id2label == new:
        return False
    student.reset_head({task: len(new)}, id2label=new)
    return True


class FinetuneRun(Run):
    """A ``zoo.train.run.Run`` of one phase for ``train_phase``: the given student (already carrying its fresh
    heads), the given data and teachers only (none is trained here), their outputs cached over the train split."""

    def __init__(self, recipe: Recipe, out_dir: Path, student, progress: bool = True):
        super().__init__(recipe, out_dir, progress=progress, overwrite=True)
        self.student = student

    def log(self, message: str) -> None:
        console.log(f"[zoo finetune] {message}")

    def setup(self, data, teachers: dict[str, str]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in (STATE_NAME, JSONL_NAME, METRICS_NAME):  # a reused folder must not mix two runs
            (self.out / name).unlink(missing_ok=True)
        self.data, self.modalities, self.num_classes = data, list(data.modalities), data.num_labels
        self.labelled_rows = len(data.splits["train"])
        self.teacher_paths = teachers
        self.teachers = load_teachers(teachers, self.num_classes, data.id2label, self.log)
        for m, t in self.teachers.items():
            if t.num_classes is None:
                raise ValueError(
                    f"teacher {teachers[m]!r} ({m}) gives logits None; KD needs one logit per label of the data "
                    f"({self.num_classes}: {list(data.id2label.values())}). Fine-tune the teacher on these labels "
                    "first (zoo teacher), or drop --teacher."
                )
        pre = self.student.preprocessors()
        self.rows = {name: Rows(split, pre) for name, split in data.splits.items() if len(split)}
        self.rows.setdefault("validation", self.rows.get("test", self.rows["train"]))  # the loop's end-of-phase eval
        self.cached = self._teacher_cache()
        self.criterion = self._criterion()


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _parse_teachers(specs: list[str] | None) -> dict[str, str]:
    teachers = {}
    for spec in specs or []:
        modality, sep, path = spec.partition("=")
        if not sep or not modality or not path:
            raise ValueError(f"--teacher {spec!r}: expected MODALITY=PATH_OR_ID, e.g. image=./vit-digits.")
        teachers[modality.strip()] = path.strip()
    return teachers


def _carries_any(split, modalities: list[str]):
    import numpy as np

    keep = np.zeros(len(split), dtype=bool)
    for m in modalities:
        keep |= split.has(m)
    return split.select(np.flatnonzero(keep).tolist()) if not keep.all() else split


def finetune(
    student: str,
    data,
    out_dir: str | os.PathLike,
    *,
    teachers: dict[str, str] | None = None,
    steps: int = 200,
    lr: float = 5e-4,
    batch_size: int = 32,
    temperature: float = 2.0,
    kd_weight: float = 0.5,
    weight_decay: float = 0.05,
    seed: int = 0,
    latency_repeats: int = 10,
    skip_bad: bool = False,
    progress: bool = True,
) -> Path:
    """Fine-tune ``student`` (catalogue name, hub id or folder) on ``data`` (a ``zoo.data.load`` source or its
    result) and write the new student folder ``out_dir``; returns ``out_dir``.

    The loss is CE, or ``(1 - kd_weight) * CE + kd_weight * KD`` averaged over ``teachers`` ({modality: path}).
    ``skip_bad`` drops data rows with problems instead of stopping (``on_error="skip"``); ``progress`` shows a bar
    on a terminal.
    """
    import torch

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps={steps}, batch_size={batch_size}, lr={lr}: each must be positive.")
    torch.manual_seed(seed)
    source = data if isinstance(data, (str, os.PathLike)) else getattr(data, "source", "data")
    on_error = "skip" if skip_bad else "raise"
    data = zoo.data.load(data, on_error=on_error, seed=seed) if isinstance(data, (str, os.PathLike)) else data
    model = zoo.load(str(student))
    if model.config.quantization:
        raise ValueError(
            f"{student} is an int8 student; fine-tune the float student it was made from (the run folder's top "
            "level, not int8/) and quantize the result again."
        )
    mods = model.config.modalities
    if not set(data.modalities) & set(mods):
        raise ValueError(f"the data carries {data.modalities} but the student takes {mods}; no sample can be used.")
    splits = {k: _carries_any(v, mods) for k, v in data.splits.items()}
    train = splits["train"]
    eval_name = "test" if len(splits.get("test", [])) else "validation"
    evaluation = splits.get(eval_name)
    if not len(train):
        raise ValueError(f"the train split of {source} has no sample carrying the student's modalities {mods}.")

    replaced = replace_heads_for_labels(model, data.id2label)
    base_entry = None
    if not replaced and evaluation is not None and len(evaluation):
        base_entry = bench.accuracy(bench.student_predict(model), evaluation, batch_size=batch_size)

    # one phase of the distillation loop (zoo.train.loop): accelerate, clipping, non-finite rollback, the log
    out_dir = Path(out_dir)
    teacher_paths = dict(teachers or {})
    stage = Stage(steps=steps, lr=lr, warmup=0.0, min_lr_ratio=0.0, temperature=Temperature(start=temperature))
    stage.weights.ce = 1.0 - kd_weight if teacher_paths else 1.0
    stage.weights.kl = kd_weight if teacher_paths else 0.0
    recipe = Recipe(
        name="finetune", seed=seed, data=DataSettings(batch_size=batch_size),  # the student is the one given
        train=TrainSettings(weight_decay=weight_decay, log_every=1, checkpoint_every=steps + 1),
        controller=ControllerSettings(enabled=False), stages=Stages(soft_distill=stage),
    )  # fmt: skip
    data = copy.copy(data)  # the caller's data keeps its splits
    data.splits = splits
    run = FinetuneRun(recipe, out_dir, model, progress=progress)
    run.setup(data, teacher_paths)
    t0 = time.perf_counter()
    model, summary = train_phase(run, "finetune", stage, model)
    train_seconds = time.perf_counter() - t0
    model.eval()
    shutil.rmtree(out_dir / "teacher_cache", ignore_errors=True)  # the teachers' outputs are not part of the student
    history = [
        {k: r[k] for k in ("step", "loss", "ce", "kd") if k in r}
        for r in _read_jsonl(out_dir / JSONL_NAME)
        if r.get("event") == "train"
    ]

    model.save_pretrained(out_dir)
    models = {}
    one = model.preprocess([train[0]])
    one.pop("labels", None)
    entry = {
        "params": bench.count_params(model),
        "size_bytes": bench.folder_size_bytes(out_dir),
        "latency_ms": bench.latency_ms(model, one, repeats=latency_repeats, warmup=2),
    }
    if evaluation is not None and len(evaluation):
        if base_entry is not None:
            models["base_student"] = bench.model_entry(accuracy=base_entry, **entry)
        models[FINAL] = bench.model_entry(
            accuracy=bench.accuracy(bench.student_predict(model), evaluation, batch_size=batch_size), **entry
        )
    else:
        models[FINAL] = {**entry, "accuracy": None}
    run = {
        "recipe": "finetune",
        "base_model": _base_model_id(str(student)),
        "dataset": {"name": str(source), "split": eval_name, "splits": {k: len(v) for k, v in splits.items()}},
        "teachers": teacher_paths,
        "stages": [
            {
                "name": "finetune",
                "steps": steps,
                "lr": lr,
                "temperature": temperature if teacher_paths else None,
                "weights": summary["weights"],
                "rollbacks": len(summary["rollbacks"]),
                "train_seconds": round(train_seconds, 2),
            }
        ],
        "heads_replaced": replaced,
        "final_model": FINAL,
        "history": history,
    }
    if (out_dir / "metrics.json").exists():
        (out_dir / "metrics.json").unlink()  # a stale metrics.json in a reused folder would mix two runs
    bench.update_metrics(out_dir, models=models, run=run)
    plot_training_curves(_read_jsonl(out_dir / JSONL_NAME), out_dir / CURVES_NAME)
    write_card(out_dir)
    return out_dir
