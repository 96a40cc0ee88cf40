"""Training-curve plots of a run, drawn from its ``metrics.jsonl`` with matplotlib (Agg, no display needed)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zoo.io import atomic_path

CURVES_NAME = "training_curves.png"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a truncated last line, from a killed run, is skipped)."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


@contextmanager
def png_figure(path: str | os.PathLike, nrows: int = 1, ncols: int = 1, **kwargs) -> Iterator[tuple]:
    """``(fig, axes)`` of a matplotlib figure (Agg: no display needed) that is laid out and written to ``path`` as a
    PNG, atomically, when the block ends without error; the figure is closed either way."""
    import matplotlib

    matplotlib.use("Agg")  # must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


BASELINE = "raw_student"
BASELINE_LABEL = "raw student (baseline, no teacher)"


def phase_label(phase: str) -> str:
    """A phase's legend name: the stage, without the guard's attempt suffix ("prune-a0" -> "prune"; a later
    attempt is "prune, attempt 2")."""
    if phase == BASELINE:
        return BASELINE_LABEL
    m = re.fullmatch(r"(.+)-a(\d+)", phase)
    if not m:
        return phase
    return m.group(1) if m.group(2) == "0" else f"{m.group(1)}, attempt {int(m.group(2)) + 1}"


def plot_training_curves(records: list[dict], path: str | os.PathLike) -> Path | None:
    """Loss, validation accuracy, temperature and KD multiplier against the step, one colour per stage.

    The pipeline's stages are drawn against the run's step counted from its first stage; the raw-student baseline
    (trained before them, for as many steps as the distillation stages together) is drawn apart, grey and dashed,
    against its own step, so it overlays the distillation it is compared with. Returns the PNG path, or None when
    there is nothing to draw.
    """
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    if not train:
        return None
    phases = list(dict.fromkeys(r["phase"] for r in train))
    offset = max((r["global_step"] for r in records if r.get("phase") == BASELINE and "global_step" in r), default=0)

    def x(r: dict) -> int:
        return r["step"] if r["phase"] == BASELINE else r["global_step"] - offset

    path = Path(path)
    with png_figure(path, 1, 3, figsize=(15, 4), dpi=100) as (_, axes):
        colour = iter(f"C{i}" for i in range(100))
        for phase in [p for p in phases if p != BASELINE] + [p for p in phases if p == BASELINE]:
            rs = [r for r in train if r["phase"] == phase]
            name = phase_label(phase)
            style = {"color": "grey", "ls": "--"} if phase == BASELINE else {"color": next(colour)}
            axes[0].plot([x(r) for r in rs], [r["loss"] for r in rs], label=name, **style)
            es = [r for r in evals if r["phase"] == phase and r.get("val_accuracy") is not None]
            if es:
                axes[1].plot([x(r) for r in es], [100 * r["val_accuracy"] for r in es], marker="o", label=name, **style)
            if phase == BASELINE:
                continue  # no teacher: no temperature, no KD multiplier
            if any(r.get("temperature") for r in rs):
                axes[2].plot([x(r) for r in rs], [r.get("temperature") for r in rs], label=f"T, {name}", **style)
            if any(r.get("multiplier") is not None for r in rs):
                axes[2].step(
                    [x(r) for r in rs],
                    [r.get("multiplier") for r in rs],
                    where="post",
                    label=f"KD x, {name}",
                    ls=":",
                    color=style["color"],
                )
        axes[0].set(title="training loss (each stage's own loss)", xlabel="step", yscale="log")
        axes[1].set(title="validation accuracy (%)", xlabel="step")
        axes[2].set(title="temperature and KD multiplier", xlabel="step")
        for ax in axes:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return path
