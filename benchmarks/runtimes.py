"""The fp32 and int8 student on every installed deployment runtime, in one process: latency at batch 1 and 32,
accuracy, the best int8 over the best fp32, and fp32 throughput at batch 64 against this machine's GEMM peak.

Students: a run folder's float student (``pruned/`` when the run pruned, else the top-level distilled student) and
its int8 student (``int8/``, the same widths), by default the real text run of ``benchmarks/real_tasks.py``
(debian-sections, hybrid_tiny with 64-token text, pretrained init) when it is in the cache; ``--run DIR`` for
another. Accuracy on ``--data``'s test split (default: the debian-sections task in ``benchmarks/data``).

Runtimes: torch eager (fp32, reference), ONNX Runtime (``zoo.compress.export.onnx_session``), OpenVINO and TVM
(``zoo.compress.runtimes``) when installed; every one at one thread. TVM is compiled for batch 1, 32 and 64 with its
default schedules, or tuned with ``--tvm-trials N`` MetaSchedule trials per library (minutes per library on one
core). Latency: the median of single calls, every model of one batch size called in turn each round
(``zoo.bench.interleaved_ms``) so the host's load hits them alike. GEMM peak: a 1024 x 1024 fp32 ``torch.matmul``
at one thread, timed in the same rounds as the batch-64 calls; the student's FLOPs are 2 x its MACs
(``zoo.compress.hardware.count_macs``).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/runtimes.py [--run DIR] [--data SOURCE] \
        [--rounds 30] [--tvm-trials 0]

The last line is ``best_int8_over_best_fp32_b1=<a> best_int8_over_best_fp32_b32=<b> fp32_b64_gemm_fraction=<c>``:
fp32 latency / int8 latency, each the lowest over the runtimes, and the best fp32 batch-64 GFLOP/s over the peak.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TVM_NUM_THREADS", "1")

import torch  # noqa: E402

from zoo.bench import accuracy, interleaved_ms  # noqa: E402
from zoo.compress import runtimes  # noqa: E402
from zoo.compress.export import export_onnx  # noqa: E402
from zoo.compress.hardware import count_macs  # noqa: E402
from zoo.data import load  # noqa: E402
from zoo.students import load_student  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_RUN = Path.home() / ".cache/distill-zoo/benchmarks/debian-sections/distill-user-pretrained"
DEFAULT_DATA = HERE / "data" / "debian-sections"
BATCHES = (1, 32)
THROUGHPUT_BATCH = 64
GEMM_SIZE = 1024  # fp32 matmul whose GFLOP/s at one thread stands for the machine's peak


def batches_from(student, samples: list[dict], sizes) -> dict[int, dict]:
    """A flat batch of each size from real test samples (cycled when there are fewer), labels dropped."""
    out = {}
    for n in sizes:
        rows = [samples[i % len(samples)] for i in range(n)]
        out[n] = {k: v for k, v in student.preprocess(rows).items() if k != "labels"}
    return out


def compile_all(students: dict, tmp: Path, tvm_trials: int) -> dict[tuple[str, str], runtimes.Session]:
    """(runtime, precision) -> session for every installed runtime, with the compile times printed."""
    sessions = {}
    for precision, student in students.items():
        onnx_path = export_onnx(student, tmp / f"{precision}.onnx")
        sessions["onnxruntime", precision] = runtimes.session(onnx_path)
        if runtimes.installed("openvino"):
            sessions["openvino", precision] = runtimes.session(
                runtimes.export_openvino(onnx_path, tmp / f"openvino-{precision}")
            )
        if runtimes.installed("tvm"):
            sizes = (*BATCHES, THROUGHPUT_BATCH) if precision == "fp32" else BATCHES
            t0 = time.perf_counter()
            folder = runtimes.export_tvm(onnx_path, tmp / f"tvm-{precision}", sizes, tuning_trials=tvm_trials)
            print(f"TVM {precision}: compiled for batch {sizes} in {time.perf_counter() - t0:.0f} s "
                  f"({tvm_trials} tuning trials per library)", flush=True)  # fmt: skip
            sessions["tvm", precision] = runtimes.session(folder)
    return sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a zoo distill run folder with int8/")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="data source for accuracy (its test split)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tvm-trials", type=int, default=0, help="MetaSchedule trials per TVM library")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = args.run
    if not (run / "int8" / "config.json").exists():
        raise SystemExit(f"{run} has no int8/ student: pass --run with a zoo distill run that quantized.")
    float_dir = run / "pruned" if (run / "pruned" / "config.json").exists() else run
    students = {"fp32": load_student(float_dir).eval(), "int8": load_student(run / "int8").eval()}
    data = load(args.data)
    test = list(data["test"] if "test" in data.splits else data[list(data.splits)[-1]])
    print(f"fp32 student: {float_dir}; int8 student: {run / 'int8'}; {len(test)} test samples of {args.data}")

    with tempfile.TemporaryDirectory(prefix="zoo-runtimes-") as tmp:
        sessions = compile_all(students, Path(tmp), args.tvm_trials)
        report(args, students, sessions, test)


def report(args, students: dict, sessions: dict, test: list[dict]) -> None:
    fp32 = students["fp32"]
    batches = batches_from(fp32, test, (*BATCHES, THROUGHPUT_BATCH))
    rows = {}
    for (runtime, precision), s in sessions.items():
        print(f"accuracy on {runtime} {precision}", flush=True)
        student = students[precision]
        with torch.no_grad():
            ref = student(**batches[32])
        rows[runtime, precision] = {
            "accuracy": accuracy(lambda samples, s=s, st=student: s.logits(st.preprocess(samples)), test),
            "diff": float((s.logits(batches[32]) - ref).abs().max()),
        }
    for precision, student in students.items():
        rows["torch", precision] = {"accuracy": accuracy(lambda x, st=student: st(**st.preprocess(x)), test)}

    def torch_call(model, batch):
        def call():
            with torch.inference_mode():
                model(**batch)

        return call

    lat = {}
    for n in (*BATCHES, THROUGHPUT_BATCH):
        wanted = [p for p in students if n != THROUGHPUT_BATCH or p == "fp32"]  # batch 64: fp32 throughput only
        calls = {("torch", p): torch_call(students[p], batches[n]) for p in wanted}
        for key, s in sessions.items():
            if n == THROUGHPUT_BATCH and key[1] != "fp32":
                continue
            feeds = s.feeds(batches[n])
            calls[key] = lambda s=s, feeds=feeds: s.run(feeds)
        if n == THROUGHPUT_BATCH:  # the GEMM peak in the same rounds: the host's load hits it alike
            a, b = torch.randn(GEMM_SIZE, GEMM_SIZE), torch.randn(GEMM_SIZE, GEMM_SIZE)
            calls["gemm", "fp32"] = lambda a=a, b=b: torch.matmul(a, b)
        rounds = args.rounds if n == 1 else max(args.rounds // 3, 5)
        for key, t in interleaved_ms(calls, rounds=rounds).items():
            lat[key + (n,)] = t["median"]

    print(f"\n{'runtime':<12} {'model':<5} {'accuracy':>8} {'b1 ms':>8} {'b32 ms':>8} {'int8 speed-up b1/b32':>21} "
          f"{'max|dlogit|':>11}")  # fmt: skip
    for (runtime, precision), r in sorted(rows.items(), key=lambda kv: (kv[0][0] != "torch", kv[0])):
        b1, b32 = lat[runtime, precision, 1], lat[runtime, precision, 32]
        speed = ""
        if precision == "int8":
            speed = f"{lat[runtime, 'fp32', 1] / b1:.2f} / {lat[runtime, 'fp32', 32] / b32:.2f}"
        diff = f"{r['diff']:.1e}" if "diff" in r else "-"
        acc = f"{100 * r['accuracy']:.2f}%"
        print(f"{runtime:<12} {precision:<5} {acc:>8} {b1:>8.2f} {b32:>8.2f} {speed:>21} {diff:>11}")

    def best(precision, n):
        keys = [k for k in lat if k[1] == precision and k[2] == n]
        return min(keys, key=lat.get)

    ratios = []
    for n in BATCHES:
        f, q = best("fp32", n), best("int8", n)
        ratios.append(lat[f] / lat[q])
        print(f"batch {n}: best fp32 {f[0]} {lat[f]:.2f} ms, best int8 {q[0]} {lat[q]:.2f} ms: {ratios[-1]:.2f}x")
    flops = 2 * count_macs(fp32, batches[THROUGHPUT_BATCH])
    peak = 2 * GEMM_SIZE**3 / (lat.pop(("gemm", "fp32", THROUGHPUT_BATCH)) / 1000) / 1e9
    through = {k[0]: flops / (lat[k] / 1000) / 1e9 for k in lat if k[2] == THROUGHPUT_BATCH}
    top = max(through, key=through.get)
    print(f"fp32 batch {THROUGHPUT_BATCH}: {flops / 1e9:.2f} GFLOP per call; "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in through.items())
          + f"; torch matmul peak (1 thread) {peak:.1f} GFLOP/s: best {top} at {through[top] / peak:.0%}")  # fmt: skip
    print(f"best_int8_over_best_fp32_b1={ratios[0]:.2f} best_int8_over_best_fp32_b32={ratios[1]:.2f} "
          f"fp32_b64_gemm_fraction={through[top] / peak:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
