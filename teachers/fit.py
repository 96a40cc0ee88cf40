"""Training a classifier teacher with cross-entropy, through the one training loop (``zoo.train.loop``).

``zoo teacher`` fine-tunes a pretrained model with it (``zoo.teachers.finetune``) and ``zoo distill`` trains its
from-scratch teachers with it (``zoo.teachers.train``): AdamW (matrices decay, biases and norms not), one warmup +
cosine schedule (``zoo.train.schedule``), CE, gradient clipping, non-finite rollback, checkpoints without pickle
under ``DIR/checkpoints`` that ``resume=True`` continues bit-identically, and (``keep_best``) the weights with the
best validation accuracy, measured at every epoch's end. Each epoch's batches come from (seed, epoch) only; text
batches group rows of similar length (``epoch_batches``).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

from zoo.io import atomic_path
from zoo.recipe import TrainSettings
from zoo.teachers.base import Teacher
from zoo.train.loop import Phase, SingleProcess, param_groups, train_loop
from zoo.train.schedule import phase_lr

LOG_NAME = "log.jsonl"  # the fit's records, under DIR/checkpoints: truncated back to a checkpoint when resuming


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


def report_truncation(lengths: list[int], max_length: int, name: str, log) -> None:
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


def text_lengths(teacher: Teacher, rows: list[dict]) -> list[int] | None:
    """Token counts of the rows' texts under the teacher's tokenizer (None for other modalities)."""
    processor = getattr(getattr(teacher, "processors", None), "processor", None)
    if teacher.modality != "text" or processor is None or not callable(processor):
        return None
    return [len(ids) for ids in processor([r["text"] for r in rows], truncation=False, verbose=False)["input_ids"]]


def accuracy(teacher: Teacher, samples: list[dict], batch_size: int = 64) -> float | None:
    """Share of ``samples`` the teacher's logits classify right (None when there are none or no logits)."""
    if not samples:
        return None
    right = 0
    teacher.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            out = teacher(chunk, layers=[])
            if out.logits is None:
                return None
            right += int((out.logits.argmax(-1) == torch.tensor([int(s["label"]) for s in chunk])).sum())
    return right / len(samples)


def _logits(model, inputs: dict) -> torch.Tensor:
    """Logits of a transformers classifier (keyword inputs) or a timm model (pixel_values)."""
    if hasattr(model, "forward_head"):  # timm
        return model(inputs["pixel_values"])
    return model(**inputs).logits


def _save_weights(teacher: Teacher, dst: Path) -> None:
    """The current weights into ``dst`` (transformers or timm layout), atomically per file."""
    with atomic_path(dst / "model.safetensors") as tmp:
        save_model(teacher.model, str(tmp), metadata={"format": "pt"})


class ClassifierCE(nn.Module):
    """A classifier and its loss: ``forward(inputs, labels)`` returns {"loss": CE of the logits}."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.cross_entropy(_logits(self.model, inputs).float(), labels)}


class _Batches:
    """The batches of row indices of each epoch (``epoch_batches``), for the loop's ``set_epoch`` / iteration."""

    def __init__(self, n: int, batch_size: int, seed: int, lengths: list[int] | None):
        self.n, self.batch_size, self.seed, self.lengths, self.epoch = n, batch_size, seed, lengths, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_batches(self.n, self.batch_size, self.seed, self.epoch, self.lengths))


class _Host:
    """What the loop asks of the job it trains for, for one teacher in ``folder``: the log, records kept in
    ``checkpoints/log.jsonl`` (the validation history), accuracy on ``val``."""

    is_main, stop_after = True, None

    def __init__(self, teacher: Teacher, val: list[dict], folder: Path, total: int, resume: bool, log, progress, s):
        self.teacher, self.val, self.folder, self.total, self.resume, self._log = (
            teacher,
            val,
            folder,
            total,
            resume,
            log,
        )
        self.eval_batch_size, self.progress = s.eval_batch_size, progress is not False
        self.accelerator = SingleProcess(next(teacher.model.parameters()).device)
        self.global_step = self.steps_this_session = 0
        self.jsonl = folder / "checkpoints" / LOG_NAME

    def log(self, message: str) -> None:
        self._log(f"zoo teacher: {message}")

    def phase_dir(self, phase: str) -> Path:
        return self.folder / "checkpoints"

    def record(self, **fields) -> None:
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(fields) + "\n")
        if fields["event"] == "eval":
            acc = fields["val_accuracy"]
            msg = "n/a" if math.isnan(acc) else f"{100 * acc:.2f}%"
            self.log(f"{self.folder.name} step {fields['step']}/{self.total} validation accuracy {msg}")

    def evaluate(self, model: nn.Module, limit: int | None = None) -> dict:
        was_training = model.training
        acc = accuracy(self.teacher, self.val, self.eval_batch_size)
        model.train(was_training)
        return {"accuracy": float("nan") if acc is None else acc, "loss": float("nan")}

    def history(self) -> list[dict]:
        """One entry per validation: step, the train loss of that step, accuracy (None without a validation set)."""
        out, loss = [], None
        for rec in map(json.loads, self.jsonl.read_text(encoding="utf-8").splitlines()):
            if rec["event"] == "train":
                loss = rec["loss"]
            elif rec["event"] == "eval":
                acc = None if math.isnan(rec["val_accuracy"]) else rec["val_accuracy"]
                out.append({"step": rec["step"], "loss": loss, "val_accuracy": acc})
        return out


def fit_classifier(
    teacher: Teacher,
    train: list[dict],
    val: list[dict],
    dst: Path,
    s: FinetuneSettings,
    seed: int,
    resume: bool,
    log,
    progress: bool | None,
    *,
    steps: int | None = None,
    keep_best: bool = True,
    lr_key: str = "--lr",
) -> dict:
    """Train ``teacher.model`` on ``train`` with CE (``s.epochs`` epochs, or ``steps``); save its weights (the best
    validation ones with ``keep_best``) to ``dst/model.safetensors``. Returns {step, best, best_step, history}."""
    model = teacher.model
    for p in model.parameters():
        p.requires_grad_(True)
    per_epoch = max(len(train) // s.batch_size, 1)
    total = steps or max(int(round(s.epochs * per_epoch)), 1)
    torch.manual_seed(seed)  # dropout; a resumed run restores the generator's state from its checkpoint
    module = ClassifierCE(model)
    optimizer = torch.optim.AdamW(param_groups(module, s.weight_decay), lr=s.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, phase_lr(s.warmup, 0.0, 0, total))
    labels = torch.tensor([int(x["label"]) for x in train])
    lengths = text_lengths(teacher, train)
    if lengths and s.max_length:
        report_truncation(lengths, s.max_length, dst.name, log)
    if not resume:
        shutil.rmtree(dst / "checkpoints", ignore_errors=True)

    def feed(idx: list[int], progress: float) -> tuple[tuple, dict]:
        inputs = teacher.preprocess([train[i] for i in idx])
        return ({k: v for k, v in inputs.items() if k != "mask"}, labels[idx]), {}

    settings = TrainSettings(grad_clip=s.grad_clip, checkpoint_every=s.checkpoint_every, log_every=1)
    loader = _Batches(len(train), s.batch_size, seed, lengths if s.group_by_length else None)
    job = Phase(
        dst.name, total, model, module, loader, optimizer, scheduler, feed, settings,
        keep_best=keep_best and bool(val), lr_key=lr_key,
    )  # fmt: skip
    host = _Host(teacher, val, dst, total, resume, log, progress, s)
    summary = train_loop(host, job)
    history = host.history()
    _save_weights(teacher, dst)
    shutil.rmtree(dst / "checkpoints", ignore_errors=True)
    for p in model.parameters():
        p.requires_grad_(False)
    best = summary["val_accuracy"]
    return {"step": total, "best": None if math.isnan(best) else best,
            "best_step": summary.get("best_step", total), "history": history}  # fmt: skip
