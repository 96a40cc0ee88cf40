"""Registered sizes of the hybrid student. Parameter counts are for text+image+audio and 10 classes.

| name        | embed | conv blocks | attention blocks (heads x 32) | params |
|-------------|-------|-------------|-------------------------------|--------|
| hybrid_test | 32    | 1 x 64      | 1 x (2 heads, mlp 64)         | ~0.2M  |
| hybrid_tiny | 128   | 2 x 384     | 4 x (4 heads, mlp 512)        | ~1.8M  |
| hybrid_small| 256   | 2 x 768     | 6 x (8 heads, mlp 1024)       | ~7M    |
| hybrid_base | 384   | 3 x 1536    | 8 x (12 heads, mlp 1536)      | ~20M   |

All use ReLU (``act="relu"``): free in int8, where ONNX Runtime drops it into the next layer's input quantization.
On ``hybrid_small``, with the bias fold of ``zoo.compress.export.onnx_session``, that took ONNX Runtime's int8 speed-up
over fp32 from 1.88-1.95x to 2.19-2.22x (``benchmarks/compression.py``); MobileBERT (Sun et al., 2020) made the same
trade for the same reason. Pass ``act="gelu"`` for the other choice.
"""

from __future__ import annotations

import dataclasses
import os

from zoo.modalities.text import load_tokenizer
from zoo.registry import register_model
from zoo.students.hybrid import HybridConfig, HybridStudent, build_student

_NESTED = ("text", "image", "audio")


def _create_hybrid(arch: str, modalities, num_classes: int, base: dict, tokenizer=None, **overrides) -> HybridStudent:
    """Merge the variant's widths with user overrides (nested dicts for text / image / audio) and build."""
    cfg = dict(base)
    if tokenizer is not None and "text" in modalities:
        # size the embedding to the tokenizer unless the caller set it: a teacher's tokenizer (30k+ tokens for
        # BERT) must fit, and a small trained one should not pay for unused rows
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        user_text = overrides.get("text") or {}
        auto = {"pad_token_id": int(tokenizer.pad_token_id or 0)}
        if "vocab_size" not in user_text:
            auto["vocab_size"] = -(-len(tokenizer) // 64) * 64
        cfg["text"] = {**cfg["text"], **auto}
    for key, value in overrides.items():
        if key in _NESTED and isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    known = {f.name for f in dataclasses.fields(HybridConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise TypeError(f"create_student({arch!r}): unknown arguments {unknown}; config fields are {sorted(known)}.")
    tasks = cfg.pop("tasks", None) or {"label": int(num_classes)}
    config = HybridConfig(modalities=list(modalities), tasks=tasks, architecture=arch, **cfg)
    return build_student(config, tokenizer=tokenizer)


def _blocks(n: int, value: int) -> list[int]:
    return [value] * n


@register_model(family=HybridStudent)
def hybrid_test(modalities=("image",), num_classes: int = 10, **kwargs) -> HybridStudent:
    """A minute variant for unit tests."""
    base = dict(
        act="relu",
        embed_dim=32,
        conv_hidden=_blocks(1, 64),
        attn_heads=_blocks(1, 2),
        head_dim=16,
        mlp_hidden=_blocks(1, 64),
        text={"vocab_size": 512, "max_length": 16},
        image={"image_size": 16, "patch_size": 4, "stem_channels": 16},
        audio={
            "n_mels": 16,
            "clip_seconds": 0.5,
            "hop_length": 250,
            "n_fft": 400,
            "patch_size": 4,
            "stem_channels": 16,
        },
    )
    return _create_hybrid("hybrid_test", modalities, num_classes, base, **kwargs)


@register_model(family=HybridStudent)
def hybrid_tiny(modalities=("text", "image", "audio"), num_classes: int = 10, **kwargs) -> HybridStudent:
    base = dict(
        act="relu",
        embed_dim=128,
        conv_hidden=_blocks(2, 384),
        attn_heads=_blocks(4, 4),
        head_dim=32,
        mlp_hidden=_blocks(4, 512),
        text={"vocab_size": 4096, "max_length": 32},
        image={"image_size": 32, "patch_size": 4, "stem_channels": 32},
        audio={
            "n_mels": 32,
            "clip_seconds": 1.0,
            "hop_length": 250,
            "n_fft": 512,
            "patch_size": 8,
            "stem_channels": 32,
        },
    )
    return _create_hybrid("hybrid_tiny", modalities, num_classes, base, **kwargs)


@register_model(family=HybridStudent)
def hybrid_small(modalities=("text", "image", "audio"), num_classes: int = 10, **kwargs) -> HybridStudent:
    base = dict(
        act="relu",
        embed_dim=256,
        conv_hidden=_blocks(2, 768),
        attn_heads=_blocks(6, 8),
        head_dim=32,
        mlp_hidden=_blocks(6, 1024),
        text={"vocab_size": 8192, "max_length": 64},
        image={"image_size": 64, "patch_size": 8, "stem_channels": 48},
        audio={
            "n_mels": 64,
            "clip_seconds": 1.0,
            "hop_length": 250,
            "n_fft": 512,
            "patch_size": 8,
            "stem_channels": 48,
        },
    )
    return _create_hybrid("hybrid_small", modalities, num_classes, base, **kwargs)


@register_model(family=HybridStudent)
def hybrid_base(modalities=("text", "image", "audio"), num_classes: int = 10, **kwargs) -> HybridStudent:
    base = dict(
        act="relu",
        embed_dim=384,
        conv_hidden=_blocks(3, 1536),
        attn_heads=_blocks(8, 12),
        head_dim=32,
        mlp_hidden=_blocks(8, 1536),
        text={"vocab_size": 16384, "max_length": 128},
        image={"image_size": 128, "patch_size": 8, "stem_channels": 64},
        audio={
            "n_mels": 64,
            "clip_seconds": 2.0,
            "hop_length": 250,
            "n_fft": 512,
            "patch_size": 8,
            "stem_channels": 64,
        },
    )
    return _create_hybrid("hybrid_base", modalities, num_classes, base, **kwargs)
