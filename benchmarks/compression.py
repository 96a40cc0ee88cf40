"""Compression ratios of one student: fp32 vs. pruned (keep 0.6) vs. int8 vs. ONNX Runtime int8, in one run.

Student: ``hybrid_small`` over text, image and audio (7.9M parameters, 192 tokens per sample), weights as
initialised: size and latency do not depend on training, and accuracy after recovery is the trainer's measurement.
Why hybrid_small: it is the family's deployment-sized student (64-token text, 64 px images, 1 s audio), between
``hybrid_tiny``, sized for the one-core quickstart demo (32-token text, 32 px images, 1.6M parameters), where per-node
overhead and float-only ops rather than the quantizable layers dominate, and ``hybrid_base`` (128 tokens, 128 px,
2 s, 24.8M parameters). Pass ``--arch`` for the others.
- pruned: ``prune_student(keep=0.6, criterion="l1", scope="global", round_to=8)``, fp32;
- int8: ``prepare_qat`` -> ``calibrate`` (8 synthetic batches) -> ``convert_int8``; file = model.safetensors;
- ONNX: the fp32 and the int8 student exported with ``zoo.compress.export.export_onnx`` (opset 20; the int8 one as a QDQ
  graph that ONNX Runtime runs with MatMulIntegerToFloat / QLinearConv kernels), both run by ``onnx_session``
  (all graph optimisations, one intra-op thread, sequential execution).
For each: parameters, MACs (torch.utils.flop_counter: convs, matmuls, attention), file size, and latency at batch 1
and one thread: the median of single calls, the models' calls interleaved round by round so that the load of the
machine hits them alike. Latency ratios are the ratios of those medians.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compression.py [--arch hybrid_small] [--rounds 60]

The last line is ``size_fp32_over_int8=<a> latency_fp32_over_int8=<b> latency_fp32_over_pruned=<c>`` where
a = fp32 model.safetensors / int8 model.safetensors,
b = ONNX Runtime fp32 / ONNX Runtime int8 (same runtime; the torch-eager-fp32 / ONNX-Runtime-int8 ratio is printed
    above it, as is torch eager int8: int8 GEMMs for the linear layers, but every quantize and the float ops as
    separate eager kernels, so not faster than fp32 at these sizes and not the deployment path),
c = torch eager fp32 / torch eager pruned (same runtime; ONNX Runtime's ratio is printed above it).

Measured on the 2-vCPU / 1-core VM (AVX-512 VNNI), onnxruntime 1.32, with the students' ReLU and the session's
bias fold (below); b moves by about +-0.05 from run to run, and all latencies by up to 2x with the host's load:
  hybrid_tiny   a=3.68 b=1.49      c=1.32        (torch fp32 / onnxruntime int8: 3.10)
  hybrid_small  a=3.83 b=2.19-2.22 c=1.49-1.51   (torch fp32 / onnxruntime int8: 2.85-3.08)
  hybrid_base   a=3.84 b=2.17      c=1.55        (torch fp32 / onnxruntime int8: 2.29; --rounds 40)
hybrid_tiny's b is lower: at its sizes per-node overhead and the float-only ops weigh more than the int8 GEMMs.
What moved b on hybrid_small, from 1.88-1.95 (interleaved A/B runs on the same exported graphs):
- ReLU instead of GELU in the students (``act="relu"``): ONNX Runtime drops a ReLU before a uint8 quantization of
  zero point 0, so the int8 graph has no activation at all, while the fp32 graph still pays for one (about +0.15).
- ``onnx_session`` folds each linear layer's bias ``Add`` into its ``MatMulIntegerToFloat`` (10.90 vs 11.61 ms;
  about +0.15). With GELU the fold gained 1% (13.00 vs 13.14 ms): ONNX Runtime had already fused the MLP's first
  bias into ``BiasGelu``.
What is left in the int8 graph is float work int8 does not touch: softmax, LayerNorm, the attention score matmuls and
their mask, residual adds, transposes, and the activations' QuantizeLinear. Tried without gain: ORT's fused
MultiHeadAttention and QAttention contrib ops (same speed as the plain graph on this CPU), int8 attention matmuls
(slower), ORT's own quantize_static (19.8 ms vs our 12.8 ms with GELU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import zoo  # noqa: E402
from zoo.bench import count_params, folder_size_bytes  # noqa: E402
from zoo.compress.export import example_batch, export_onnx, onnx_feed, onnx_max_abs_diff, onnx_session  # noqa: E402
from zoo.compress.hardware import count_macs  # noqa: E402
from zoo.compress.prune import prune_student, pruned_widths  # noqa: E402
from zoo.compress.quant import calibrate, convert_int8, prepare_qat  # noqa: E402


def interleaved_medians(fns: dict, rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of each function over ``rounds`` rounds; every round calls each function once, in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="hybrid_small", help="registered student (default: hybrid_small)")
    parser.add_argument("--modalities", default="text,image,audio")
    parser.add_argument("--keep", type=float, default=0.6)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="zoo-compression-") as tmp:  # the saved folders and ONNX files go
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, tmp: Path) -> None:
    student = zoo.create_student(args.arch, modalities=args.modalities.split(","), num_classes=10).eval()
    one = example_batch(student, 1, seed=123)
    pruned = prune_student(student, keep=args.keep, criterion="l1", scope="global", round_to=8).eval()
    calib = [example_batch(student, 8, seed=i) for i in range(8)]
    int8 = convert_int8(calibrate(prepare_qat(student), calib))

    models = {"fp32": student, "pruned": pruned, "int8": int8}
    rows = {}
    for name, model in models.items():
        model.save_pretrained(tmp / name)
        rows[name] = {
            "params": count_params(model),
            "macs": count_macs(model, one),
            "size": folder_size_bytes(tmp / name),
        }
    sessions, diffs = {}, {}
    for name in ("fp32", "pruned", "int8"):
        path = export_onnx(models[name], tmp / f"{name}.onnx", example_batch(student, 2, seed=7))
        sessions[name] = onnx_session(path, threads=1)
        diffs[name] = onnx_max_abs_diff(models[name], sessions[name], example_batch(student, 4, seed=8))
        rows[f"onnx_{name}"] = dict(rows[name], size=path.stat().st_size)

    feeds = {name: onnx_feed(s, one) for name, s in sessions.items()}

    def torch_call(model):
        def call():
            with torch.inference_mode():
                model(**one)

        return call

    def ort_call(name):
        return lambda: sessions[name].run(None, feeds[name])

    fns = {name: torch_call(m) for name, m in models.items()}
    fns.update({f"onnx_{name}": ort_call(name) for name in sessions})
    lat = interleaved_medians(fns, rounds=args.rounds)

    print(f"{args.arch} over {args.modalities}; pruned widths {pruned_widths(pruned)}")
    print(f"{'model':<12} {'runtime':<12} {'params':>10} {'MMACs':>9} {'size MiB':>9} {'latency ms':>11}")
    for name in ("fp32", "pruned", "int8", "onnx_fp32", "onnx_pruned", "onnx_int8"):
        r = rows[name]
        runtime = "onnxruntime" if name.startswith("onnx") else "torch"
        print(
            f"{name:<12} {runtime:<12} {r['params']:>10} {r['macs'] / 1e6:>9.1f} {r['size'] / 2**20:>9.2f} "
            f"{lat[name]:>11.2f}"
        )
    print(f"max |logit diff| torch vs ONNX Runtime: fp32 {diffs['fp32']:.2e}, pruned {diffs['pruned']:.2e}, "
          f"int8 {diffs['int8']:.2e}")  # fmt: skip
    a = rows["fp32"]["size"] / rows["int8"]["size"]
    b = lat["onnx_fp32"] / lat["onnx_int8"]
    c = lat["fp32"] / lat["pruned"]
    print(f"params fp32/pruned {rows['fp32']['params'] / rows['pruned']['params']:.2f}, "
          f"MACs fp32/pruned {rows['fp32']['macs'] / rows['pruned']['macs']:.2f}")  # fmt: skip
    print(f"latency torch fp32 / onnxruntime int8 = {lat['fp32'] / lat['onnx_int8']:.2f}; "
          f"torch fp32 / torch eager int8 = {lat['fp32'] / lat['int8']:.2f}; "
          f"onnxruntime fp32 / onnxruntime pruned = {lat['onnx_fp32'] / lat['onnx_pruned']:.2f}")  # fmt: skip
    print(f"size_fp32_over_int8={a:.2f} latency_fp32_over_int8={b:.2f} latency_fp32_over_pruned={c:.2f}")


if __name__ == "__main__":
    main()
