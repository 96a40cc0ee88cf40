"""A run's student tokenizer and token embeddings: trained on the train texts, or the text teacher's (trimmed to
the tokens the data uses), and optionally token embeddings inherited from the text teacher."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zoo.io import atomic_write_json
from zoo.modalities.text import (
    load_tokenizer,
    pca_project,
    teacher_token_embeddings,
    train_wordpiece_tokenizer,
    trim_tokenizer,
)
from zoo.teachers.crossfit import tokenizer_folder


def tokenizer_kind(kind: str, teacher_paths: dict) -> str:
    """``tokenizer: auto`` is the text teacher's when it is a local folder with a tokenizer, else ``train``."""
    if kind != "auto":
        return kind
    path = teacher_paths.get("text")
    if path and Path(path).is_dir():
        folder = tokenizer_folder(path)
        if any((folder / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
            return "teacher"
    return "train"


def student_tokenizer(run, vocab_size: int):
    """The student's text tokenizer and, for a trimmed teacher tokenizer, the teacher id of each of its tokens.

    ``tokenizer: train``: a WordPiece trained on the train texts; ``teacher``: the text teacher's, trimmed to the
    tokens the train texts use (``trim_vocabulary``); else a tokenizer folder. Made once and saved in the run.
    """
    r = run.recipe
    split = run.data.splits["train"]
    folder = run.out / "checkpoints" / "tokenizer"
    kind = tokenizer_kind(r.tokenizer, run.teacher_paths)
    if kind == "teacher":
        if "text" not in run.teacher_paths or not Path(run.teacher_paths["text"]).is_dir():
            raise ValueError("tokenizer: teacher needs a text teacher given as a local folder.")
        source = tokenizer_folder(run.teacher_paths["text"])
    elif kind != "train":
        source = Path(r.tokenizer)
    else:
        if run.is_main and not (folder / "tokenizer.json").exists():
            texts = [t for t in split.dataset["text"] if t] if "text" in split.dataset.column_names else []
            tok = train_wordpiece_tokenizer(texts, vocab_size=vocab_size)
            tok.save_pretrained(str(folder))
        run.accelerator.wait_for_everyone()
        return load_tokenizer(folder), None
    full = load_tokenizer(source)
    if not r.trim_vocabulary or type(full.backend_tokenizer.model).__name__ != "WordPiece":
        return full, None
    kept_file = folder / "teacher_token_ids.json"
    if run.is_main and not kept_file.exists():
        texts = [t for t in split.dataset["text"] if t] if "text" in split.dataset.column_names else []
        tok, kept = trim_tokenizer(full, texts)
        tok.save_pretrained(str(folder))
        atomic_write_json(kept_file, kept)
        run.log(f"tokenizer: the teacher's {len(full)} tokens trimmed to the {len(tok)} the train texts use")
    run.accelerator.wait_for_everyone()
    return load_tokenizer(folder), json.loads(kept_file.read_text())


def inherit_token_embeddings(student, teacher, kept: list[int] | None, log) -> None:
    """Token embeddings from the text teacher: its output for each token alone, PCA to the student's width."""
    models = list(getattr(teacher, "folds", None) or [teacher])  # a cross-fitted teacher: its first fold
    model = getattr(models[0], "model", None)
    if model is None or not hasattr(model, "config") or kept is None:
        log("student_init: teacher needs a transformers text teacher and its tokenizer; starting from random")
        return
    tok = student.tokenizer  # trimmed: its ids index ``kept``, the teacher's ids
    rows = teacher_token_embeddings(model, kept, kept[tok.cls_token_id], kept[tok.sep_token_id])  # (V, H)
    stem = student.stems["text"]
    with torch.no_grad():
        stem.embed.weight[: len(kept)] = pca_project(rows, stem.embed.weight.shape[1])
    log(f"student_init: {len(kept)} token embeddings from the text teacher ({rows.shape[1]} -> "
        f"{stem.embed.weight.shape[1]} by PCA)")  # fmt: skip
