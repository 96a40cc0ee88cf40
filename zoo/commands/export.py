"""``zoo export DIR --onnx [--openvino] [--tvm]``: export a student folder to ONNX and compile it for OpenVINO and
TVM (``zoo.compress.export``, ``zoo.compress.runtimes``), measuring each on its runtime into metrics.json."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from zoo.bench import accuracy as top1
from zoo.bench import count_params, folder_size_bytes, median_ms, model_entry, update_metrics
from zoo.compress.export import DEFAULT_OPSET, ONNX_NAME, example_batch, export_onnx
from zoo.compress.quant import is_quantized
from zoo.compress.runtimes import ARTIFACTS, export_openvino, export_tvm, runtime_problem, session
from zoo.data import load
from zoo.io import is_zoo_output
from zoo.students import load_student


def _cmd_export(args: argparse.Namespace) -> int:
    runtimes = [
        r for r, wanted in (("onnxruntime", args.onnx), ("openvino", args.openvino), ("tvm", args.tvm)) if wanted
    ]
    if not runtimes:
        raise ValueError("nothing to export: pass --onnx, --openvino and/or --tvm.")
    for runtime in runtimes:  # not installed: say so before any work
        if runtime_problem(runtime):
            raise ValueError(runtime_problem(runtime))
    torch.set_num_threads(1)
    folder = Path(args.dir)
    student = load_student(folder)
    out = Path(args.out) if args.out else folder / ONNX_NAME
    if out.is_dir():
        raise FileExistsError(f"--out {out} is a folder; give the ONNX file to write (e.g. {out / ONNX_NAME}).")
    if out.exists() and not args.overwrite and not is_zoo_output(out.parent):
        raise FileExistsError(
            f"{out} exists in a folder zoo did not write; pass --overwrite to replace it, or choose another --out."
        )
    batch = example_batch(student, batch_size=2, seed=0)
    with tempfile.TemporaryDirectory(prefix="zoo-export-") as tmp:
        # OpenVINO and TVM compile the ONNX graph: without --onnx it is written to a temporary file
        onnx_path = export_onnx(student, out if args.onnx else Path(tmp) / ONNX_NAME, batch, opset=args.opset)
        for runtime in runtimes:
            if runtime == "openvino":
                artifact = export_openvino(onnx_path, folder / ARTIFACTS["openvino"])
            elif runtime == "tvm":
                sizes = tuple(int(b) for b in args.tvm_batch.split(","))
                artifact = export_tvm(onnx_path, folder / ARTIFACTS["tvm"], sizes, tuning_trials=args.tvm_trials)
            else:
                artifact = onnx_path
            _measure(args, folder, student, runtime, artifact, batch)
    return 0


def _measure(args, folder: Path, student, runtime: str, artifact: Path, batch: dict) -> None:
    """The artifact on its runtime: max |logit diff| vs torch, batch-1 latency, accuracy with --data; metrics.json."""
    compiled = session(artifact)
    with torch.no_grad():
        ref = student(**batch)
    diff = float((compiled.logits(batch) - ref).abs().max())
    one = compiled.feeds({k: v[:1] for k, v in batch.items()})
    latency = median_ms(lambda: compiled.run(one))
    prefix = {"onnxruntime": "onnx", "openvino": "openvino", "tvm": "tvm"}[runtime]
    name = f"{prefix}_{'int8' if is_quantized(student) else 'fp32'}"
    accuracy, extra = None, {"note": f"accuracy not measured: pass --data to measure the {runtime} model"}
    if args.data:  # the compiled model itself, on the test split, through the student's own preprocessing
        data = load(args.data)
        split = "test" if "test" in data.splits else list(data.splits)[-1]
        accuracy = top1(lambda samples: compiled.logits(student.preprocess(samples)), data[split])
        extra = {"split": split}
    if artifact.is_dir():
        size = folder_size_bytes(artifact, [p.name for p in artifact.iterdir() if p.suffix in (".bin", ".xml", ".so")])
        where = f"{artifact.relative_to(folder)}/" if artifact.is_relative_to(folder) else str(artifact)
    else:
        size, where = folder_size_bytes(artifact.parent, [artifact.name]), artifact.name
    entry = model_entry(
        accuracy=accuracy or 0.0,
        params=count_params(student),
        size_bytes=size,
        latency_ms=latency,
        runtime=runtime,
        opset=args.opset,
        file=where,
        max_abs_logit_diff_vs_torch=round(diff, 6),
        **extra,
    )
    entry["accuracy"] = accuracy if accuracy is None else entry["accuracy"]  # null when unknown, never a made-up 0
    update_metrics(folder, {name: entry})
    print(f"wrote {artifact} ({size / 2**20:.2f} MiB): {name} latency {latency:.2f} ms (batch 1, 1 thread), "
          f"max |logit diff| vs torch {diff:.2e}")  # fmt: skip


def add_cli(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a student folder to ONNX (float, or int8 QDQ when it is quantized), compiled for OpenVINO / TVM",
    )
    p.add_argument("dir", help="student folder (config.json + model.safetensors)")
    p.add_argument("--onnx", action="store_true", help="write model.onnx (ONNX Runtime)")
    p.add_argument("--openvino", action="store_true", help="write DIR/openvino/ (OpenVINO IR; distill-zoo[openvino])")
    p.add_argument("--tvm", action="store_true", help="write DIR/tvm/ (TVM libraries for this CPU; distill-zoo[tvm])")
    p.add_argument("--tvm-batch", default="1", help="comma-separated batch sizes to compile for TVM (default 1)")
    p.add_argument("--tvm-trials", type=int, default=0, help="MetaSchedule tuning trials for TVM (default 0: none)")
    p.add_argument("--out", help="ONNX file to write (default: DIR/model.onnx)")
    p.add_argument(
        "--data", help="data source (zoo.data.load): measure each exported model's accuracy on its test split"
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= 17 (default {DEFAULT_OPSET})")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file in a folder zoo did not write")
    p.set_defaults(func=_cmd_export)
