"""The real-teacher path's sharp edges (issue 19): a bare encoder teacher's whole run and its resume, the shared
teacher cache, the truncation report, the teacher-quality warnings, progress lines off a terminal, s1's budget."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from test_teacher_finetune import _corpus, _encoder_folder, _env, _write_task

TINY = ["student=hybrid_test", "data.batch_size=16", "stages.soft_distill.epochs=1", "stages.mixed_distill=null",
        "stages.prune.epochs=1", "stages.prune.retry_keeps=[]", "stages.quant_finetune.steps=2",
        "train.latency_repeats=3", "train.progress_every=2", "losses.embedding=1.0",
        "train.accuracy_tolerance=1.0"]  # fmt: skip


def _distill(task, encoder, out, *extra, env=None):
    cmd = [sys.executable, "-m", "zoo.cli", "distill", "--data", str(task), "--teacher", f"text={encoder}",
           "--out", str(out), *TINY, *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or _env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def encoder_runs(tmp_path_factory):
    """Two `zoo distill --teacher text=<bare encoder>` runs into different --out folders sharing one $ZOO_CACHE,
    then `--resume` of the first (stdout is a pipe: progress comes as log lines)."""
    root = tmp_path_factory.mktemp("edges")
    task, encoder = _write_task(root / "task"), _encoder_folder(root / "encoder", _corpus())
    env = {**_env(), "ZOO_CACHE": str(root / "cache")}
    first = _distill(task, encoder, root / "a", env=env)
    second = _distill(task, encoder, root / "b", env=env)
    resumed = _distill(task, encoder, root / "a", "--resume", env=env)
    return SimpleNamespace(root=root, task=task, encoder=encoder, first=first, second=second, resumed=resumed)


def test_an_encoder_teacher_run_finishes_with_every_folder_and_resumes(encoder_runs):
    out = encoder_runs.root / "a"
    for name in ("metrics.json", "README.md", "pruned/model.safetensors", "int8/model.safetensors"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"]["teacher"]["accuracy"] is None
    assert metrics["models"]["teacher"]["no_accuracy"] == "encoder teacher"
    assert "encoder teacher" in (out / "README.md").read_text()
    assert "resuming" in encoder_runs.resumed.stdout and "distilled" in encoder_runs.resumed.stdout


def test_a_second_run_into_another_folder_reads_the_shared_teacher_cache(encoder_runs):
    assert "teacher cache: running teacher 'text'" in encoder_runs.first.stdout
    assert "teacher cache: running teacher" not in encoder_runs.second.stdout
    assert "outputs read from" in encoder_runs.second.stdout
    assert str(encoder_runs.root / "cache" / "teacher_cache") in encoder_runs.second.stdout
    assert not (encoder_runs.root / "b" / "teacher_cache").exists()


def test_progress_off_a_terminal_is_a_line_every_n_steps_with_loss_rate_and_eta(encoder_runs):
    lines = [x for x in encoder_runs.first.stdout.splitlines() if "soft_distill: step " in x]
    assert lines and all("loss" in x and "steps/s" in x and "eta" in x for x in lines)
    assert "soft_distill: step 2/" in lines[0]


def test_the_run_reports_what_each_preprocessing_truncates(encoder_runs):
    run = json.loads((encoder_runs.root / "a" / "metrics.json").read_text())["run"]
    assert run["truncation"]["student"]["text"]["max_length"] == 64
    assert run["truncation"]["teachers"]["text"]["max_length"] == 64
    assert run["warnings"] == []  # an encoder has no accuracy to warn about
    assert "truncation: no train row is cut (the student's text max_length 64; the text teacher's max_length 64)" in (
        encoder_runs.first.stdout
    )


def test_truncation_report_counts_rows_past_each_max_length(tiny_tokenizer):
    from zoo.modalities import MODALITIES
    from zoo.train.rows import truncation_lines, truncation_report

    texts = ["one two", "one two three four five six seven eight nine", None, "zero"]
    split = type("S", (), {"dataset": type("D", (), {"column_names": ["text"], "__getitem__": lambda s, k: texts})(),
                           "__len__": lambda s: len(texts)})()  # fmt: skip
    config = MODALITIES["text"].config(max_length=5, vocab_size=len(tiny_tokenizer))
    pre = {"text": MODALITIES["text"].preprocessor(tiny_tokenizer, config)}
    teacher = SimpleNamespace(truncated=lambda samples: 2, processors=SimpleNamespace(max_length=3))
    report = truncation_report(split, pre, {"text": teacher})
    assert report["student"]["text"] == {"truncated": 1, "of": 3, "max_length": 5}
    assert report["teachers"]["text"] == {"truncated": 2, "of": 3, "max_length": 3}
    lines = truncation_lines(report)
    assert len(lines) == 2
    assert "1 of 3 train text rows (33.3%) are longer than the student's max_length 5" in lines[0]
    assert "are longer than the text teacher's max_length 3" in lines[1]


def test_zoo_data_reports_truncation_for_the_student_and_a_teacher(tmp_path, capsys):
    from zoo.cli import main

    task, encoder = _write_task(tmp_path / "task"), _encoder_folder(tmp_path / "encoder", _corpus())
    assert main(["data", str(task), "--teacher", f"text={encoder}", "--max-length", "4"]) == 0
    out = capsys.readouterr().out
    assert "train text rows (100.0%) are longer than the student's max_length 4" in out
    assert "no train row is cut" not in out and "teacher's" not in out  # the teacher (64 tokens) cuts none
    assert "no test row is cut" not in out
    assert main(["data", str(task), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["truncation"]["train"]["student"]["text"]["truncated"] == 0  # a WordPiece at 64 tokens


class _ConstantTeacher(torch.nn.Module):
    """A 'classifier' teacher that always answers class 0."""

    modality, num_classes = "text", 4

    def forward(self, samples, layers=()):
        logits = torch.zeros(len(samples), self.num_classes)
        logits[:, 0] = 1.0
        return SimpleNamespace(logits=logits)


def _fake_run(labels):
    from zoo.train.run import Run

    samples = [{"id": str(i), "text": "x", "label": k} for i, k in enumerate(labels)]
    rows = type("R", (), {"raw": lambda s, i: samples[i], "__len__": lambda s: len(samples)})()
    run = SimpleNamespace(rows={"validation": rows}, num_classes=4, teachers={"text": _ConstantTeacher()},
                          warnings=[], teacher_validation={}, logged=[])  # fmt: skip
    run.log = run.logged.append
    run.warn = lambda m: Run.warn(run, m)
    return run, Run


def test_a_teacher_near_chance_or_below_the_majority_class_gets_a_loud_warning():
    run, Run = _fake_run([1, 1, 1, 2, 3, 0, 1, 2])  # the teacher is right on 1 of 8 (chance: 25%)
    Run.check_teachers(run)
    assert run.teacher_validation == {"text": 0.125}
    assert len(run.warnings) == 1 and "within 5 points of chance" in run.warnings[0]
    assert "zoo teacher" in run.warnings[0] and any(x.startswith("WARNING:") for x in run.logged)
    Run.check_teachers_against(run, 0.5)  # after the baseline: below the raw student
    assert len(run.warnings) == 2 and "below the raw student" in run.warnings[1]


def test_a_good_teacher_gets_no_warning():
    run, Run = _fake_run([0, 0, 0, 0, 0, 0, 1, 2])  # right on 6 of 8, the majority's share
    Run.check_teachers(run)
    Run.check_teachers_against(run, 0.5)
    assert run.warnings == []


def test_progress_lines_off_a_terminal():
    from zoo.console import Progress

    lines = []
    bar = Progress(5, 0, "phase", lines.append, show=False, every=2)
    for _ in range(5):
        bar.update(loss=0.5)
    bar.close()
    assert [x.split(" loss")[0] for x in lines] == ["phase: step 2/5", "phase: step 4/5", "phase: step 5/5"]
    assert all("steps/s eta" in x for x in lines)


def test_s1_fits_a_ratio_of_its_own_onnxruntime_latency():
    from zoo.recipe import load_recipe

    hw = load_recipe("s1").stages.hardware_adapt
    assert hw.latency_budget_ms is None and hw.latency_budget_ratio == 0.9 and hw.runtime == "onnxruntime"


def test_latency_is_measured_interleaved_with_a_spread_and_a_ratio_is_claimed_only_when_spreads_are_apart():
    from zoo.bench import format_table, interleaved_ms, set_latency
    from zoo.cards import highlights, table_rows

    spreads = interleaved_ms({"a": lambda: None, "b": lambda: sum(range(2000))}, rounds=12, warmup=1)
    assert set(spreads) == {"a", "b"} and all(s["p10"] <= s["median"] <= s["p90"] for s in spreads.values())
    base = {"accuracy": 0.9, "params": 1000, "size_bytes": 4000}
    teacher = set_latency(dict(base), {"median": 10.0, "p10": 9.0, "p90": 12.0})
    apart = set_latency({**base, "params": 100}, {"median": 2.0, "p10": 1.8, "p90": 2.5})
    overlapping = set_latency({**base, "params": 100}, {"median": 2.0, "p10": 1.8, "p90": 9.5})
    metrics = {"models": {"teacher": teacher, "distilled": apart}}
    assert teacher["latency_spread_ms"] == [9.0, 12.0]
    assert "5.0x lower latency" in highlights(metrics, "distilled")[0]
    assert "10.00 (9.00-12.00)" in format_table(metrics) and table_rows(metrics)[1]["latency"] == "2.00 (1.80-2.50)"
    metrics["models"]["distilled"] = overlapping
    assert "lower latency" not in highlights(metrics, "distilled")[0]
    assert "10.0x fewer parameters" in highlights(metrics, "distilled")[0]


def test_the_teacher_cache_goes_to_the_shared_folder_unless_the_recipe_says_run(tmp_path, monkeypatch):
    from zoo.recipe import TrainSettings
    from zoo.teachers import shared_cache_dir

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "c"))
    assert shared_cache_dir() == str(tmp_path / "c" / "teacher_cache")
    monkeypatch.delenv("ZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert shared_cache_dir() == str(tmp_path / "x" / "distill-zoo" / "teacher_cache")
    assert TrainSettings(teacher_cache="run").teacher_cache == "run"
    with pytest.raises(ValueError, match="teacher_cache='elsewhere'"):
        TrainSettings(teacher_cache="elsewhere")


def test_audio_clips_longer_than_clip_seconds_count_as_truncated():
    import numpy as np

    from zoo.modalities import MODALITIES

    pre = MODALITIES["audio"].preprocessor(MODALITIES["audio"].config(clip_seconds=1.0))
    clips = [{"array": np.zeros(n, dtype="float32"), "sampling_rate": 8000} for n in (8000, 8001, 4000, 24000)]
    assert pre.truncated([*clips, None]) == 2
