"""How much a pretrained zoo student is worth on a real task: the numbers its model card quotes.

For a pretrained student (a folder written by ``scripts/pretrain_*.py``, or a catalogue name) and a real task of
``benchmarks/real_tasks.py`` (``debian-sections`` for a text student, ``fashion-mnist`` for an image one), one run
prints, on the task's test split:

- ``baseline``: TF-IDF + logistic regression, or logistic regression on the pixels (the strongest simple
  alternative, as in ``real_tasks.py``);
- ``teacher_probe``: the frozen teacher encoder (all-MiniLM-L6-v2 mean-pooled at 128 tokens, or the ImageNet
  EfficientNet-Lite0's pooled features at 128 px), normalised, + logistic regression;
- ``probe``: the frozen pretrained student (its ``embedding`` head, or ``embedding_<modality>`` of a multimodal
  student, normalised) + logistic regression;
- ``finetuned``: ``zoo finetune STUDENT --data TASK`` with labels only (new ``label`` head, ``--steps``);
- ``blank_finetuned``: the same architecture and tokenizer with fresh weights, fine-tuned the same way;
- with ``--teacher DIR`` (a ``zoo teacher`` folder): both fine-tunes again with logit KD from it, at each of
  ``--kd-steps``, to show how many steps each start needs;
- latency (batch 1, one thread, interleaved) and size of the fine-tuned student.

The table comes first; the last line is
``student=<name> task=<task> probe=<acc> teacher_probe=<acc> finetuned=<acc> blank_finetuned=<acc> baseline=<acc>``.
``--json FILE`` writes every number with the command (``zoo catalogue add`` puts them into the card); a second task
for the same student (a multimodal one) is kept beside the first.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/pretrained_students.py \\
        --student model_cards/hybrid-tiny-text --task debian-sections
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.real_tasks import BASELINES, CACHE, TASKS, fit_lr, frozen_encoder_lr, labels_of  # noqa: E402


def student_embeddings(student, rows: list[dict], modality: str, batch_size: int = 256) -> np.ndarray:
    """The frozen student's output for ``rows``, L2-normalised: its single head, or for a multimodal student the
    head pretrained on ``modality`` (``embedding_<modality>``)."""
    student.eval()
    head = f"embedding_{modality}" if f"embedding_{modality}" in student.heads else None
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            x = student.preprocess([{k: v for k, v in r.items() if k != "label"} for r in rows[i : i + batch_size]])
            x.pop("labels", None)
            y = student.forward_head(student.forward_features(**x), task=head)
            out.append(torch.nn.functional.normalize(y.float(), dim=-1).numpy())
    return np.concatenate(out)


def blank_copy(student, folder: Path) -> Path:
    """The same architecture, config and tokenizer as ``student``, freshly initialised, saved to ``folder``."""
    torch.manual_seed(0)
    student.blank_copy().save_pretrained(folder)
    return folder


def write_evaluation(path: Path, evaluation: dict) -> None:
    """Write ``evaluation`` to ``path``; when ``path`` holds the same student's evaluation on another task (a
    multimodal student), keep both as ``{"evaluations": [...]}`` (a rerun on a task replaces that task's)."""
    kept = []
    if path.is_file():
        old = json.loads(path.read_text())
        kept = [e for e in old.get("evaluations") or [old] if e.get("student") == evaluation["student"]]
        kept = [e for e in kept if e.get("task") != evaluation["task"]]
    body = {"evaluations": [*kept, evaluation]} if kept else evaluation
    path.write_text(json.dumps(body, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", required=True, help="pretrained student folder or catalogue name")
    ap.add_argument("--task", default="debian-sections", choices=["debian-sections", "fashion-mnist"])
    ap.add_argument("--steps", type=int, default=1200, help="labels-only fine-tune steps (batch 32)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--teacher", default=None, help="a zoo teacher folder: also fine-tune with logit KD from it")
    ap.add_argument("--kd-steps", default="300,1200", help="with --teacher: the step counts to compare")
    ap.add_argument("--json", default=None, help="write the numbers here")
    ap.add_argument("--cache", default=str(CACHE))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import zoo
    from zoo import data as zdata
    from zoo.bench import format_table, interleaved_ms
    from zoo.finetune import finetune

    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    spec = TASKS[a.task]
    source = spec["data"]()
    data = zdata.load(source)
    train, val, test = (list(data.splits[s]) for s in ("train", "validation", "test"))
    ys = labels_of(train, val, test)
    results: dict[str, dict] = {}
    modality = spec["modality"]
    b = BASELINES[modality](train, val, test)
    what = "TF-IDF + LR" if modality == "text" else "LR on pixels"
    results["baseline"] = {"accuracy": b["accuracy"], "note": f"{what}, C={b['C']}"}
    fe = frozen_encoder_lr(spec["teacher"](), modality, train, val, test, Path(a.cache) / a.task)
    encoder = "all-MiniLM-L6-v2 (128 tokens)" if modality == "text" else "ImageNet EfficientNet-Lite0 (128 px)"
    note = f"frozen {encoder} + LR, C={fe['C']}"
    results["teacher_probe"] = {"accuracy": fe["accuracy"], "note": note}
    log(f"baseline {100 * b['accuracy']:.2f}%, teacher probe {100 * fe['accuracy']:.2f}%")

    student = zoo.load(a.student)
    feats = [student_embeddings(student, rows, modality) for rows in (train, val, test)]
    pr = fit_lr(*zip(feats, ys))
    results["probe"] = {"accuracy": pr["accuracy"], "note": f"frozen student + LR, C={pr['C']}"}
    log(f"student probe {100 * pr['accuracy']:.2f}%")

    work = Path(tempfile.mkdtemp(prefix="pretrained-students-"))
    try:
        starts = {"finetuned": a.student, "blank_finetuned": str(blank_copy(student, work / "blank"))}
        runs = [(name, start, a.steps, None) for name, start in starts.items()]
        if a.teacher:
            for steps in (int(s) for s in a.kd_steps.split(",")):
                runs += [(f"{name}_kd_{steps}", start, steps, a.teacher) for name, start in starts.items()]
        calls = {}
        for name, start, steps, teacher in runs:
            t0 = time.perf_counter()
            out = finetune(
                start, data, work / name, steps=steps, lr=a.lr, teachers={modality: teacher} if teacher else None,
                progress=False,
            )  # fmt: skip
            entry = json.loads((out / "metrics.json").read_text())["models"]["finetuned"]
            results[name] = {
                "accuracy": entry["accuracy"],
                "params": entry["params"],
                "note": f"{steps} steps, lr {a.lr:g}" + (", KD from the teacher" if teacher else ", labels only"),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            log(f"{name} {100 * entry['accuracy']:.2f}% in {results[name]['seconds']:.0f}s")
            if name == "finetuned":
                tuned = zoo.load(out)
                one = tuned.preprocess([test[0]])
                one.pop("labels", None)
                tuned.eval()
                calls[name] = lambda m=tuned, x=one: m(**x)
                results[name]["size_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        with torch.no_grad():
            lat = interleaved_ms(calls, rounds=30)
        for name, ms in lat.items():
            results[name]["latency_ms"], results[name]["latency_spread_ms"] = ms["median"], [ms["p10"], ms["p90"]]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(format_table({"models": results}))
    name = Path(str(a.student).rstrip("/")).name
    command = "python benchmarks/pretrained_students.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.json:
        write_evaluation(Path(a.json), {"student": name, "task": a.task, "command": command, "results": results})
    keys = ("probe", "teacher_probe", "finetuned", "blank_finetuned", "baseline")
    print(f"student={name} task={a.task} " + " ".join(f"{k}={results[k]['accuracy']:.4f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
