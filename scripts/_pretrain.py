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


class Stream:
    """One modality's rows for ``fit_embeddings``: inputs ``x``, teacher targets, held-out / train row indices,
    the number of stacked ``views`` and the student head (task name) that regresses ``target``."""

    def __init__(self, name: str, x: dict[str, torch.Tensor], target: torch.Tensor, held: torch.Tensor,
                 train: torch.Tensor, views: int = 1, head: str | None = None):  # fmt: skip
        self.name, self.x, self.target, self.held, self.train = name, x, target, held, train
        self.views, self.head = views, head
        self.n = len(target) // views
        self.held_rows = torch.cat([held + v * self.n for v in range(views)])

    def out(self, student: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
        inputs = {k: v[idx] for k, v in self.x.items()}
        if self.head is None:
            return student(**inputs)
        return student.forward_head(student.forward_features(**inputs), task=self.head)


def fit_embeddings(
    student: torch.nn.Module,
    x: dict[str, torch.Tensor] | None = None,
    target: torch.Tensor | None = None,
    held: torch.Tensor | None = None,
    train: torch.Tensor | None = None,
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    log,
    views: int = 1,
    streams: list[Stream] | None = None,
) -> tuple[int, float | dict[str, float]]:
    """Train ``student`` so its output matches ``target`` (cosine); returns (steps, held-out mean cosine).

    ``x`` and ``target`` hold ``views`` stacked copies of the ``n`` rows (row ``v * n + i`` is view ``v`` of row
    ``i``, e.g. an image and its mirror, each with the teacher's embedding of that very view: function matching).
    A training sample is a row with one of its views drawn at random; the held-out agreement averages every view.
    AdamW (weight decay 0.05 on matrices, none on norms, biases and position embeddings), linear warmup over 5% of
    the steps then cosine decay, gradient clipping at 1.

    ``streams`` instead of ``x`` ... ``views``: several modalities over one trunk, each with its own head. Each step
    is one batch of one stream, drawn in proportion to the streams' train rows (so an epoch sees every stream's rows
    about once); the agreement is returned per stream.
    """
    single = streams is None
    if single:
        streams = [Stream("", x, target, held, train, views)]
    steps = int(epochs * sum(len(s.train) for s in streams) / batch_size)
    decay = [p for name, p in student.named_parameters() if p.dim() >= 2 and "pos_embed" not in name]
    rest = [p for name, p in student.named_parameters() if not (p.dim() >= 2 and "pos_embed" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    warm = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(steps - warm, 1)))
    )

    def agreement() -> dict[str, float]:
        student.eval()
        scores = {}
        with torch.no_grad():
            for st in streams:
                cos = []
                for i in range(0, len(st.held_rows), 256):
                    idx = st.held_rows[i : i + 256]
                    cos.append(F.cosine_similarity(st.out(student, idx), st.target[idx], dim=-1))
                scores[st.name] = float(torch.cat(cos).mean())
        student.train()
        return scores

    def show(scores: dict[str, float]) -> str:
        return " ".join(f"{k + ' ' if k else ''}{v:.4f}" for k, v in scores.items())

    log(f"held-out agreement before training: {show(agreement())}; {steps} steps")
    student.train()
    orders = [torch.randperm(len(st.train), generator=generator) for st in streams]
    pos = [0] * len(streams)
    share = torch.tensor([float(len(st.train)) for st in streams])
    t0 = time.perf_counter()
    for s in range(steps):
        j = 0 if single else int(torch.multinomial(share, 1, generator=generator))
        st = streams[j]
        if pos[j] + batch_size > len(st.train):
            orders[j], pos[j] = torch.randperm(len(st.train), generator=generator), 0
        idx = st.train[orders[j][pos[j] : pos[j] + batch_size]]
        pos[j] += batch_size
        if st.views > 1:
            idx = idx + st.n * torch.randint(st.views, (len(idx),), generator=generator)
        loss = (1 - F.cosine_similarity(st.out(student, idx), st.target[idx], dim=-1)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (s + 1) % 200 == 0 or s + 1 == steps:
            rate = (s + 1) / (time.perf_counter() - t0)
            log(f"step {s + 1}/{steps} loss {loss.item():.4f} agreement {show(agreement())} "
                f"eta {(steps - s - 1) / rate:.0f}s")  # fmt: skip
    final = agreement()
    return steps, final[""] if single else final


def save_student(student: torch.nn.Module, out: str | Path, record: dict, *, steps: int, agreement,
                 started: float, script: str, argv, log) -> None:  # fmt: skip
    """``save_pretrained`` to ``out`` plus ``pretraining.json``: the script's ``record`` and what every script
    records (steps, held-out agreement (one per stream for several), parameters, seconds since ``started``, the
    command)."""
    out = Path(out)
    student.eval()
    student.save_pretrained(out)
    record = {
        **record,
        "steps": steps,
        "held_out_cosine": {k: round(v, 4) for k, v in agreement.items()}
        if isinstance(agreement, dict)
        else round(agreement, 4),
        "params": sum(p.numel() for p in student.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
        "command": f"python scripts/{script} " + " ".join(argv or sys.argv[1:]),
    }
    (out / "pretraining.json").write_text(json.dumps(record, indent=2))
    log(f"saved {out}: held-out cosine with the teacher {record['held_out_cosine']}")
