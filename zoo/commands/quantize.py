"""``zoo quantize DIR --out OUT``: int8 post-training quantization of a student folder (``zoo.compress.quant``)."""

from __future__ import annotations

import torch

from zoo.bench import update_metrics
from zoo.compress.hardware import copy_metrics, data_batches, metrics_entry
from zoo.compress.quant import quantize_student
from zoo.io import staged_folder
from zoo.students import load_student


def _cmd_quantize(args) -> int:
    torch.set_num_threads(1)
    with staged_folder(args.out, overwrite=args.overwrite) as stage:  # a whole new folder, swapped in at the end
        student = load_student(args.dir)
        batches, note = data_batches(student, args.data, args.batches, args.batch_size, split="train")
        print(f"calibration: {note}")
        int8 = quantize_student(student, batches)
        copy_metrics(args.dir, stage)
        int8.save_pretrained(stage)
        entry = metrics_entry(
            int8, stage, args.data, method="post-training (calibrated, no QAT)", calibration=note,
            note="torch eager runs int8 GEMMs but each quantize as its own kernel; `zoo export --onnx` is the fast "
            "path",
        )  # fmt: skip
        update_metrics(stage, {"int8": entry})
    print(f"quantized {args.dir} -> {args.out}: {entry['size_bytes'] / 2**20:.2f} MiB, "
          f"{len(int8.config.quantization['modules'])} int8 layers")  # fmt: skip
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("quantize", help="int8 post-training quantization of a student folder (calibrated)")
    p.add_argument("dir", help="student folder (config.json + model.safetensors)")
    p.add_argument("--out", required=True, help="folder to write the int8 student to")
    p.add_argument("--data", help="data source (zoo.data.load) for calibration and accuracy; default synthetic")
    p.add_argument("--batches", type=int, default=8, help="calibration batches (default 8)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overwrite", action="store_true", help="replace an --out folder that zoo did not write")
    p.set_defaults(func=_cmd_quantize)
