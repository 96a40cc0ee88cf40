"""Training-curve plots of a run, drawn from its ``metrics.jsonl`` with matplotlib (Agg, no display needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def plot_training_curves(records: list[dict], path: str | os.PathLike) -> Path | None:
    """Loss, validation accuracy, temperature and KD multiplier against the global step, one colour per phase.

    Returns the PNG path, or None when there is nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.io import atomic_path

    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    if not train:
        return None
    phases = list(dict.fromkeys(r["phase"] for r in train))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
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
                [r["global_step"] for r in rs], [r.get("multiplier") for r in rs], where="post", label=f"KD x {phase}"
            )
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].set(title="validation accuracy (%)", xlabel="step")
    axes[2].set(title="temperature and KD multiplier", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
