"""``finetune_teacher``: turn a pretrained model into the task teacher (``zoo teacher MODEL --data SOURCE``).

Distillation needs a teacher that is good at the user's task; a pretrained encoder (all-MiniLM-L6-v2, an
ImageNet CNN) is not one until it is fine-tuned on the task's labels. MODEL is:

- a transformers folder or hub id: loaded as ``AutoModelFor{Sequence,Image,Audio}Classification`` with a new head
  sized to the data's labels (``id2label`` / ``label2id`` from the data), weights from safetensors only;
- a timm folder (``timm.models.save_for_hf``) or a timm model name whose weights are in the local cache;
- ``scratch:<modality>``: the small from-scratch teacher zoo's quickstart trains (no pretrained weights).

The model is saved to ``DIR`` first and loaded back through ``zoo.teachers.load_teacher``, so the fine-tune sees
exactly the preprocessing distillation will use later (the teacher adapter's own processor). Training is plain
supervised fine-tuning (AdamW, linear warmup then cosine, CE, gradient clipping; text batches grouped by length,
``epoch_batches``); the checkpoint with the best validation accuracy is kept. ``--folds K`` trains K teachers,
each without one fold of train (cross-fitting, see ``zoo.teachers.crossfit``). A run checkpoints every
``checkpoint_every`` steps without pickle (``zoo.checkpoint``) and ``resume=True`` continues it bit-identically.

Written here rather than with ``transformers.Trainer``: Trainer checkpoints optimizer and RNG states with
``torch.save`` (resuming unpickles them), and it knows neither timm models nor TorchScript-free zoo teachers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from zoo.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from zoo.console import Progress
from zoo.io import atomic_path, atomic_write_json, atomic_write_text
from zoo.recipe import TeacherTraining
from zoo.teachers.base import Teacher
from zoo.teachers.crossfit import assign_folds, save_assignment
from zoo.teachers.load import _encoder_modality, load_teacher, resolve_hub_id
from zoo.teachers.timm_teacher import is_timm_folder, load_timm
from zoo.teachers.train import build_teacher

SETTINGS_FILE = "zoo_teacher.json"
FORMAT = "zoo-teacher-1"


@dataclass
class FinetuneSettings:
    """What ``zoo teacher`` trains with; recorded in ``DIR/zoo_teacher.json`` and compared on ``--resume``."""

    epochs: float = 4.0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int | None = 64  # text only; None: the tokenizer's own limit
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of the steps
    grad_clip: float = 1.0
    folds: int = 1
    seed: int = 0
    checkpoint_every: int = 100
    eval_batch_size: int = 64
    group_by_length: bool = True  # text: batches of similar length (less padding), as transformers.Trainer offers

    def validate(self) -> None:
        checks = {
            "epochs": self.epochs > 0,
            "lr": math.isfinite(self.lr) and self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "weight_decay": math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "warmup": 0 <= self.warmup < 1,
            "grad_clip": math.isfinite(self.grad_clip) and self.grad_clip > 0,
            "folds": self.folds >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
        }
        if self.max_length is not None:
            checks["max_length"] = self.max_length >= 2
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            k = bad[0]
            raise ValueError(f"zoo teacher: {k}={getattr(self, k)!r} is out of range; see `zoo teacher --help`.")


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


# ------------------------------------------------------------------------------------------------ the loop
MEGABATCH = 50  # batches per length-sorted chunk (transformers' LengthGroupedSampler uses the same)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: list[int] | None = None) -> list[list]:
    """The full batches of one epoch: a permutation drawn from (seed, epoch) only, so a resumed run sees the same.

    With ``lengths`` (text), each chunk of ``MEGABATCH`` batches of the permutation is sorted by length, longest
    first, and the batches are then shuffled: rows of similar length share a batch and padding shrinks (a batch
    of 32 texts padded to its longest costs the longest's time), while every row still comes once per epoch. The
    tail that does not fill a batch is left out of that epoch.
    """
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is not None:
        mega = batch_size * MEGABATCH
        order = [j for i in range(0, n, mega) for j in sorted(order[i : i + mega], key=lambda j: -lengths[j])]
    batches = [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or [order]
    if lengths is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def _report_truncation(lengths: list[int], max_length: int, name: str, log) -> None:
    """One line when --max-length cuts a fair share of the train texts: how many, and their length percentiles."""
    cut = sum(n > max_length for n in lengths) / len(lengths)
    if cut < 0.05:
        return
    ordered = sorted(lengths)
    p50, p90 = ordered[len(ordered) // 2], ordered[min(int(0.9 * len(ordered)), len(ordered) - 1)]
    log(
        f"zoo teacher: {name}: {100 * cut:.0f}% of the train texts are longer than --max-length {max_length} tokens "
        f"(median {p50}, 90th percentile {p90}) and are cut; a larger --max-length reads more of them at more cost"
    )


def _text_lengths(teacher: Teacher, rows: list[dict]) -> list[int] | None:
    """Token counts of the rows' texts under the teacher's tokenizer (None for other modalities)."""
    processor = getattr(getattr(teacher, "processors", None), "processor", None)
    if teacher.modality != "text" or processor is None or not callable(processor):
        return None
    return [len(ids) for ids in processor([r["text"] for r in rows], truncation=False, verbose=False)["input_ids"]]


def _lr_lambda(total: int, warmup: float):
    """Linear warmup over ``warmup`` of the steps, then cosine to zero."""
    w = max(int(total * warmup), 1)
    return lambda s: (s + 1) / w if s < w else 0.5 * (1 + math.cos(math.pi * min((s - w) / max(total - w, 1), 1.0)))


def accuracy(teacher: Teacher, samples: list[dict], batch_size: int = 64) -> float | None:
    """Share of ``samples`` the teacher's logits classify right (None when there are none or no logits)."""
    if not samples:
        return None
    right = 0
    teacher.model.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            out = teacher(chunk, layers=[])
            if out.logits is None:
                return None
            right += int((out.logits.argmax(-1) == torch.tensor([int(s["label"]) for s in chunk])).sum())
    return right / len(samples)


def _fit(
    teacher: Teacher,
    train: list[dict],
    val: list[dict],
    dst: Path,
    s: FinetuneSettings,
    seed: int,
    resume: bool,
    log,
    progress: bool | None,
) -> dict:
    """Fine-tune ``teacher.model`` on ``train`` with CE; keep the best-validation weights in ``dst``."""

    model = teacher.model
    for p in model.parameters():
        p.requires_grad_(True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]  # nanoGPT: matrices decay, biases/norms not
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=s.lr
    )
    per_epoch = max(len(train) // s.batch_size, 1)
    total = max(int(round(s.epochs * per_epoch)), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, s.warmup))
    state = {"step": 0, "best": -1.0, "best_step": None, "history": []}
    ckdir = dst / "checkpoints"
    torch.manual_seed(seed)  # dropout; a resumed run restores the generator's state from its checkpoint below
    last = latest_checkpoint(ckdir) if resume else None
    if last is not None:
        state = load_checkpoint(last, model=model, optimizer=opt, scheduler=sched)["fit"]
        log(f"zoo teacher: resumed {dst.name} at step {state['step']}/{total}")
    eval_every = per_epoch if s.epochs >= 1 else total
    bar = Progress(total, state["step"], f"teacher {dst.name}", log, progress)
    labels = torch.tensor([int(x["label"]) for x in train])
    lengths = _text_lengths(teacher, train)
    if lengths and s.max_length:
        _report_truncation(lengths, s.max_length, dst.name, log)
    lengths = lengths if s.group_by_length else None
    batches, batches_epoch = None, None
    while state["step"] < total:
        step = state["step"]
        epoch, pos = divmod(step, per_epoch)
        if batches_epoch != epoch:  # the order of an epoch depends on (seed, epoch): a resumed run draws the same
            batches, batches_epoch = epoch_batches(len(train), s.batch_size, seed, epoch, lengths), epoch
        idx = batches[pos]
        model.train()
        inputs = teacher.preprocess([train[i] for i in idx])
        inputs = {k: v for k, v in inputs.items() if k != "mask"}
        logits = _logits(model, inputs)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[idx])
        if not torch.isfinite(loss):
            raise ValueError(f"zoo teacher: the loss became {loss.item()} at step {step}; lower --lr (now {s.lr:g}).")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state["step"] = step + 1
        bar.update(loss=loss.item())
        if state["step"] % eval_every == 0 or state["step"] == total:
            acc = accuracy(teacher, val, s.eval_batch_size) if val else None
            state["history"].append({"step": state["step"], "loss": loss.item(), "val_accuracy": acc})
            msg = "n/a" if acc is None else f"{100 * acc:.2f}%"
            log(f"zoo teacher: {dst.name} step {state['step']}/{total} validation accuracy {msg}")
            score = -1.0 if acc is None else acc
            if score > state["best"] or state["best_step"] is None:
                state["best"], state["best_step"] = score, state["step"]
                _save_weights(teacher, dst)
        if state["step"] % s.checkpoint_every == 0 and state["step"] < total:
            save_checkpoint(
                ckdir / f"step-{state['step']}",
                model=model,
                optimizer=opt,
                scheduler=sched,
                trainer_state={"fit": state},
            )
            for old in ckdir.glob("step-*"):
                if old.name != f"step-{state['step']}":
                    shutil.rmtree(old, ignore_errors=True)
    bar.close()
    shutil.rmtree(ckdir, ignore_errors=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return state


def _logits(model, inputs: dict) -> torch.Tensor:
    """Logits of a transformers classifier (keyword inputs) or a timm model (pixel_values)."""
    if hasattr(model, "forward_head"):  # timm
        return model(inputs["pixel_values"])
    return model(**inputs).logits


def _save_weights(teacher: Teacher, dst: Path) -> None:
    """The current weights into ``dst`` (transformers or timm layout), atomically per file."""
    from safetensors.torch import save_model

    with atomic_path(dst / "model.safetensors") as tmp:
        save_model(teacher.model, str(tmp), metadata={"format": "pt"})


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
    results = []
    for dst, rows, seed in folds:
        if not (dst / "config.json").is_file() or not resume:
            torch.manual_seed(seed)
            found = build_initial(model, data, dst, modality, s, log)
            modality = modality or found
        teacher = load_teacher(dst, modality=modality)
        modality = modality or teacher.modality
        rows = [r for r in rows if r.get(modality) is not None]
        state = _fit(
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
    metrics = {
        "teacher": {
            "model": model,
            "modality": modality,
            "validation_accuracy": val_acc,
            "test_accuracy": test_acc,
            "num_parameters": sum(p.numel() for p in teacher.parameters()),
            "train_rows": len(train),
            "best_steps": [r["best_step"] for r in results],
            "history": [r["history"] for r in results],
            "seconds": round(time.perf_counter() - t0, 1),
        },
        "settings": asdict(s),
        "data": str(getattr(data, "source", "")),
        "labels": record["labels"],
    }
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
    return (
        "---\nlibrary_name: distill-zoo\ntags:\n- distill-zoo\n- teacher\n---\n\n"
        f"# Task teacher fine-tuned from `{t['model']}`\n\n"
        f"Fine-tuned by `zoo teacher` on {t['train_rows']} train rows of `{m['data']}` ({t['modality']}, "
        f"{len(m['labels'])} labels: {labels}).\n\n"
        "| split | accuracy |\n|---|---|\n"
        f"| validation | {pct(t['validation_accuracy'])} |\n| test | {pct(t['test_accuracy'])} |\n\n"
        f"Settings: epochs {s['epochs']}, lr {s['lr']:g}, batch size {s['batch_size']}, max_length "
        f"{s['max_length']}, weight decay {s['weight_decay']}, warmup {s['warmup']}, folds {s['folds']}, "
        f"seed {s['seed']}; the best validation checkpoint (steps {t['best_steps']}) is kept. "
        f"Parameters: {t['num_parameters'] / 1e6:.2f}M.\n"
    )
