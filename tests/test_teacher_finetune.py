"""`zoo teacher` on a config-built encoder, and the real-teacher path of `zoo distill`: the teacher's tokenizer
trimmed to the data, token embeddings inherited, unlabeled rows the teacher labels, no run folder overwritten."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORDS = {
    "games": ["play", "level", "puzzle", "arcade", "player", "board"],
    "sound": ["audio", "music", "mixer", "synth", "volume", "midi"],
    "net": ["network", "packet", "proxy", "socket", "router", "dns"],
}


def _write_task(folder: Path, rows_per_label: int = 24, seed: int = 0) -> Path:
    """A tiny text task as a folder of split files (train.csv, validation.csv, test.csv)."""
    import csv
    import random

    rnd = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train": rows_per_label, "validation": 6, "test": 6}
    for split, n in sizes.items():
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for label, words in WORDS.items():
                for _ in range(n):
                    w.writerow([" ".join(rnd.choice(words) for _ in range(5)) + " for linux", label])
    return folder


def _encoder_folder(root: Path, corpus: list[str]) -> Path:
    """A tiny BERT encoder (AutoModel, no classifier) with its tokenizer: what a pretrained hub encoder looks like."""
    from transformers import BertConfig, BertModel

    from zoo.modalities.text import train_wordpiece_tokenizer

    tok = train_wordpiece_tokenizer(corpus, vocab_size=200)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(cfg).save_pretrained(root, safe_serialization=True)
    tok.save_pretrained(root)
    return root


def _corpus() -> list[str]:
    return [" ".join(ws) + " for linux with extra words" for ws in WORDS.values()] * 3 + ["zebra quartz unused vocab"]


def _env():
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return _write_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return _encoder_folder(tmp_path_factory.mktemp("encoder"), _corpus())


@pytest.fixture(scope="module")
def teacher(task, encoder, tmp_path_factory):
    """`zoo teacher ENCODER --data TASK --out T`, as a user runs it."""
    out = tmp_path_factory.mktemp("t") / "teacher"
    cmd = [sys.executable, "-m", "zoo.cli", "teacher", str(encoder), "--data", str(task), "--out", str(out),
           "--epochs", "6", "--lr", "3e-3", "--batch-size", "8", "--max-length", "16", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_zoo_teacher_gives_a_task_classifier_with_the_data_labels(teacher):
    from zoo.teachers import load_teacher

    metrics = json.loads((teacher / "metrics.json").read_text())
    t = metrics["teacher"]
    assert t["validation_accuracy"] is not None and t["test_accuracy"] is not None
    assert t["validation_accuracy"] > 0.6  # three separable classes: it learned them (chance is 0.33)
    assert metrics["labels"] == sorted(WORDS)
    loaded = load_teacher(teacher)
    assert loaded.num_classes == 3 and loaded.modality == "text"
    cfg = json.loads((teacher / "config.json").read_text())
    assert cfg["id2label"] == {"0": "games", "1": "net", "2": "sound"}
    assert (teacher / "README.md").read_text().startswith("---")
    assert not (teacher / "checkpoints").exists()  # a finished run leaves no optimizer state behind
    # the kept weights are the best-validation ones, and they load strictly from safetensors
    assert (teacher / "model.safetensors").is_file() and not list(teacher.glob("*.bin"))


def test_zoo_teacher_refuses_a_folder_in_use_and_resume_of_a_finished_run_is_a_no_op(teacher, task, encoder):
    cmd = [sys.executable, "-m", "zoo.cli", "teacher", str(encoder), "--data", str(task), "--out", str(teacher),
           "--epochs", "6", "--lr", "3e-3", "--batch-size", "8", "--max-length", "16", "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 1 and "--resume" in proc.stderr and "Traceback" not in proc.stderr
    before = (teacher / "model.safetensors").read_bytes()
    proc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0 and "nothing to resume" in proc.stdout + proc.stderr
    assert (teacher / "model.safetensors").read_bytes() == before
    proc = subprocess.run([*cmd[:-1], "--lr", "1e-3", "--resume"], capture_output=True, text=True, env=_env())
    assert proc.returncode == 1 and "settings" in proc.stderr  # other settings: refused, not mixed


def test_zoo_teacher_resumes_bit_identically(task, encoder, tmp_path, monkeypatch, forbid_unpickling):
    from safetensors.torch import load_file

    from zoo import data as zdata
    from zoo.console import Progress
    from zoo.teachers import finetune

    data = zdata.load(str(task))
    s = finetune.FinetuneSettings(epochs=2, lr=3e-3, batch_size=8, max_length=16, checkpoint_every=3)
    finetune.finetune_teacher(str(encoder), data, tmp_path / "whole", settings=s, log=lambda m: None)

    real_update = Progress.update

    def stop_at_5(self, n=1, loss=None):
        real_update(self, n, loss)
        if self.step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "update", stop_at_5)
    with pytest.raises(KeyboardInterrupt):
        finetune.finetune_teacher(str(encoder), data, tmp_path / "cut", settings=s, log=lambda m: None)
    monkeypatch.setattr(Progress, "update", real_update)
    assert (tmp_path / "cut" / "checkpoints" / "step-3").is_dir()
    forbid_unpickling("resuming zoo teacher")
    finetune.finetune_teacher(str(encoder), data, tmp_path / "cut", settings=s, resume=True, log=lambda m: None)
    a, b = (
        load_file(str(tmp_path / "whole" / "model.safetensors")),
        load_file(str(tmp_path / "cut" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_length_grouped_batches_cover_every_row_once_and_cut_padding():
    from zoo.teachers.fit import epoch_batches

    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(4, 200, (1000,), generator=gen).tolist()
    plain = epoch_batches(1000, 8, seed=3, epoch=0)
    grouped = epoch_batches(1000, 8, seed=3, epoch=0, lengths=lengths)
    for batches in (plain, grouped):
        rows = [i for b in batches for i in b]
        assert len(batches) == 125 and len(rows) == len(set(rows)) == 1000
    assert grouped == epoch_batches(1000, 8, seed=3, epoch=0, lengths=lengths)  # what resume relies on
    assert grouped != epoch_batches(1000, 8, seed=3, epoch=1, lengths=lengths)

    def padded(batches):  # tokens a batch padded to its longest row costs
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(grouped) < 0.7 * padded(plain)
    assert epoch_batches(5, 8, seed=0, epoch=0) == [
        torch.randperm(5, generator=torch.Generator().manual_seed(0)).tolist()
    ]


def test_zoo_teacher_says_when_max_length_cuts_the_texts():
    from zoo.teachers.fit import report_truncation as _report_truncation

    lines = []
    _report_truncation([10] * 60 + [100] * 40, 64, "t", lines.append)
    assert (
        lines
        and "40% of the train texts are longer than --max-length 64" in lines[0]
        and "median 10, 90th percentile 100" in lines[0]
    )
    lines.clear()
    _report_truncation([10] * 99 + [100], 64, "t", lines.append)  # 1% cut: not worth a line
    assert not lines


def test_zoo_teacher_names_a_missing_model_folder(task, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "teacher", str(tmp_path / "nope"), "--data", str(task),
                           "--out", str(tmp_path / "t")], capture_output=True, text=True, env=_env())  # fmt: skip
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_trimmed_tokenizer_tokenizes_the_corpus_as_the_full_one(encoder):
    from zoo.modalities.text import load_tokenizer, trim_tokenizer

    full = load_tokenizer(encoder)
    corpus = [" ".join(WORDS["games"]) + " for linux", " ".join(WORDS["net"])]
    tok, kept = trim_tokenizer(full, corpus)
    assert len(tok) < len(full) and len(kept) == len(tok)
    for text in corpus:
        new, old = tok(text)["input_ids"], full(text)["input_ids"]
        assert [kept[i] for i in new] == old  # the same pieces, renumbered
    # a word the corpus lacks still splits into known pieces (every single character is kept), not [UNK]
    assert tok.unk_token_id not in tok("quartz")["input_ids"]
    assert tok.pad_token_id == kept.index(full.pad_token_id)


def test_distill_with_a_fine_tuned_teacher_trims_inherits_and_uses_every_label(task, teacher, tmp_path):
    """`zoo distill --data TASK --teacher text=T` (the user recipe): trimmed teacher tokenizer, inherited embeddings,
    every label, the unlabeled rows labelled by the teacher; a second run into the same folder is refused."""
    import csv

    unl = tmp_path / "unlabeled.csv"
    with open(unl, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([[" ".join(ws[:3]) + " tool"] for ws in WORDS.values()] * 4)
    out = tmp_path / "run"
    tiny = ["student=hybrid_test", "data.batch_size=16", "stages.soft_distill.epochs=1", "stages.mixed_distill=null",
            "stages.prune=null", "stages.quant_finetune=null", "train.latency_repeats=2"]  # fmt: skip
    cmd = [sys.executable, "-m", "zoo.cli", "distill", "--data", str(task), "--teacher", f"text={teacher}",
           "--unlabeled", str(unl), "--out", str(out), "--no-progress", *tiny]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "run.log").read_text()
    assert "trimmed to the" in log and "token embeddings from the text teacher" in log
    assert "12 unlabeled rows" in log
    metrics = json.loads((out / "metrics.json").read_text())
    settings = metrics["run"]["recipe_settings"]
    assert settings["name"] == "user" and settings["data"]["label_fraction"] == 1.0
    assert metrics["run"]["dataset"]["splits"]["train"] == 72 + 12
    import zoo

    student = zoo.load(out)
    assert len(student.tokenizer) < 200 and student.config.text.vocab_size < 200
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 1 and "--overwrite" in proc.stderr and (out / "metrics.json").is_file()
