"""Loading by folder, hub id and catalogue name; the catalogue and `zoo list`; `zoo push` up to the upload.

The upload itself cannot run here (no network): the tests check everything before it (the folder that would go
up is complete, valid and loads back) and that HfApi.create_repo / upload_folder are called with the right
arguments, through monkeypatched methods.
"""

import json
import shutil

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from test_cards import make_student_folder

import zoo
import zoo.catalogue as catalogue
from zoo.cli import main
from zoo.publish import push_folder, validate_folder_for_push


@pytest.fixture
def run_dir(tmp_path):
    return make_student_folder(tmp_path / "run")


@pytest.fixture
def zoo_catalogue(tmp_path, monkeypatch, run_dir):
    """A catalogue in tmp_path holding one student built from the fixture run, used by zoo.load and zoo list."""
    cards = tmp_path / "model_cards"
    monkeypatch.setattr(catalogue, "CATALOGUE_PATH", cards / "catalogue.json")
    entry = catalogue.add_from_run(run_dir, "distill-zoo/tiny-test-student", cards_dir=cards)
    return cards, entry


def logits(student, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = student.preprocess([{"id": "x", "image": torch.rand(3, 16, 16, generator=g)}])
    batch.pop("labels")
    with torch.inference_mode():
        return student(**batch)


def test_load_folder(run_dir):
    student = zoo.load(str(run_dir))
    assert student.config.id2label["2"] == "bird"
    assert torch.allclose(logits(student), logits(zoo.load(run_dir)))


def test_offline_hub_id_fails_clearly():
    with pytest.raises(ConnectionError, match=r"someone/missing-student.*offline.*pass the folder path"):
        zoo.load("someone/missing-student")


def test_catalogue_entry_and_card(zoo_catalogue, run_dir):
    cards, entry = zoo_catalogue
    assert entry["name"] == "tiny-test-student" and entry["hub_id"] == "distill-zoo/tiny-test-student"
    assert entry["metrics"]["distilled"]["accuracy"] == 0.85 and entry["final_model"] == "distilled"
    saved = json.loads((cards / "catalogue.json").read_text())["students"]
    assert [s["name"] for s in saved] == ["tiny-test-student"]
    card = ModelCard.load(cards / "tiny-test-student" / "README.md")
    assert 'zoo.load("distill-zoo/tiny-test-student")' in card.text
    assert (cards / "tiny-test-student" / "accuracy_vs_latency.png").exists()
    catalogue.add_from_run(run_dir, "tiny-test-student", cards_dir=cards)  # same name again: replaced, not added
    assert len(catalogue.load_catalogue()) == 1


def test_load_catalogue_name_resolves_to_its_hub_id(zoo_catalogue, run_dir, monkeypatch):
    with pytest.raises(ConnectionError, match=r"distill-zoo/tiny-test-student.*offline"):
        zoo.load("tiny-test-student")  # offline: the catalogue name's hub id cannot be downloaded
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):  # stands in for the HF cache holding the repo
        calls.append(repo_id)
        return str(run_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    student = zoo.load("tiny-test-student")
    assert calls == ["distill-zoo/tiny-test-student"]
    assert torch.allclose(logits(student), logits(zoo.load(run_dir)))


def test_zoo_list_prints_architectures_and_published_students(zoo_catalogue, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "hybrid_tiny" in out and "hybrid_test" in out
    row = next(line for line in out.splitlines() if line.startswith("tiny-test-student"))
    assert "image+audio" in row and "label (3 classes)" in row and "95.00% -> 85.00%" in row
    assert row.split()[-1] == "distill-zoo/tiny-test-student"


def test_zoo_list_without_published_students(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(catalogue, "CATALOGUE_PATH", tmp_path / "none.json")
    catalogue.print_catalogue()
    assert "none yet" in capsys.readouterr().out


def test_push_validates_then_uploads_with_the_right_arguments(run_dir, monkeypatch, capsys):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def upload_folder(self, **kwargs):
        calls["upload_folder"] = kwargs
        return "https://huggingface.co/me/student/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    (run_dir / ".README.md.123.tmp").write_text("left over by an interrupted write")
    # the trainer's layout: other students in subfolders, training state that must stay local
    shutil.copytree(run_dir, run_dir.parent / "int8")
    shutil.move(run_dir.parent / "int8", run_dir / "int8")
    (run_dir / "checkpoints" / "prune").mkdir(parents=True)
    (run_dir / "checkpoints" / "prune" / "optimizer.bin").write_bytes(b"accelerate state (pickle)")
    shutil.copytree(run_dir / "int8", run_dir / "teachers" / "image")
    assert main(["push", str(run_dir), "me/student", "--private", "--message", "first"]) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/me/student/commit/abc"
    assert calls["create_repo"] == ("me/student", {"private": True, "exist_ok": True, "repo_type": "model"})
    up = calls["upload_folder"]
    assert up["repo_id"] == "me/student" and up["folder_path"] == str(run_dir) and up["commit_message"] == "first"
    expected = ["README.md", "accuracy_vs_latency.png", "config.json", "metrics.json", "model.safetensors"]
    expected += ["int8/config.json", "int8/metrics.json", "int8/model.safetensors"]
    assert sorted(up["allow_patterns"]) == sorted(expected), up["allow_patterns"]
    card = ModelCard.load(run_dir / "README.md")  # regenerated so its usage code loads the repo
    assert 'zoo.load("me/student")' in card.text and card.data.model_name == "me/student"
    assert "- `int8/`: int8 (83.00% test accuracy)" in card.text and 'snapshot_download("me/student")' in card.text


def test_push_offline_fails_clearly(run_dir):
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE"):
        push_folder(run_dir, "me/student")


def test_validate_folder_for_push_rejects_bad_folders(run_dir):
    from zoo.cards import write_card

    (run_dir / "README.md").write_text("---\nlibrary_name: other\n---\n# some other card\n")
    with pytest.raises(ValueError, match="not a distill-zoo model card"):
        validate_folder_for_push(run_dir)
    (run_dir / "README.md").unlink()
    with pytest.raises(FileNotFoundError, match="zoo card"):
        validate_folder_for_push(run_dir)
    write_card(run_dir)
    assert "model.safetensors" in validate_folder_for_push(run_dir)
    (run_dir / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        validate_folder_for_push(run_dir)
    (run_dir / "pytorch_model.bin").unlink()
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors"):
        validate_folder_for_push(run_dir)
