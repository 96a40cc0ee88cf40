"""One description per modality and the one registry of them (``MODALITIES``).

Each modality module (``text.py``, ``image.py``, ``audio.py``) ends by registering a ``Modality``: its config
dataclass, preprocessor, stem, the batch keys it adds, an example input for export and latency, the pipeline
tag of a student that takes only it, and how its stem turns inputs into tokens with their valid-token mask. Code
that handles every modality (students, export, losses, prune, cards, data) iterates ``MODALITIES`` instead of
spelling out "text", "image", "audio". A new modality is one module that registers itself, imported in
``zoo.modalities``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Modality:
    """Everything the zoo knows about one modality.

    Args:
        name: the raw sample's key and the config field of a student (``config.text``...).
        config: the stem settings dataclass (``TextConfig``).
        preprocessor: ``preprocessor(config)`` (text: ``(tokenizer, config)``) maps raw values to batch tensors.
        stem: ``stem(config, embed_dim, act_layer=...)`` maps the batch tensors to tokens (B, N, D).
        input_keys: the batch keys it adds, main input first and the per-sample presence mask last.
        pipeline_tag: the hub pipeline tag of a classifier that takes this modality alone.
        example: ``example(config, batch_size, rng)``: a synthetic batch (every sample carries the modality).
        needs_tokenizer: whether the preprocessor takes the student's tokenizer.
        stem_takes_act: whether the stem takes the student's activation (``act_layer``).
        order: its place in the canonical order (configs, batches and ONNX inputs list modalities in this order).
    """

    name: str
    config: type
    preprocessor: type
    stem: type
    input_keys: tuple[str, ...]
    pipeline_tag: str
    example: Callable[[object, int, np.random.Generator], dict[str, torch.Tensor]]
    needs_tokenizer: bool = False
    stem_takes_act: bool = True
    order: int = 100

    @property
    def mask_key(self) -> str:
        """The batch key saying which samples carry the modality (B,)."""
        return self.input_keys[-1]

    def tokens(self, stem: nn.Module, inputs: dict[str, torch.Tensor]):
        """Run the stem on this modality's inputs: tokens (B, N, D), grid (h, w), valid tokens (B, N), padded.

        A stem returns (tokens, grid) or (tokens, grid, valid); without a valid mask every token of a sample is
        valid (``padded`` False: a fixed token grid, as images have). The sample presence mask (``mask_key``) is
        applied on top.
        """
        out = stem(*[inputs.get(k) for k in self.input_keys[:-1]])
        x, grid = out[0], out[1]
        padded = len(out) > 2
        valid = out[2] if padded else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        present = inputs.get(self.mask_key)
        if present is not None:
            valid = valid & present.to(torch.bool)[:, None]
        return x, grid, valid, padded


MODALITIES: dict[str, Modality] = {}  # in canonical order (``Modality.order``)


def register_modality(modality: Modality) -> Modality:
    """Add a modality to ``MODALITIES`` (a name registered twice is an error)."""
    if modality.name in MODALITIES:
        raise ValueError(f"modality {modality.name!r} is registered twice.")
    MODALITIES[modality.name] = modality
    ranked = sorted(MODALITIES.values(), key=lambda d: d.order)
    MODALITIES.clear()
    MODALITIES.update({d.name: d for d in ranked})
    return modality


def input_keys(modalities) -> list[str]:
    """The flat batch keys of ``modalities``, in their order (the ONNX graph's inputs)."""
    return [k for m in modalities for k in MODALITIES[m].input_keys]
