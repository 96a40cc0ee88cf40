"""Pre-distil the zoo's multimodal student ``hybrid-tiny-multimodal``: text and image stems over one trunk, offline.

What it learns: both pretrained students' jobs at once, task-agnostically (no labels). A text goes through the text
stem and the shared trunk to the ``embedding_text`` head, which regresses all-MiniLM-L6-v2's sentence embedding; an
image goes through the image stem and the same trunk to the ``embedding_image`` head, which regresses the ImageNet
EfficientNet-Lite0's pooled features (cosine losses, as ``pretrain_text.py`` and ``pretrain_image.py``).

- Start (weight inheritance, as TinyCLIP and DistilBERT do): the text stem, the trunk and the text head from
  ``--text-student`` (``hybrid-tiny-text``), the image stem and the image head from ``--image-student``
  (``hybrid-tiny-image``). The two students share the trunk's architecture, not its weights; this run teaches the
  text student's trunk to serve the image stem too, without forgetting the text.
- Rows: the two scripts' corpora and cached teacher targets (Debian package descriptions without the
  debian-sections validation / test rows and their near copies; Fashion-MNIST training images without the
  fashion-mnist task's validation images, each also mirrored). Run ``pretrain_text.py`` and ``pretrain_image.py``
  first (or let this script compute the targets: slow).
- Training: ``scripts/_pretrain.fit_embeddings`` with one stream per modality; each step is one batch of one
  modality, drawn in proportion to the rows, so ``--epochs`` passes over both. 2% of each held out.

Written with ``save_pretrained`` (config.json + model.safetensors + tokenizer) and ``pretraining.json``.
``zoo finetune hybrid-tiny-multimodal --data ...`` replaces both heads with one sized to the task's labels, and
takes text, image or image+text rows.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/pretrain_multimodal.py \\
        --out model_cards/hybrid-tiny-multimodal
    .venv/bin/zoo catalogue add model_cards/hybrid-tiny-multimodal --name distill-zoo/hybrid-tiny-multimodal --ship
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._pretrain import Stream, add_training_args, fit_embeddings, save_student, split_held_out, stderr_log  # noqa: E402
from scripts.pretrain_image import fashion_images, image_inputs, teacher_features  # noqa: E402
from scripts.pretrain_text import load_corpus, teacher_embeddings, text_inputs  # noqa: E402

HEADS = {"text": "embedding_text", "image": "embedding_image"}


def inherit(student, text_student, image_student) -> dict[str, int]:
    """Copy the text student's stem, trunk and head and the image student's stem and head into ``student``.

    Returns how many tensors came from each. Every tensor of ``student`` is covered, with the same shape.
    """
    own = student.state_dict()
    sources = {"text": text_student.state_dict(), "image": image_student.state_dict()}
    counts = {"text": 0, "image": 0}
    new = {}
    for key in own:
        if key.startswith(("stems.image.", "modality_embed.image")):
            src, name = "image", key
        elif key.startswith(f"heads.{HEADS['image']}."):
            src, name = "image", key.replace(f"heads.{HEADS['image']}.", "heads.embedding.")
        elif key.startswith(f"heads.{HEADS['text']}."):
            src, name = "text", key.replace(f"heads.{HEADS['text']}.", "heads.embedding.")
        else:
            src, name = "text", key
        value = sources[src][name]
        if value.shape != own[key].shape:
            raise ValueError(f"{key}: {tuple(own[key].shape)} in the multimodal student, {tuple(value.shape)} in "
                             f"the {src} student's {name}")  # fmt: skip
        new[key] = value
        counts[src] += 1
    student.load_state_dict(new, strict=True)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--text-student", default=str(ROOT / "model_cards" / "hybrid-tiny-text"))
    ap.add_argument("--image-student", default=str(ROOT / "model_cards" / "hybrid-tiny-image"))
    ap.add_argument("--text-cache", default=str(Path.home() / ".cache" / "distill-zoo" / "pretrain_text"))
    ap.add_argument("--image-cache", default=str(Path.home() / ".cache" / "distill-zoo" / "pretrain_image"))
    add_training_args(ap)
    ap.set_defaults(epochs=1.0, lr=1e-3)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)

    import zoo

    t_start = time.perf_counter()
    log = stderr_log()
    text_student, image_student = zoo.load(a.text_student), zoo.load(a.image_student)
    text_record = json.loads((Path(a.text_student) / "pretraining.json").read_text())
    image_record = json.loads((Path(a.image_student) / "pretraining.json").read_text())

    corpus, texts = load_corpus(None, Path(a.text_cache), a.max_rows)
    log(f"corpus {corpus}: {len(texts)} texts")
    text_runtime = text_record["settings"].get("teacher_runtime", "torch")
    text_length = text_student.config.text.max_length
    text_target = teacher_embeddings(texts, Path(a.text_cache), text_length, text_runtime, log)
    images = fashion_images(a.max_rows, log)
    image_size = image_record["settings"]["teacher_size"]
    image_target = teacher_features(images, Path(a.image_cache), image_size, log)

    image_cfg = {k: v for k, v in vars(image_student.config.image).items() if k not in ("mean", "std")}
    student = zoo.create_student(
        a.student, modalities=["text", "image"], num_classes=text_target.shape[1], tokenizer=text_student.tokenizer,
        text={"max_length": text_length}, image=image_cfg,
        tasks={HEADS["text"]: text_target.shape[1], HEADS["image"]: image_target.shape[1]},
    )  # fmt: skip
    counts = inherit(student, text_student, image_student)
    log(f"student {a.student}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f}M params; tensors from the "
        f"text student {counts['text']}, from the image student {counts['image']}")  # fmt: skip

    g = torch.Generator().manual_seed(a.seed)
    held_t, train_t = split_held_out(len(texts), g)
    held_i, train_i = split_held_out(len(images), g)
    streams = [
        Stream("text", text_inputs(student, texts), text_target, held_t, train_t, head=HEADS["text"]),
        Stream("image", image_inputs(student, images), image_target, held_i, train_i, views=2, head=HEADS["image"]),
    ]
    steps, final = fit_embeddings(student, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, generator=g, log=log,
                                  streams=streams)  # fmt: skip
    record = {
        "teacher": {"text": text_record["teacher"], "image": image_record["teacher"]},
        "teacher_id": [text_record["teacher_id"], image_record["teacher_id"]],
        "license": "apache-2.0",  # both teachers'; the corpora are DFSG-free text and MIT images
        "objective": f"text rows: {text_record['objective']} (head {HEADS['text']}); image rows: "
        f"{image_record['objective']} (head {HEADS['image']}); one batch of one modality per step",
        "initialised_from": {
            "text": f"{Path(a.text_student).name}: text stem, trunk, {HEADS['text']} head",
            "image": f"{Path(a.image_student).name}: image stem, {HEADS['image']} head",
        },
        "corpus": {
            "text": {**text_record["corpus"], "rows": len(texts), "held_out": len(held_t)},
            "image": {**image_record["corpus"], "rows": len(images), "held_out": len(held_i)},
        },
        "settings": {
            **{k: v for k, v in vars(a).items() if k not in ("out", "text_cache", "image_cache")},
            "teacher_runtime": {"text": text_runtime, "image": image_record["settings"].get("teacher_runtime")},
        },
        "example_input": {"text": "a fast 2D platform game with many levels", "image": "shirt.png"},
        "limitations": [
            *text_record.get("limitations", []),
            *image_record.get("limitations", []),
            "The two heads are separate task-agnostic targets; fine-tuning puts one head over both modalities.",
        ],
        "student_image": image_cfg,
        "heads": HEADS,
    }
    save_student(student, a.out, record, steps=steps, agreement=final, started=t_start,
                 script="pretrain_multimodal.py", argv=argv, log=log)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
