"""Teachers trained here, from scratch, when a run is given none (the offline quickstart).

One transformers classifier per modality with its own processor (BERT + WordPiece for text, a ResNet for images,
Whisper's encoder for audio), trained with CE on the train split through the one training loop (``zoo.teachers.fit``)
and saved like a user's teacher, so the run loads it back through ``zoo.teachers.load_teacher``.
``teacher_training.folds > 1`` cross-fits them (``zoo.teachers.crossfit``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTImageProcessor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForAudioClassification,
)

from zoo.io import atomic_write_json
from zoo.modalities.text import train_wordpiece_tokenizer
from zoo.recipe import TeacherTraining
from zoo.teachers.crossfit import assign_folds, save_assignment
from zoo.teachers.fit import FinetuneSettings, fit_classifier
from zoo.teachers.load import load_teacher


def build_teacher(modality: str, cfg: TeacherTraining, data, folder: Path) -> None:
    """A transformers classifier of ``modality`` with its own processor, freshly initialised, saved to ``folder``.

    text: BERT with a WordPiece tokenizer trained on the train texts; image: a ResNet; audio: Whisper's encoder
    (1-D convs over log-mel frames, then attention), cut to 1 s clips. All larger than the quickstart student and
    trained from scratch (nothing to download).
    """
    labels = {
        "num_labels": data.num_labels,
        "id2label": {int(k): str(v) for k, v in data.id2label.items()},
        "label2id": {str(v): int(k) for k, v in data.id2label.items()},
    }
    width = {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
    }
    if modality == "text":
        split = data.splits["train"]
        texts = [t for t in split.dataset["text"] if t]
        processor = train_wordpiece_tokenizer(texts, vocab_size=cfg.text_vocab_size)
        processor.model_max_length = cfg.text_max_length
        config = BertConfig(
            vocab_size=len(processor), max_position_embeddings=cfg.text_max_length, pad_token_id=0, **width, **labels
        )
        model = BertForSequenceClassification(config)
    elif modality == "image":
        # a CNN: on a few hundred small images its inductive bias beats a ViT trained from scratch by far
        processor = ViTImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size})
        h = cfg.hidden_size
        config = ResNetConfig(
            num_channels=3,
            embedding_size=h // 4,
            hidden_sizes=[h // 4, h // 2, h, h * 2],  # h = 256: ResNet-18's widths
            depths=[2, 2, 2, 2],
            layer_type="basic",
            downsample_in_first_stage=False,
            **labels,
        )
        model = ResNetForImageClassification(config)
    elif modality == "audio":
        # Whisper's encoder: two 1-D convs over the log-mel frames (a TDNN front end), then attention; cut to 1 s
        processor = WhisperFeatureExtractor(feature_size=cfg.audio_mel_bins, chunk_length=1)
        config = WhisperConfig(
            num_mel_bins=cfg.audio_mel_bins,
            max_source_positions=50,  # 100 frames of 10 ms, halved by the second conv
            d_model=cfg.hidden_size,
            encoder_layers=cfg.num_layers,
            encoder_attention_heads=cfg.num_heads,
            encoder_ffn_dim=cfg.intermediate_size,
            decoder_layers=1,
            decoder_attention_heads=cfg.num_heads,
            decoder_ffn_dim=cfg.intermediate_size,
            vocab_size=16,  # the decoder is unused by the classifier; keep it minute
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            **labels,
        )
        model = WhisperForAudioClassification(config)
    else:
        raise ValueError(f"no built-in teacher for modality {modality!r}; pass --teacher {modality}=PATH.")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def train_teachers(data, folder: Path, cfg: TeacherTraining, seed: int, log=print) -> dict[str, Path]:
    """Train one classifier teacher per modality of ``data`` with CE on its train split (the offline quickstart).

    Each is saved with save_pretrained into ``folder/<modality>`` and loaded back with ``zoo.teachers.load_teacher``
    like a user's teacher. A folder already trained with the same settings on the same data is reused.
    """
    out = {}
    for modality in data.modalities:
        if cfg.modalities is not None and modality not in cfg.modalities:
            continue
        dst = folder / modality
        marker = dst / "zoo_teacher_training.json"
        key = {"settings": asdict(cfg), "seed": seed, "data": data.fingerprint("train"), "version": 1}
        if marker.exists() and json.loads(marker.read_text()).get("key") == key:
            log(f"teacher {modality}: reusing {dst} (trained with the same settings on the same data)")
            out[modality] = dst
            continue
        t0 = time.perf_counter()
        shutil.rmtree(dst, ignore_errors=True)  # nothing stale (a fold of an earlier layout) may be loaded
        train = [s for s in data.splits["train"] if s.get(modality) is not None]
        val = [s for s in data.splits["validation"] if s.get(modality) is not None]
        if cfg.folds > 1:
            # cross-fitting: teacher k never sees fold k, so its targets on fold k are honest predictions, not
            # memorised labels (see zoo.teachers.crossfit)
            assignment = assign_folds([s["id"] for s in train], cfg.folds, seed)
            accs = []
            for k in range(cfg.folds):
                rows = [s for s in train if assignment[str(s["id"])] != k]
                accs.append(_fit_teacher(modality, cfg, data, dst / f"fold-{k}", rows, val, seed + k))
            save_assignment(dst, assignment, cfg.folds)
            val_acc = None if accs[0] is None else sum(accs) / len(accs)  # mean over the fold teachers
            what = f"{cfg.folds} cross-fitted teachers ({len(train) - len(train) // cfg.folds} samples each)"
        else:
            val_acc = _fit_teacher(modality, cfg, data, dst, train, val, seed)
            what = f"a teacher on {len(train)} samples"
        seconds = time.perf_counter() - t0
        atomic_write_json(marker, {"key": key, "val_accuracy": val_acc, "seconds": round(seconds, 1)})
        acc_txt = "n/a" if val_acc is None else f"{100 * val_acc:.1f}%"
        log(
            f"teacher {modality}: trained {what} for {cfg.steps} steps each in {seconds:.0f}s; validation accuracy "
            f"on its modality {acc_txt}"
        )
        out[modality] = dst
    return out


def _fit_teacher(modality: str, cfg: TeacherTraining, data, dst: Path, train: list, val: list, seed: int):
    """Build a fresh teacher in ``dst``, train it with CE on ``train`` through the one loop (``zoo.teachers.fit``:
    ``cfg.steps`` steps, the last weights kept), save it; returns its validation accuracy."""
    torch.manual_seed(seed)
    build_teacher(modality, cfg, data, dst)
    teacher = load_teacher(dst, modality=modality)
    s = FinetuneSettings(
        lr=cfg.lr, batch_size=cfg.batch_size, max_length=None, group_by_length=False, seed=seed,
        checkpoint_every=max(cfg.steps, 1),  # never: a teacher trained here is retrained, not resumed
    )  # fmt: skip
    quiet = lambda message: None  # noqa: E731  (train_teachers logs one line per teacher)
    state = fit_classifier(
        teacher, train, val, dst, s, seed, False, quiet, False, steps=cfg.steps, keep_best=False,
        lr_key="teacher_training.lr",
    )  # fmt: skip
    teacher.model.save_pretrained(dst, safe_serialization=True)
    return state["best"] if val else None
