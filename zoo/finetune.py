"""Fine-tuning a pretrained student on new data: ``zoo finetune NAME_OR_ID_OR_DIR --data SOURCE``.

The student is loaded with ``zoo.load`` (catalogue name, hub id or folder). When the data's label set differs
from the student's, the first task's head is replaced by a fresh one sized to the data and ``config.tasks`` /
``config.id2label`` follow the data's label map. Training is a plain loop: cross-entropy on labels, plus
logit KD (``zoo.losses.kd_loss``) from each ``--teacher MODALITY=PATH`` on the rows that carry its modality.
The result is a new student folder (weights, config, metrics.json, training curve, card whose ``base_model`` is
the student it started from).
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import zoo
import zoo.data
from zoo import bench
from zoo.cards import is_hub_id, write_card
from zoo.catalogue import hub_id_for
from zoo.losses import ce_loss, kd_loss
from zoo.plots import png_figure
from zoo.teachers import load_teacher

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


def replace_heads_for_labels(student, id2label: dict) -> bool:
    """Give the student's first task a fresh head when ``id2label`` differs from its own; True when replaced."""
    from torch import nn

    new = {str(k): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}
    task = next(iter(student.config.tasks))
    if student.config.id2label == new and student.config.tasks[task] == len(new):
        return False
    old = student.heads[task]
    student.heads[task] = nn.Linear(old.in_features, len(new)).to(old.weight.device)
    student._init_weights(student.heads[task])
    student.config.tasks = {**student.config.tasks, task: len(new)}
    student.config.id2label = new
    return True


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


def _plot_curve(history: list[dict], path: Path) -> None:
    with png_figure(path, figsize=(6, 3.5), dpi=100) as (_, ax):
        steps = [h["step"] for h in history]
        for key in ("loss", "ce", "kd"):
            if any(key in h for h in history):
                ax.plot(steps, [h.get(key, math.nan) for h in history], label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("Fine-tuning")
        ax.legend()
        ax.grid(alpha=0.3)


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
) -> Path:
    """Fine-tune ``student`` (catalogue name, hub id or folder) on ``data`` (a ``zoo.data.load`` source or its
    result) and write the new student folder ``out_dir``; returns ``out_dir``.

    The loss is CE, or ``(1 - kd_weight) * CE + kd_weight * KD`` averaged over ``teachers`` ({modality: path}).
    ``skip_bad`` drops data rows with problems instead of stopping (``on_error="skip"``).
    """
    import torch

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps={steps}, batch_size={batch_size}, lr={lr}: each must be positive.")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    source = data if isinstance(data, (str, os.PathLike)) else getattr(data, "source", "data")
    data = (
        zoo.data.load(data, on_error="skip" if skip_bad else "raise") if isinstance(data, (str, os.PathLike)) else data
    )
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

    teacher_paths = dict(teachers or {})
    loaded = {m: load_teacher(p, modality=m) for m, p in teacher_paths.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    order: list[int] = []
    history: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:batch_size], order[batch_size:]
        samples = [train[i] for i in idx]
        batch = model.preprocess(samples)
        labels = batch.pop("labels")
        logits = model(**batch)
        ce = ce_loss(logits, labels)
        record = {"step": step, "ce": ce.item()}
        loss = ce
        if loaded:
            kds = []
            for m, teacher in loaded.items():
                out = teacher(samples)
                if out.logits is None or out.logits.shape[-1] != logits.shape[-1]:
                    got = None if out.logits is None else tuple(out.logits.shape)
                    raise ValueError(
                        f"teacher {teacher_paths[m]!r} ({m}) gives logits {got}; KD needs one logit per label of the "
                        f"data ({logits.shape[-1]}: {list(data.id2label.values())}). Fine-tune the teacher on these "
                        "labels first, or drop --teacher."
                    )
                kds.append(kd_loss(logits, out.logits, temperature, mask=out.mask))
            kd = torch.stack(kds).mean()
            loss = (1 - kd_weight) * ce + kd_weight * kd
            record["kd"] = kd.item()
        record["loss"] = loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(record)
    train_seconds = time.perf_counter() - t0
    model.eval()

    out_dir = Path(out_dir)
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
                "temperature": temperature if loaded else None,
                "rollbacks": 0,
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
    _plot_curve(history, out_dir / "training_curves.png")
    write_card(out_dir)
    return out_dir
