"""``finetune_teacher``: turn a pretrained model into the task teacher (``zoo teacher MODEL --data SOURCE``).

Distillation needs a teacher that is good at the user's task; a pretrained encoder (all-MiniLM-L6-v2, an
ImageNet CNN) is not one until it is fine-tuned on the task's labels. MODEL is:

- a transformers folder or hub id: loaded as ``AutoModelFor{Sequence,Image,Audio}Classification`` with a new head
  sized to the data's labels (``id2label`` / ``label2id`` from the data), weights from safetensors only;
- a timm folder (``timm.models.save_for_hf``) or a timm model name whose weights are in the local cache;
- ``scratch:<modality>``: the small from-scratch teacher zoo's quickstart trains (no pretrained weights);
- ``tfidf``: TF-IDF + logistic regression over the texts (``zoo.teachers.tfidf``; cross-fitted, seconds to fit);
- ``ensemble:DIR1,DIR2``: teacher folders made before, as one teacher (their weighted mean log-probability, the
  weights chosen on validation; ``zoo.teachers.ensemble``). A fine-tuned transformer and a TF-IDF teacher err
  differently, and their ensemble beats both.

The model is saved to ``DIR`` first and loaded back through ``zoo.teachers.load_teacher``, so the fine-tune sees
exactly the preprocessing distillation will use later (the teacher adapter's own processor). Training is plain
supervised fine-tuning through the one training loop (``zoo.teachers.fit``: AdamW, warmup then cosine, CE, gradient
clipping; text batches grouped by length); the checkpoint with the best validation accuracy is kept. ``--folds K``
trains K teachers, each without one fold of train (cross-fitting, see ``zoo.teachers.crossfit``). A run checkpoints
every ``checkpoint_every`` steps without pickle (``zoo.checkpoint``) and ``resume=True`` continues it bit-identically.

Trained with zoo's loop rather than ``transformers.Trainer``: Trainer checkpoints optimizer and RNG states with
``torch.save`` (resuming unpickles them), and it knows neither timm models nor TorchScript-free zoo teachers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from zoo.io import atomic_write_json, atomic_write_text
from zoo.recipe import TeacherTraining
from zoo.teachers.crossfit import assign_folds, save_assignment
from zoo.teachers.ensemble import fit_ensemble
from zoo.teachers.fit import FinetuneSettings, accuracy, fit_classifier
from zoo.teachers.load import _encoder_modality, load_teacher, resolve_hub_id
from zoo.teachers.tfidf import fit_tfidf
from zoo.teachers.timm_teacher import is_timm_folder, load_timm
from zoo.teachers.train import build_teacher

SETTINGS_FILE = "zoo_teacher.json"
FORMAT = "zoo-teacher-1"


# ------------------------------------------------------------------------------------------ building the model
def _labels(data) -> dict:
    id2label = {int(k): str(v) for k, v in data.id2label.items()}
    return {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def _hf_modality(folder: str) -> str:
    """The modality a transformers folder takes, from its processor files."""

    return _encoder_modality(folder)


def resolve_model(model: str) -> tuple[str, str]:
    """MODEL -> (kind, local folder or name): kind is "scratch", "timm" or "transformers"."""

    if model.startswith("scratch:"):
        return "scratch", model.split(":", 1)[1]
    if os.path.isdir(model):
        return ("timm" if is_timm_folder(model) else "transformers"), model
    if os.path.exists(model):
        raise FileNotFoundError(f"zoo teacher: {model!r} is a file; pass the model's folder (config.json + weights).")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise FileNotFoundError(f"zoo teacher: model folder {model!r} does not exist.")
    if "/" not in model:  # a bare name: a timm architecture (pretrained weights only from a local folder)
        import timm

        if model in timm.list_models():
            return "timm-name", model
        raise FileNotFoundError(
            f"zoo teacher: {model!r} is not a folder, a hub id (org/name), a timm model name or scratch:<modality>."
        )
    folder, _ = resolve_hub_id(model)
    return ("timm" if is_timm_folder(folder) else "transformers"), folder


def build_initial(model: str, data, dst: Path, modality: str | None, settings: FinetuneSettings, log) -> str:
    """Write the untrained task teacher (pretrained body + new head) into ``dst``; returns its modality."""
    kind, where = resolve_model(model)
    dst.mkdir(parents=True, exist_ok=True)
    labels = _labels(data)
    if kind == "scratch":
        build_teacher(where, TeacherTraining(), data, dst)
        return where
    if kind in ("timm", "timm-name"):
        import timm

        if kind == "timm":
            net = load_timm(where, name=os.path.basename(where.rstrip("/"))).model
            net.reset_classifier(labels["num_labels"])  # the pretrained body, a new head sized to the labels
        else:
            log(f"zoo teacher: timm {where!r} given by name has no local weights; it starts from random init")
            net = timm.create_model(where, pretrained=False, num_classes=labels["num_labels"])
        names = [labels["id2label"][i] for i in range(labels["num_labels"])]
        net.pretrained_cfg = {**dict(net.pretrained_cfg or {}), "num_classes": len(names), "label_names": names}
        timm.models.save_for_hf(net, str(dst), safe_serialization=True, model_args={"num_classes": len(names)})
        return "image"
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoImageProcessor,
        AutoModelForAudioClassification,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    modality = modality or _hf_modality(where)
    auto = {
        "text": (AutoModelForSequenceClassification, AutoTokenizer),
        "image": (AutoModelForImageClassification, AutoImageProcessor),
        "audio": (AutoModelForAudioClassification, AutoFeatureExtractor),
    }[modality]
    config = AutoConfig.from_pretrained(where, trust_remote_code=False, **labels)
    net = auto[0].from_pretrained(
        where, config=config, ignore_mismatched_sizes=True, use_safetensors=True, trust_remote_code=False
    )
    processor = auto[1].from_pretrained(where, trust_remote_code=False)
    if modality == "text" and settings.max_length is not None:
        processor.model_max_length = settings.max_length
    net.save_pretrained(dst, safe_serialization=True)
    processor.save_pretrained(dst)
    return modality


# ------------------------------------------------------------------------------------------------- the API
def finetune_teacher(
    model: str,
    data,
    out: str | os.PathLike,
    *,
    modality: str | None = None,
    settings: FinetuneSettings | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
    progress: bool | None = None,
) -> dict:
    """Fine-tune ``model`` on ``data``'s labels into the teacher folder ``out``; returns its metrics.

    ``out`` then loads with ``zoo.teachers.load_teacher`` and serves ``zoo distill --teacher MODALITY=out``.
    ``out/metrics.json`` holds the validation and test accuracy of the kept (best-validation) checkpoint.
    """

    model = os.fspath(model)  # a pathlib.Path folder too
    s = settings or FinetuneSettings()
    s.validate()
    out = Path(out)
    record = {
        "format": FORMAT,
        "model": model,
        "settings": asdict(s),
        "data": data.fingerprint("train"),
        "labels": [data.id2label[i] for i in range(data.num_labels)],
    }
    marker = out / SETTINGS_FILE
    if out.exists() and any(out.iterdir()):
        if resume:
            if not marker.is_file():
                raise FileNotFoundError(f"zoo teacher --resume: {out} holds no zoo teacher run ({SETTINGS_FILE}).")
            old = json.loads(marker.read_text(encoding="utf-8"))
            changed = [k for k in record if old.get(k) != record[k]]
            if changed:
                raise ValueError(
                    f"zoo teacher --resume: {out} was started with other {', '.join(changed)}; "
                    "run without --resume into a new --out."
                )
            if (out / "metrics.json").is_file():
                log(f"zoo teacher: {out} is complete; nothing to resume")
                return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        elif not overwrite:
            raise FileExistsError(f"zoo teacher: {out} is not empty; pass --resume to continue it or --overwrite.")
        else:
            shutil.rmtree(out)
    train = list(data.splits["train"])
    val = list(data.splits["validation"]) if "validation" in data.splits else []
    test = list(data.splits["test"]) if "test" in data.splits else []
    for name, rows in (("train", train), ("validation", val), ("test", test)):
        missing = [r.get("id") for r in rows if r.get("label") is None]
        if missing:
            raise ValueError(f"zoo teacher: {len(missing)} {name} rows have no label (first: id {missing[0]!r}).")
    if data.num_labels < 2:
        raise ValueError("zoo teacher: the data has fewer than two labels; a classifier needs at least two.")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, record)
    t0 = time.perf_counter()
    folds = []
    if s.folds > 1:
        assignment = assign_folds([r["id"] for r in train], s.folds, s.seed)
        for k in range(s.folds):
            folds.append((out / f"fold-{k}", [r for r in train if assignment[str(r["id"])] != k], s.seed + k))
    else:
        folds.append((out, train, s.seed))
    if model == "tfidf":
        id2label = {int(k): str(v) for k, v in data.id2label.items()}
        fits = [fit_tfidf(rows, val, id2label, dst, seed) for dst, rows, seed in folds]  # seconds each
        if s.folds > 1:
            save_assignment(out, assignment, s.folds)
        log("zoo teacher tfidf: " + ", ".join(f"C={f['C']:g} ({f['vocabulary']} n-grams)" for f in fits))
        fitted = {"modality": "text", "best_steps": [None] * len(fits), "history": fits}
        return _finish(model, data, out, s, record, fitted, t0, log)
    if model.startswith("ensemble:"):
        return _finish(model, data, out, s, record, _fit_ensemble(model, data, out, log), t0, log)
    results = []
    for dst, rows, seed in folds:
        if not (dst / "config.json").is_file() or not resume:
            torch.manual_seed(seed)
            found = build_initial(model, data, dst, modality, s, log)
            modality = modality or found
        teacher = load_teacher(dst, modality=modality)
        modality = modality or teacher.modality
        rows = [r for r in rows if r.get(modality) is not None]
        state = fit_classifier(
            teacher, rows, [r for r in val if r.get(modality) is not None], dst, s, seed, resume, log, progress
        )
        results.append(state)
    if s.folds > 1:
        save_assignment(out, assignment, s.folds)
    teacher = load_teacher(out, modality=modality)
    val_acc = accuracy(teacher, [r for r in val if r.get(modality) is not None])
    test_acc = accuracy(teacher, [r for r in test if r.get(modality) is not None])
    if s.folds > 1:  # fold teachers only label the rows they did not see; report their mean on held-out splits
        val_acc = _mean([accuracy(t, [r for r in val if r.get(modality) is not None]) for t in teacher.folds])
        test_acc = _mean([accuracy(t, [r for r in test if r.get(modality) is not None]) for t in teacher.folds])
    fitted = {"modality": modality, "validation_accuracy": val_acc, "test_accuracy": test_acc,
              "best_steps": [r["best_step"] for r in results], "history": [r["history"] for r in results]}  # fmt: skip
    return _finish(model, data, out, s, record, fitted, t0, log, teacher)


def _fit_ensemble(model: str, data, out: Path, log) -> dict:
    """``ensemble:A,B,...`` into ``out`` (``zoo.teachers.ensemble.fit_ensemble``); the teacher's metrics."""
    members = [m.strip() for m in model.split(":", 1)[1].split(",") if m.strip()]
    missing = [m for m in members if not os.path.isdir(m)]
    if len(members) < 2 or missing:
        raise ValueError(
            f"zoo teacher {model!r}: give two or more teacher folders, ensemble:DIR1,DIR2"
            + (f"; not folders: {missing}" if missing else "")
        )
    fit = fit_ensemble(members, data, out, load_teacher, log=log)
    return {"modality": None, "best_steps": [], "history": [fit], "weights": fit["weights"]}


def _finish(model: str, data, out: Path, s: FinetuneSettings, record: dict, fitted: dict, t0: float, log,
            teacher=None) -> dict:  # fmt: skip
    """metrics.json and the card of a trained teacher folder (metrics.json last: a folder with it is complete)."""
    if teacher is None:  # a TF-IDF or ensemble teacher: its own accuracy on the held-out splits
        teacher = load_teacher(out, modality=fitted["modality"])
        for split in ("validation", "test"):
            rows = [r for r in (data.splits[split] if split in data.splits else []) if teacher.carries(r)]
            fitted[f"{split}_accuracy"] = accuracy(teacher, rows)
    metrics = {
        "teacher": {
            "model": model,
            **fitted,
            "modality": teacher.modality,
            "num_parameters": sum(p.numel() for p in teacher.parameters()),
            "train_rows": len(data.splits["train"]),
            "seconds": round(time.perf_counter() - t0, 1),
        },
        "settings": asdict(s),
        "data": str(getattr(data, "source", "")),
        "labels": record["labels"],
    }
    val_acc, test_acc = metrics["teacher"]["validation_accuracy"], metrics["teacher"]["test_accuracy"]
    atomic_write_text(out / "README.md", _card(metrics))
    atomic_write_json(out / "metrics.json", metrics)  # last: a folder with it is complete
    pct = lambda a: "n/a" if a is None else f"{100 * a:.2f}%"  # noqa: E731
    log(f"zoo teacher: {out} validation {pct(val_acc)} test {pct(test_acc)} in {metrics['teacher']['seconds']:.0f}s")
    return metrics


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _card(m: dict) -> str:
    t, s = m["teacher"], m["settings"]
    pct = lambda a: "n/a" if a is None else f"{100 * a:.2f}%"  # noqa: E731
    labels = ", ".join(m["labels"])
    if t["model"] == "tfidf":
        title = "TF-IDF + logistic regression task teacher"
        how = (
            "TF-IDF (word 1-2 grams, sublinear tf, min_df 2) + logistic regression (C per fit on validation: "
            f"{[h['C'] for h in t['history']]}), cross-fitted over {s['folds']} folds (1: not cross-fitted)."
        )
    elif t["model"].startswith("ensemble:"):
        title = f"Ensemble task teacher of `{t['model'].split(':', 1)[1]}`"
        how = (f"Weighted mean of the members' log-probabilities, weights {t['weights']} chosen on validation "
               f"(members alone on validation: {[pct(a) for a in t['history'][0]['members']]}).")  # fmt: skip
    else:
        title = f"Task teacher fine-tuned from `{t['model']}`"
        how = (
            f"Settings: epochs {s['epochs']}, lr {s['lr']:g}, batch size {s['batch_size']}, max_length "
            f"{s['max_length']}, weight decay {s['weight_decay']}, warmup {s['warmup']}, folds {s['folds']}, "
            f"seed {s['seed']}; the best validation checkpoint (steps {t['best_steps']}) is kept."
        )
    return (
        "---\nlibrary_name: distill-zoo\ntags:\n- distill-zoo\n- teacher\n---\n\n"
        f"# {title}\n\n"
        f"Made by `zoo teacher` from {t['train_rows']} train rows of `{m['data']}` ({t['modality']}, "
        f"{len(m['labels'])} labels: {labels}).\n\n"
        "| split | accuracy |\n|---|---|\n"
        f"| validation | {pct(t['validation_accuracy'])} |\n| test | {pct(t['test_accuracy'])} |\n\n"
        f"{how} Parameters: {t['num_parameters'] / 1e6:.2f}M.\n"
    )
