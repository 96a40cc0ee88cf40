"""What the ``scripts/pretrain_*.py`` share: fitting a student's ``embedding`` head to a teacher's embeddings.

Task-agnostic pre-distillation regresses the teacher's normalised embedding of every corpus row (cosine loss) from
pre-processed student inputs held in memory. The corpora are a few tens of thousands of small rows, so the inputs fit
in RAM and the loop is a plain AdamW loop over index batches, hand-written here rather than through ``zoo distill``:
that trainer's data path, teachers and stages are built for labelled tasks, and a run here has no labels, no
validation accuracy and no compression stage.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def add_training_args(ap: argparse.ArgumentParser) -> None:
    """The options every pretraining script takes: student, schedule, batch, row limit, seed."""
    ap.add_argument("--student", default="hybrid_tiny")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-rows", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)


def stderr_log():
    """A ``log(msg)`` that prints to stderr with the seconds since it was made."""
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    return log


def split_held_out(n: int, generator: torch.Generator, share: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, train) row indices: 1/``share`` of ``n`` rows, drawn with ``generator``."""
    perm = torch.randperm(n, generator=generator)
    n_held = max(n // share, 1)
    return perm[:n_held], perm[n_held:]


def fit_embeddings(
    student: torch.nn.Module,
    x: dict[str, torch.Tensor],
    target: torch.Tensor,
    held: torch.Tensor,
    train: torch.Tensor,
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    log,
    views: int = 1,
) -> tuple[int, float]:
    """Train ``student`` so its output matches ``target`` (cosine); returns (steps, held-out mean cosine).

    ``x`` and ``target`` hold ``views`` stacked copies of the ``n`` rows (row ``v * n + i`` is view ``v`` of row
    ``i``, e.g. an image and its mirror, each with the teacher's embedding of that very view: function matching).
    A training sample is a row with one of its views drawn at random; the held-out agreement averages every view.
    AdamW (weight decay 0.05 on matrices, none on norms, biases and position embeddings), linear warmup over 5% of
    the steps then cosine decay, gradient clipping at 1.
    """
    n = len(target) // views
    steps = int(epochs * len(train) / batch_size)
    decay = [p for name, p in student.named_parameters() if p.dim() >= 2 and "pos_embed" not in name]
    rest = [p for name, p in student.named_parameters() if not (p.dim() >= 2 and "pos_embed" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    warm = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(steps - warm, 1)))
    )
    held_rows = torch.cat([held + v * n for v in range(views)])

    def agreement() -> float:
        student.eval()
        with torch.no_grad():
            cos = []
            for i in range(0, len(held_rows), 256):
                idx = held_rows[i : i + 256]
                out = student(**{k: v[idx] for k, v in x.items()})
                cos.append(F.cosine_similarity(out, target[idx], dim=-1))
        student.train()
        return float(torch.cat(cos).mean())

    log(f"held-out agreement before training: {agreement():.4f}; {steps} steps")
    student.train()
    order, pos = torch.randperm(len(train), generator=generator), 0
    t0 = time.perf_counter()
    for s in range(steps):
        if pos + batch_size > len(train):
            order, pos = torch.randperm(len(train), generator=generator), 0
        idx = train[order[pos : pos + batch_size]]
        pos += batch_size
        if views > 1:
            idx = idx + n * torch.randint(views, (len(idx),), generator=generator)
        out = student(**{k: v[idx] for k, v in x.items()})
        loss = (1 - F.cosine_similarity(out, target[idx], dim=-1)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (s + 1) % 200 == 0 or s + 1 == steps:
            rate = (s + 1) / (time.perf_counter() - t0)
            log(
                f"step {s + 1}/{steps} loss {loss.item():.4f} agreement {agreement():.4f} "
                f"eta {(steps - s - 1) / rate:.0f}s"
            )
    return steps, agreement()


def save_student(student: torch.nn.Module, out: str | Path, record: dict, *, steps: int, agreement: float,
                 started: float, script: str, argv, log) -> None:  # fmt: skip
    """``save_pretrained`` to ``out`` plus ``pretraining.json``: the script's ``record`` and what every script
    records (steps, held-out agreement, parameters, seconds since ``started``, the command)."""
    out = Path(out)
    student.eval()
    student.save_pretrained(out)
    record = {
        **record,
        "steps": steps,
        "held_out_cosine": round(agreement, 4),
        "params": sum(p.numel() for p in student.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
        "command": f"python scripts/{script} " + " ".join(argv or sys.argv[1:]),
    }
    (out / "pretraining.json").write_text(json.dumps(record, indent=2))
    log(f"saved {out}: held-out cosine with the teacher {agreement:.4f}")
