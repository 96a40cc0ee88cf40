"""The benchmark scripts run end to end on a tiny student and end with their documented last line.

Their numbers are measurements, not asserted here (speed belongs to benchmarks/, behaviour to tests)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RATIO = r"\d+\.\d\d"


def _run(script: str, args: list[str], tmp_path: Path) -> list[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                         env=env, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()


@pytest.mark.slow
def test_compression_benchmark_prints_its_ratios_and_cleans_up(tmp_path):
    lines = _run("compression.py", ["--arch", "hybrid_test", "--rounds", "2"], tmp_path)
    pattern = rf"size_fp32_over_int8={RATIO} latency_fp32_over_int8={RATIO} latency_fp32_over_pruned={RATIO}"
    assert re.fullmatch(pattern, lines[-1]), lines[-1]
    table = {line.split()[0] for line in lines if line.split()}
    assert {"fp32", "pruned", "int8", "onnx_fp32", "onnx_pruned", "onnx_int8"} <= table
    assert not list(tmp_path.glob("zoo-*"))  # the saved students and ONNX files are gone


@pytest.mark.slow
def test_teacher_cache_benchmark_prints_its_ratios(tmp_path):
    lines = _run("teacher_cache.py", ["--steps", "2", "--batch-size", "8", "--samples", "16"], tmp_path)
    assert re.fullmatch(rf"online_over_ce={RATIO} cached_over_ce={RATIO}", lines[-1]), lines[-1]


@pytest.mark.slow
def test_real_tasks_benchmark_runs_a_custom_task_end_to_end(tmp_path):
    """zoo teacher -> ONNX fp32 / int8 teacher -> zoo distill -> interleaved latency, on a config-built encoder."""
    from tests.test_teacher_finetune import _corpus, _encoder_folder, _write_task

    task = _write_task(tmp_path / "task", rows_per_label=16)
    encoder = _encoder_folder(tmp_path / "encoder", _corpus())
    tiny = ["student=hybrid_test", "data.batch_size=16", "stages.soft_distill.epochs=1", "stages.mixed_distill=null",
            "stages.prune.epochs=1", "stages.quant_finetune.steps=2", "train.latency_repeats=2"]  # fmt: skip
    args = ["--task", "custom", "--data", str(task), "--teacher-model", str(encoder), "--teacher-epochs", "2",
            "--teacher-lr", "3e-3", "--cache", str(tmp_path / "cache"), "--rounds", "3", *tiny]  # fmt: skip
    lines = _run("real_tasks.py", args, tmp_path)
    acc = r"(\d\.\d{4}|nan)"
    pattern = (rf"task=custom teacher={acc} teacher_ort_int8={acc} baseline={acc} distilled_onnx_int8={acc} "
               rf"latency_teacher_ort_int8_over_student=({RATIO}|nan)")  # fmt: skip
    assert re.fullmatch(pattern, lines[-1]), lines[-1]
    names = {line.split()[0] for line in lines if line.split()}
    assert {"baseline", "frozen_encoder_lr", "teacher", "teacher_ort_fp32", "teacher_ort_int8", "raw_student",
            "distilled", "onnx_int8"} <= names  # fmt: skip
