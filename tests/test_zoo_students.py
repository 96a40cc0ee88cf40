"""The zoo's own students: weights shipped in model_cards/ load offline with an empty HF cache, `zoo list` shows them,
and `zoo finetune NAME --data CSV` starts from the shipped body with a fresh head for the data's labels.

The pretrained student is a tiny text ``hybrid_test`` with a task-agnostic ``embedding`` head (as
``scripts/pretrain_text.py`` writes ``hybrid-tiny-text``), shipped in a temporary catalogue.
"""

import csv
import fnmatch
import json
from pathlib import Path
from unittest import mock

import huggingface_hub
import pytest
import tomllib
import torch
from huggingface_hub.errors import RepositoryNotFoundError

import zoo
import zoo.catalogue as catalogue
from zoo.cli import main
from zoo.finetune import finetune

NAME = "hybrid-test-text"
WORDS = {"low": ["zero one two", "one two three"], "high": ["seven eight nine", "six seven eight"]}


def _trunk(student) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in student.state_dict().items() if not k.startswith("heads.")}


@pytest.fixture
def pretrained(tmp_path, tiny_tokenizer):
    """A 'pretrained' text student: an embedding head of 32 outputs and a body unlike any fresh initialisation."""
    torch.manual_seed(123)
    student = zoo.create_student("hybrid_test", modalities=["text"], tasks={"embedding": 32}, tokenizer=tiny_tokenizer)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5)
    folder = tmp_path / "pretrain-out"
    student.save_pretrained(folder)
    (folder / "pretraining.json").write_text(
        json.dumps({"teacher": "tiny", "teacher_id": "org/tiny-teacher", "steps": 0, "held_out_cosine": 0.5})
    )
    results = {"probe": {"accuracy": 0.61, "note": "frozen student + LR"}, "finetuned": {"accuracy": 0.7}}
    (folder / "evaluation.json").write_text(json.dumps({"task": "words", "command": "x --y", "results": results}))
    return folder


@pytest.fixture
def shipped(tmp_path, monkeypatch, pretrained):
    """The pretrained folder shipped in a temporary catalogue; an empty HF cache; no hub call allowed."""
    cards = tmp_path / "model_cards"
    monkeypatch.setattr(catalogue, "CATALOGUE_PATH", cards / "catalogue.json")
    entry = catalogue.add_from_run(pretrained, f"distill-zoo/{NAME}", ship=True, cards_dir=cards)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_hub(*args, **kwargs):
        raise AssertionError("offline, a shipped student must not go through the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    return cards, entry


@pytest.fixture
def label_csv(tmp_path):
    path = tmp_path / "words.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(20):
            for label, texts in WORDS.items():
                w.writerow([texts[i % 2], label])
    return path


def test_shipped_entry_loads_offline_with_an_empty_cache(shipped, pretrained, forbid_unpickling):
    cards, entry = shipped
    assert entry["folder"] == NAME and entry["card"].endswith(f"{NAME}/README.md")
    card = huggingface_hub.ModelCard.load(cards / NAME / "README.md")  # from pretraining.json + evaluation.json
    assert card.data.base_model == ["org/tiny-teacher"] and card.data.library_name == "distill-zoo"
    assert f'zoo.load("{NAME}")' in card.text and "| probe | 61.00% |" in card.text and "`x --y`" in card.text
    assert entry["metrics"]["finetuned"]["accuracy"] == 0.7 and entry["final_model"] == "finetuned"
    assert {p.name for p in (cards / NAME).iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    forbid_unpickling("loading a shipped student")
    student = zoo.load(NAME)
    assert student.config.tasks == {"embedding": 32} and student.tokenizer is not None
    assert student.source_folder == cards / NAME
    expected = zoo.load(str(pretrained)).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in student.state_dict().items())
    assert not list((Path(huggingface_hub.constants.HF_HUB_CACHE)).glob("*"))  # nothing went into the cache


def test_shipped_entry_online_prefers_the_hub_and_falls_back_to_the_package(shipped, tmp_path, monkeypatch):
    cards, _ = shipped
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def not_uploaded(repo_id, **kwargs):
        calls.append(repo_id)
        raise RepositoryNotFoundError(f"{repo_id} not found", response=mock.Mock(status_code=404, headers={}))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_uploaded)
    assert zoo.load(NAME).source_folder == cards / NAME and calls == [f"distill-zoo/{NAME}"]

    hub_copy = tmp_path / "hub-copy"
    zoo.load(NAME).save_pretrained(hub_copy)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(hub_copy))
    assert zoo.load(NAME).source_folder == hub_copy  # once uploaded, the hub id is used


def test_zoo_list_shows_the_shipped_student(shipped, capsys):
    assert main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert "text" in row.split() and "embedding (32 outputs)" in row and "shipped" in row
    assert " MB" in row and row.split()[-1] == f"distill-zoo/{NAME}"


def test_finetune_a_shipped_name_gets_a_label_head_on_the_pretrained_body(shipped, pretrained, label_csv, tmp_path):
    out = finetune(NAME, str(label_csv), tmp_path / "ft", steps=1, lr=1e-6, batch_size=8, latency_repeats=1)
    student = zoo.load(str(out))
    assert student.config.tasks == {"label": 2} and student.config.id2label == {"0": "high", "1": "low"}
    assert list(student.heads) == ["label"] and student.heads["label"].out_features == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["heads_replaced"] is True and metrics["run"]["base_model"] == f"distill-zoo/{NAME}"
    assert (out / "README.md").exists() and (out / "tokenizer.json").exists()

    tuned, start = _trunk(student), _trunk(zoo.load(str(pretrained)))
    torch.manual_seed(0)  # what finetune seeds: a blank student of the same architecture
    blank = _trunk(zoo.create_student("hybrid_test", modalities=["text"], num_classes=2, text=student.config.text))
    assert set(tuned) == set(start) == set(blank)
    assert max((tuned[k] - start[k]).abs().max().item() for k in tuned) < 1e-4  # one step at lr 1e-6
    assert min((tuned[k] - blank[k]).abs().max().item() for k in tuned if tuned[k].numel() > 1) > 0.1


def test_zoo_finetune_cli_with_a_teacher_and_skip_bad(shipped, label_csv, tmp_path, tiny_tokenizer, capsys):
    """KD from a text teacher predicting the data's labels, through the distillation loop (metrics.jsonl)."""
    from transformers import BertConfig, BertForSequenceClassification

    teacher = tmp_path / "bert"
    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config = BertConfig(vocab_size=len(tiny_tokenizer), num_labels=2, max_position_embeddings=64, **tiny)
    config.id2label, config.label2id = {0: "high", 1: "low"}, {"high": 0, "low": 1}
    BertForSequenceClassification(config).save_pretrained(teacher)
    tiny_tokenizer.save_pretrained(teacher)
    rows = label_csv.read_text().splitlines()
    label_csv.write_text("\n".join([*rows, ",low"]) + "\n")  # a row with no text: a problem the reader reports
    out = tmp_path / "ft"
    argv = ["finetune", NAME, "--data", str(label_csv), "--out", str(out), "--steps", "2", "--batch-size", "8"]
    argv += ["--teacher", f"text={teacher}"]
    assert main(argv) == 1 and "--skip-bad" in capsys.readouterr().err
    assert main([*argv, "--skip-bad"]) == 0
    assert zoo.load(str(out)).config.tasks == {"label": 2}
    history = json.loads((out / "metrics.json").read_text())["run"]["history"]
    assert [h["step"] for h in history] == [1, 2] and all("kd" in h for h in history)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in logged} == {"finetune"} and {"train", "eval"} <= {r["event"] for r in logged}


def test_reset_head_is_public_and_keeps_the_trunk():
    student = zoo.create_student("hybrid_test", modalities=["image"], tasks={"embedding": 8})
    trunk = _trunk(student)
    student.reset_head({"label": 3}, id2label={"0": "a", "1": "b", "2": "c"})
    assert student.config.tasks == {"label": 3} and student.config.id2label["2"] == "c"
    assert all(torch.equal(v, trunk[k]) for k, v in _trunk(student).items())
    with pytest.raises(ValueError, match="id2label has 2 entries"):
        student.reset_head({"label": 3}, id2label={"0": "a", "1": "b"})


def test_package_data_carries_shipped_folders():
    """A wheel must carry every file a shipped folder holds (pyproject's package-data patterns)."""
    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = patterns["zoo.model_cards"]
    for name in (*catalogue.SHIPPED_FILES, *catalogue.SHIPPED_EXTRA, "pretraining.json", "evaluation.json"):
        assert any(fnmatch.fnmatch(f"{NAME}/{name}", p) for p in patterns), name
    for entry in catalogue.load_catalogue():  # the real catalogue: every entry loads (shipped or on the hub)
        if entry.get("folder"):
            folder = catalogue.shipped_folder(entry)
            for f in folder.iterdir():
                assert any(fnmatch.fnmatch(f"{entry['folder']}/{f.name}", p) for p in patterns), f


@pytest.mark.slow
def test_distill_starts_from_a_pretrained_student_and_its_baseline_from_a_blank_copy(
    shipped, pretrained, label_csv, tmp_path
):
    """student_init=auto picks the shipped student of this architecture and modalities: the distilled student is its
    trunk (with its tokenizer) under a fresh label head; the raw-student baseline has the same architecture and
    tokenizer, freshly initialised."""
    from zoo.train.run import distill

    overrides = [
        "student_init=auto", "student=hybrid_test", "data.batch_size=8", "train.latency_repeats=1",
        "stages.pretrain=null", "stages.soft_distill.steps=2", "stages.soft_distill.lr=1e-9",
        "stages.mixed_distill=null", "stages.prune=null", "stages.quant_finetune=null", "stages.hardware_adapt=null",
        "teacher_training.steps=2", "teacher_training.hidden_size=32", "teacher_training.num_layers=1",
        "teacher_training.num_heads=2", "teacher_training.intermediate_size=64", "data.label_fraction=1.0",
    ]  # fmt: skip
    out = tmp_path / "run"
    distill("quickstart", out, data=str(label_csv), overrides=overrides, progress=False)
    assert f"student_init: auto -> {NAME}" in (out / "run.log").read_text()
    distilled, raw = zoo.load(str(out)), zoo.load(str(out / "raw_student"))
    start = _trunk(zoo.load(str(pretrained)))
    assert distilled.config.tasks == {"label": 2} and raw.config.tasks == {"label": 2}
    assert distilled.tokenizer.get_vocab() == raw.tokenizer.get_vocab() == zoo.load(NAME).tokenizer.get_vocab()
    tuned, blank = _trunk(distilled), _trunk(raw)
    assert set(tuned) == set(start) == set(blank)
    assert max((tuned[k] - start[k]).abs().max().item() for k in tuned) < 1e-4  # two steps at lr 1e-9
    assert min((blank[k] - start[k]).abs().max().item() for k in blank if blank[k].numel() > 1) > 0.1


def test_student_init_names_a_student_or_is_refused():
    from zoo.recipe import load_recipe

    with pytest.raises(ValueError, match="student_init="):
        load_recipe("user", ["student_init=no-such-student"])


def test_auto_init_finds_the_shipped_student_for_an_architecture_and_its_modalities(shipped):
    assert catalogue.pretrained_for("hybrid_test", ["text"]) == NAME
    assert catalogue.pretrained_for("hybrid_test", ["text", "image"]) is None  # it has no image stem
    assert catalogue.pretrained_for("hybrid_tiny", ["text"]) is None  # this temporary catalogue holds no such one


def test_the_real_catalogue_ships_hybrid_tiny_text_for_auto_init():
    assert catalogue.pretrained_for("hybrid_tiny", ["text"]) == "hybrid-tiny-text"


def test_an_image_student_card_speaks_of_images(tmp_path):
    """The card follows the modality: the usage example, the data files and the limits come from the script's record."""
    from zoo.pretrained_card import build_pretrained_card

    torch.manual_seed(0)
    student = zoo.create_student("hybrid_test", modalities=["image"], tasks={"embedding": 16})
    folder = tmp_path / "image-student"
    student.save_pretrained(folder)
    record = {
        "teacher": "a tiny CNN",
        "steps": 3,
        "settings": {"teacher_size": 64, "teacher_runtime": "ort-fp32", "epochs": 1},
        "example_input": {"image": "shirt.png"},
        "limitations": ["Grey clothing images only."],
    }
    (folder / "pretraining.json").write_text(json.dumps(record))
    text = str(build_pretrained_card(folder, name="distill-zoo/image-student"))
    assert 'student.preprocess([{"image": "shirt.png"}])' in text and "16 numbers per image" in text
    assert "--data my_images.csv --teacher image=TEACHER_DIR" in text and "teacher at 64 px" in text
    assert "- Grey clothing images only." in text and "Images are resized to 16 x 16 pixels." in text
    assert "tokens" not in text and "ONNX Runtime fp32" in text


def test_a_multimodal_student_inherits_both_students_and_its_card_and_entry_show_each_task(
    tmp_path, tiny_tokenizer, monkeypatch
):
    """scripts/pretrain_multimodal.inherit: text in, the text student's embedding out (its stem, trunk and head); the
    image stem and head are the image student's. The card and the catalogue entry carry one evaluation per task."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from benchmarks.pretrained_students import write_evaluation
    from scripts.pretrain_multimodal import HEADS, inherit
    from zoo.pretrained_card import build_pretrained_card

    torch.manual_seed(0)
    image_cfg = {"image_size": 16, "patch_size": 8, "in_chans": 3}
    text = zoo.create_student("hybrid_test", modalities=["text"], tasks={"embedding": 12}, tokenizer=tiny_tokenizer)
    image = zoo.create_student("hybrid_test", modalities=["image"], tasks={"embedding": 20}, image=image_cfg)
    both = zoo.create_student("hybrid_test", modalities=["text", "image"], tokenizer=tiny_tokenizer, image=image_cfg,
                              tasks={HEADS["text"]: 12, HEADS["image"]: 20})  # fmt: skip
    assert inherit(both, text, image)["image"] > 0
    text.eval(), image.eval(), both.eval()
    x = text.preprocess([{"text": "zero one two"}])
    x.pop("labels", None)
    with torch.no_grad():
        torch.testing.assert_close(both.forward_head(both.forward_features(**x), HEADS["text"]), text(**x))
    torch.testing.assert_close(both.heads[HEADS["image"]].weight, image.heads["embedding"].weight)
    torch.testing.assert_close(both.stems["image"].state_dict(), image.stems["image"].state_dict())

    folder = tmp_path / "mm"
    both.save_pretrained(folder)
    record = {"teacher": {"text": "tiny text", "image": "tiny cnn"}, "teacher_id": ["org/t", "org/i"],
              "held_out_cosine": {"text": 0.8, "image": 0.7},
              "corpus": {"text": {"name": "words", "rows": 9}, "image": {"name": "pics", "rows": 7}},
              "initialised_from": {"text": "a", "image": "b"},
              "example_input": {"text": "x", "image": "y.png"}}  # fmt: skip
    (folder / "pretraining.json").write_text(json.dumps(record))
    for task in ("words", "pics", "words"):  # a rerun on a task replaces that task's numbers
        ev = {"student": "mm", "task": task, "command": f"c {task}", "results": {"probe": {"accuracy": 0.5}}}
        write_evaluation(folder / "evaluation.json", ev)
    assert [e["task"] for e in json.loads((folder / "evaluation.json").read_text())["evaluations"]] == ["pics", "words"]
    card = str(build_pretrained_card(folder, name="distill-zoo/mm"))
    assert "What it is worth on words" in card and "What it is worth on pics" in card
    assert "text corpus | words; 9 rows" in card and "image corpus | pics; 7 rows" in card
    assert 'task="embedding_image")  # 20 numbers, pretrained on images' in card and "text: 0.8; image: 0.7" in card
    cards = tmp_path / "model_cards"
    monkeypatch.setattr(catalogue, "CATALOGUE_PATH", cards / "catalogue.json")
    entry = catalogue.add_from_run(folder, "distill-zoo/mm", ship=True, cards_dir=cards)
    assert sorted(entry["metrics"]) == ["pics/probe", "words/probe"] and entry["task"] in HEADS.values()
    assert catalogue.pretrained_for("hybrid_test", ["image", "text"], cards / "catalogue.json") == "mm"
