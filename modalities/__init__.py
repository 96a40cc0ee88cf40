"""Modality encoders: each turns raw inputs into tensors (preprocessing) and tensors into tokens (stem); each
registers one description (``zoo.modalities.base.Modality``) in ``MODALITIES``.

A raw sample is a dict ``{"id", "text"?, "image"?, "audio"?, "label"?}``; any modality may be absent or None.
``collate`` turns a list of them into the flat batch every student takes::

    input_ids, attention_mask (B, L), text_mask (B,)         # text
    pixel_values (B, C, S, S), image_mask (B,)              # image
    input_features (B, n_mels, frames), audio_mask (B,)     # audio (log-mel)
    labels (B,)                                             # -100 where a sample has no label

A modality tensor is only in the batch when the student has that modality; its ``*_mask`` says which
samples carry it (rows of absent samples are zeros and are masked out inside the student).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zoo.modalities.audio import AudioConfig, AudioPreprocessor, AudioStem
from zoo.modalities.base import MODALITIES, Modality, input_keys, register_modality
from zoo.modalities.image import ImageConfig, ImagePreprocessor, ImageStem
from zoo.modalities.text import TextConfig, TextPreprocessor, TextStem, load_tokenizer, train_wordpiece_tokenizer

MASK_KEYS = {m: d.mask_key for m, d in MODALITIES.items()}
IGNORE_INDEX = -100

__all__ = [
    "MODALITIES",
    "Modality",
    "input_keys",
    "register_modality",
    "MASK_KEYS",
    "IGNORE_INDEX",
    "AudioConfig",
    "AudioPreprocessor",
    "AudioStem",
    "ImageConfig",
    "ImagePreprocessor",
    "ImageStem",
    "TextConfig",
    "TextPreprocessor",
    "TextStem",
    "load_tokenizer",
    "train_wordpiece_tokenizer",
    "check_modalities",
    "collate",
]


def check_modalities(modalities: Sequence[str]) -> list[str]:
    """Validate a modality list and return it in canonical order."""
    if isinstance(modalities, str):
        modalities = [modalities]
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities {list(modalities)!r}: each must be one of {list(MODALITIES)}, at least one.")
    return [m for m in MODALITIES if m in modalities]


def collate(samples: Sequence[dict], preprocessors: dict) -> dict[str, torch.Tensor]:
    """Raw samples -> one flat batch, given ``{modality: preprocessor}``.

    Keys of a sample other than id, label and the modalities are ignored. A sample that carries none of the
    modalities the preprocessors cover is an error naming it, since it would train on nothing.
    """
    if not samples:
        raise ValueError("collate: empty list of samples.")
    batch: dict[str, torch.Tensor] = {}
    carried = [False] * len(samples)
    for modality, pre in preprocessors.items():
        values = [s.get(modality) for s in samples]
        batch.update(pre(values))
        for i, v in enumerate(values):
            carried[i] = carried[i] or v is not None
    for i, ok in enumerate(carried):
        if not ok:
            sid = samples[i].get("id", i)
            raise ValueError(
                f"sample {sid!r} carries none of the modalities {list(preprocessors)}; drop it or add one of them."
            )
    labels = [s.get("label") for s in samples]
    batch["labels"] = torch.tensor([IGNORE_INDEX if y is None else int(y) for y in labels], dtype=torch.long)
    return batch
