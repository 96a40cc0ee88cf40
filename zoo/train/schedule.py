"""The learning-rate schedule: linear warmup, then cosine to a floor (one schedule for every training phase)."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(step: int, warmup: int, total: int, min_lr_ratio: float) -> float:
    """The multiplier of the peak learning rate at ``step`` of ``total``: (step + 1) / (warmup + 1) during the
    ``warmup`` steps, then a cosine from 1 down to ``min_lr_ratio``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    p = (step - warmup) / max(total - warmup, 1)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def phase_lr(warmup: float, min_lr_ratio: float, offset: int, total: int) -> Callable[[int], float]:
    """The multiplier for a phase that is steps ``offset..`` of one schedule spanning ``total`` steps, ``warmup``
    of them (a fraction) warming up: the distillation stages share one schedule, like the raw-student baseline
    they are compared with."""
    n_warmup = max(int(warmup * total), 0)
    return lambda step: warmup_cosine(step + offset, n_warmup, total, min_lr_ratio)
