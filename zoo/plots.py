"""Training-curve plots of a run, drawn from its ``metrics.jsonl`` with matplotlib (Agg, no display needed)."""

from __future__ import annotations

import json
import os
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


def plot_training_curves(records: list[dict], path: str | os.PathLike) -> Path | None:
    """Loss, validation accuracy, temperature and KD multiplier against the global step, one colour per phase.

    Returns the PNG path, or None when there is nothing to draw.
    """
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    if not train:
        return None
    phases = list(dict.fromkeys(r["phase"] for r in train))
    path = Path(path)
    with png_figure(path, 1, 3, figsize=(15, 4), dpi=100) as (_, axes):
        for phase in phases:
            rs = [r for r in train if r["phase"] == phase]
            axes[0].plot([r["global_step"] for r in rs], [r["loss"] for r in rs], label=phase)
            es = [r for r in evals if r["phase"] == phase and r.get("val_accuracy") is not None]
            if es:
                axes[1].plot([r["global_step"] for r in es], [100 * r["val_accuracy"] for r in es], "o-", label=phase)
            if any(r.get("temperature") for r in rs):
                axes[2].plot([r["global_step"] for r in rs], [r.get("temperature") for r in rs], label=f"T {phase}")
            if any(r.get("multiplier") is not None for r in rs):
                axes[2].step(
                    [r["global_step"] for r in rs],
                    [r.get("multiplier") for r in rs],
                    where="post",
                    label=f"KD x {phase}",
                )
        axes[0].set(title="training loss", xlabel="step", yscale="log")
        axes[1].set(title="validation accuracy (%)", xlabel="step")
        axes[2].set(title="temperature and KD multiplier", xlabel="step")
        for ax in axes:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return path
