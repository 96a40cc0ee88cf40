"""``zoo export DIR --onnx``: export a student folder to ONNX (``zoo.compress.export``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from zoo.bench import accuracy as top1
from zoo.bench import count_params, folder_size_bytes, model_entry, update_metrics
from zoo.compress.export import (
    DEFAULT_OPSET,
    ONNX_NAME,
    example_batch,
    export_onnx,
    onnx_latency_ms,
    onnx_max_abs_diff,
    onnx_session,
    run_onnx,
)
from zoo.compress.quant import is_quantized
from zoo.data import load
from zoo.io import is_zoo_output
from zoo.students import load_student


def _cmd_export(args: argparse.Namespace) -> int:
    if not args.onnx:
        raise ValueError("nothing to export: pass --onnx (the only export format besides the safetensors folder).")
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
    export_onnx(student, out, batch, opset=args.opset)
    session = onnx_session(out)
    diff = onnx_max_abs_diff(student, session, batch)
    latency = onnx_latency_ms(session, {k: v[:1] for k, v in batch.items()})
    quantized = is_quantized(student)
    name = "onnx_int8" if quantized else "onnx_fp32"
    accuracy, extra = None, {"note": "accuracy not measured: pass --data to measure the ONNX graph"}
    if args.data:  # the exported graph itself, on the test split, through the student's own preprocessing
        data = load(args.data)
        split = "test" if "test" in data.splits else list(data.splits)[-1]
        accuracy = top1(lambda samples: run_onnx(session, student.preprocess(samples)), data[split])
        extra = {"split": split}
    entry = model_entry(
        accuracy=accuracy or 0.0,
        params=count_params(student),
        size_bytes=folder_size_bytes(out.parent, [out.name]),
        latency_ms=latency,
        runtime="onnxruntime",
        opset=args.opset,
        file=out.name,
        max_abs_logit_diff_vs_torch=round(diff, 6),
        **extra,
    )
    entry["accuracy"] = accuracy if accuracy is None else entry["accuracy"]  # null when unknown, never a made-up 0
    update_metrics(folder, {name: entry})
    print(f"wrote {out} ({entry['size_bytes'] / 2**20:.2f} MiB): {name} latency {latency:.2f} ms (batch 1, 1 thread), "
          f"max |logit diff| vs torch {diff:.2e}")  # fmt: skip
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("export", help="export a student folder to ONNX (float, or int8 QDQ when it is quantized)")
    p.add_argument("dir", help="student folder (config.json + model.safetensors)")
    p.add_argument("--onnx", action="store_true", help="write model.onnx")
    p.add_argument("--out", help="ONNX file to write (default: DIR/model.onnx)")
    p.add_argument("--data", help="data source (zoo.data.load): measure the ONNX model's accuracy on its test split")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= 17 (default {DEFAULT_OPSET})")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file in a folder zoo did not write")
    p.set_defaults(func=_cmd_export)
