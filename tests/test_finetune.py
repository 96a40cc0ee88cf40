"""Fine-tuning a pretrained student on a tiny synthetic image dataset: new heads from the data's labels, KD from a
tiny teacher, and an output folder that loads back with a card naming the student it started from."""

import json

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image
from test_cards import make_student_folder

import zoo
from zoo.cards import write_card
from zoo.cli import main
from zoo.finetune import finetune


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """<label>/<file>.png: 3 labels x 8 images of 12x12 pixels, each label with its own pattern."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for label in ("circle", "square", "stripes"):
        (root / label).mkdir()
        for i in range(8):
            pixels = rng.integers(0, 60, (12, 12), dtype=np.uint8)
            if label == "square":
                pixels[3:9, 3:9] = 250
            elif label == "stripes":
                pixels[::3] = 250
            else:
                yy, xx = np.mgrid[:12, :12]
                pixels[(yy - 6) ** 2 + (xx - 6) ** 2 < 12] = 250
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


@pytest.fixture
def base_student(tmp_path):
    """A published-looking student: image-only, labels cat/dog/bird, card written for a hub id."""
    folder = make_student_folder(tmp_path / "base", modalities=("image",))
    write_card(folder, repo_id="distill-zoo/tiny-base")
    return folder


def test_finetune_replaces_heads_and_writes_a_loadable_student(base_student, image_data, tmp_path):
    out = finetune(str(base_student), str(image_data), tmp_path / "ft", steps=3, batch_size=8, latency_repeats=2)
    student = zoo.load(str(out))
    assert student.config.tasks == {"label": 3}
    assert student.config.id2label == {"0": "circle", "1": "square", "2": "stripes"}
    assert student.heads["label"].out_features == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"finetuned"}  # a fresh head has no meaningful "before" accuracy
    assert 0 <= metrics["models"]["finetuned"]["accuracy"] <= 1
    assert metrics["run"]["heads_replaced"] is True and len(metrics["run"]["history"]) == 3
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == ["distill-zoo/tiny-base"]
    assert card.data.datasets is None  # a local data folder is named in the text, never in the hub metadata
    assert "fine-tuned" in card.data.tags and "fine-tuned from `distill-zoo/tiny-base`" in card.text
    assert (out / "training_curves.png").exists()


def test_finetune_keeps_heads_when_labels_match_and_uses_a_teacher(tmp_path, image_data):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    base = make_student_folder(tmp_path / "base", modalities=("image",))
    student = zoo.load(str(base))
    student.config.id2label = {"0": "circle", "1": "square", "2": "stripes"}
    student.save_pretrained(base)
    teacher = tmp_path / "vit"
    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ViTForImageClassification(ViTConfig(image_size=12, patch_size=6, num_labels=3, **tiny)).save_pretrained(teacher)
    ViTImageProcessor(size={"height": 12, "width": 12}).save_pretrained(teacher)
    argv = ["finetune", str(base), "--data", str(image_data), "--out", str(tmp_path / "ft"), "--steps", "2"]
    assert main(argv + ["--batch-size", "6", "--teacher", f"image={teacher}"]) == 0
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base_student", "finetuned"}
    assert metrics["run"]["heads_replaced"] is False and metrics["run"]["teachers"] == {"image": str(teacher)}
    assert all("kd" in h for h in metrics["run"]["history"])
    assert zoo.load(str(tmp_path / "ft")).config.tasks == {"label": 3}


def test_finetune_rejects_a_teacher_with_other_labels(base_student, image_data, tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    teacher = tmp_path / "vit5"
    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ViTForImageClassification(ViTConfig(image_size=12, patch_size=6, num_labels=5, **tiny)).save_pretrained(teacher)
    ViTImageProcessor(size={"height": 12, "width": 12}).save_pretrained(teacher)
    with pytest.raises(ValueError, match=r"predicts 5 classes; the data has 3"):
        finetune(str(base_student), str(image_data), tmp_path / "ft", teachers={"image": str(teacher)}, steps=1)


def test_finetune_bad_teacher_spec(base_student, image_data, tmp_path, capsys):
    argv = ["finetune", str(base_student), "--data", str(image_data), "--teacher", "vit-without-modality"]
    assert main(argv) == 1
    assert "MODALITY=PATH" in capsys.readouterr().err


def test_finetune_offline_hub_id_is_one_clear_line(image_data, tmp_path, capsys):
    assert main(["finetune", "someone/missing-student", "--data", str(image_data), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("zoo finetune: error: cannot download 'someone/missing-student': offline")
        and err.count("\n") == 1
    )
