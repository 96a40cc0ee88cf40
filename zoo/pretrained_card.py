"""The card of a task-agnostic pretrained student (a ``scripts/pretrain_*.py`` folder): ``build_pretrained_card``.

A run folder's card (teacher vs. raw student vs. distilled) is ``zoo.cards``; this one tells what a student learned
from which teacher and corpus, and what it is worth on a real task.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from zoo.cards import (
    DEFAULT_LICENSE,
    EXAMPLE_TEXT,
    NA,
    escape,
    fmt_latency,
    fmt_params,
    fmt_pct,
    fmt_value,
    is_hub_id,
    read_config,
    safetensors_params,
)

PRETRAINING_NAME = "pretraining.json"  # written by scripts/pretrain_*.py
EVALUATION_NAME = "evaluation.json"  # written by benchmarks/pretrained_students.py --json
RUNTIMES = {"torch": "torch fp32", "ort-int8": "ONNX Runtime, dynamic int8", "ort-fp32": "ONNX Runtime fp32"}
TEXT_LIMITATIONS = (
    "English only, and the corpus is one domain (software descriptions): expect less on other text.",
    "The embedding imitates the teacher's; it is not a replacement for the teacher's retrieval quality.",
)


def build_pretrained_card(folder: str | os.PathLike, *, repo_id: str | None = None, name: str | None = None):
    """The card of a task-agnostic pretrained student (a ``scripts/pretrain_*.py`` folder): what it learned from
    which teacher and corpus (``pretraining.json``), and, when ``evaluation.json`` is there, what it is worth on a
    real task against a blank student, the teacher and the simple baseline. Returns a ``huggingface_hub.ModelCard``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    path = folder / PRETRAINING_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; a pretrained student folder is written by scripts/pretrain_*.py.")
    pre = json.loads(path.read_text(encoding="utf-8"))
    ev = (
        json.loads((folder / EVALUATION_NAME).read_text(encoding="utf-8"))
        if (folder / EVALUATION_NAME).is_file()
        else {}
    )
    evaluations = ev.get("evaluations") or ([ev] if ev else [])  # a multimodal student: one per task
    config = read_config(folder)
    modalities = list(config.get("modalities") or [])
    name = name or repo_id or folder.resolve().name
    load = name.split("/")[-1]  # the catalogue name: the shipped weights load under it offline
    teacher_id = pre.get("teacher_id")
    teacher_ids = [t for t in (teacher_id if isinstance(teacher_id, list) else [teacher_id]) if t and is_hub_id(t)]
    teacher = _per_modality(pre.get("teacher", NA))
    corpus_line = _corpus_line(pre.get("corpus") or {})
    settings = pre.get("settings") or {}
    params = pre.get("params")
    if params is None and (folder / "model.safetensors").exists():
        params = safetensors_params(folder / "model.safetensors")
    tags = ["distill-zoo", "distillation", "knowledge-distillation", "pretrained", *modalities]
    # what the usage example feeds it, and the data files it names: the script's record, else a text student's
    example = pre.get("example_input") or {"text": EXAMPLE_TEXT}
    kind = next(iter(example), "text")
    files = f"my_{kind}s.csv"
    sizes = [f"max_length {fmt_value(settings['max_length'])} tokens"] if "max_length" in settings else []
    sizes += [f"teacher at {fmt_value(settings['teacher_size'])} px"] if "teacher_size" in settings else []
    data = ModelCardData(
        model_name=name,
        library_name="distill-zoo",
        tags=tags,
        base_model=teacher_ids or None,
        license=pre.get("license") or DEFAULT_LICENSE,
        pipeline_tag="feature-extraction",
    )
    lines = [
        f"# {escape(name)}",
        "",
        f"A {fmt_params(params)}-parameter `{escape(config.get('architecture', NA))}` student over "
        f"{', '.join(modalities) or NA}, pre-distilled task-agnostically from {escape(teacher)}: "
        f"{escape(pre.get('objective', NA))}. No labels were used. It is a starting point: `zoo finetune` gives it "
        "a head sized to your labels (the pretraining head is dropped) and trains it, with KD when you pass a teacher.",
        "",
        "## Usage",
        "",
        "```python",
        "import zoo",
        "",
        f'student = zoo.load("{load}")  # the weights ship with distill-zoo: works offline',
        f"batch = student.preprocess([{json.dumps(example)}])",
        'batch.pop("labels", None)',
        *_embedding_lines(config.get("tasks") or {}, kind),
        "```",
        "",
        "```bash",
        f"zoo finetune {load} --data {files} --out my-student            # labels only",
        f"zoo finetune {load} --data {files} --teacher {kind}=TEACHER_DIR  # plus KD (zoo teacher makes one)",
        "```",
        "",
        "## How it was made",
        "",
        "| | |",
        "|---|---|",
        f"| teacher | {escape(teacher)} |",
        *(f"| {k} | {escape(v)} |" for k, v in corpus_line),
        f"| training | {fmt_value(pre.get('steps'))} steps, batch {fmt_value(settings.get('batch_size'))}, lr "
        f"{fmt_value(settings.get('lr'))}, {fmt_value(settings.get('epochs'))} epochs, "
        + "".join(f"{x}, " for x in sizes)
        + f"seed {fmt_value(settings.get('seed'))} |",
        f"| teacher targets | the teacher run in {escape(_runtimes(settings.get('teacher_runtime')))} |",
        f"| held-out agreement | mean cosine {escape(_per_modality(pre.get('held_out_cosine')))} with the "
        "teacher's embedding |",
        *(
            [f"| started from | {escape(_per_modality(pre['initialised_from']))} |"]
            if pre.get("initialised_from")
            else []
        ),
        f"| time | {fmt_value(pre.get('seconds'))} s on one CPU thread |",
        "",
        f"Command: `{escape(pre.get('command', NA))}`",
        "",
    ]
    for ev in evaluations:
        lines += [
            f"## What it is worth on {escape(ev.get('task', NA))}",
            "",
            "Test-split accuracy, one run; the latency is batch 1, one thread, median (p10-p90).",
            "",
            "| model | accuracy | latency (ms) | how |",
            "|---|---|---|---|",
        ]
        for key, e in (ev.get("results") or {}).items():
            lines.append(
                f"| {escape(key)} | {fmt_pct(e.get('accuracy'))} | {fmt_latency(e)} | {escape(e.get('note', ''))} |"
            )
        lines += ["", f"Command: `{escape(ev.get('command', NA))}`", ""]
    limits = list(pre.get("limitations") or TEXT_LIMITATIONS)
    if "text" in modalities:
        limits.append(f"Texts are cut at {fmt_value((config.get('text') or {}).get('max_length'))} tokens.")
    if "image" in modalities:
        size = (config.get("image") or {}).get("image_size")
        limits.append(f"Images are resized to {fmt_value(size)} x {fmt_value(size)} pixels.")
    lines += ["## Limitations", "", *(f"- {escape(x)}" for x in limits), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _runtimes(value) -> str:
    """Where the teacher targets were computed: one runtime, or one per modality."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {RUNTIMES.get(v, NA)}" for k, v in value.items())
    return RUNTIMES.get(value, NA)


def _per_modality(value) -> str:
    """A value, or a {modality: value} dict as "text: ...; image: ..." (a multimodal student's record)."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {fmt_value(v)}" for k, v in value.items())
    return fmt_value(value)


def _corpus_line(corpus: dict) -> list[tuple[str, str]]:
    """The card's corpus rows: one corpus, or one per modality."""
    parts = corpus if corpus and all(isinstance(v, dict) for v in corpus.values()) else {"": corpus}
    rows = []
    for m, c in parts.items():
        label = f"{m} corpus" if m else "corpus"
        rows.append((label, f"{c.get('name', NA)}; {fmt_value(c.get('rows'))} rows, {fmt_value(c.get('held_out'))} "
                            "held out"))  # fmt: skip
        rows.append((f"{label} licence", str(c.get("licence", NA))))
    return rows


def _embedding_lines(tasks: dict, kind: str) -> list[str]:
    """The usage example's last line(s): the embedding head, or each modality's head of a multimodal student."""
    heads = {t: n for t, n in tasks.items() if t.startswith("embedding_")}
    if not heads:
        return [f"embedding = student(**batch)  # {tasks.get('embedding', NA)} numbers per {kind}"]
    lines = ["features = student.forward_features(**batch)  # one trunk for every modality"]
    for t, n in heads.items():
        lines.append(f'{t} = student.forward_head(features, task="{t}")  # {n} numbers, pretrained on {t[10:]}s')
    return lines
