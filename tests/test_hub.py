"""Loading by folder, hub id and catalogue name; the catalogue and `zoo list`; `zoo push` up to the upload.

The upload itself cannot run here (no network): the tests check everything before it (the folder that would go
up is complete, valid and loads back) and that HfApi.create_repo / create_commit (upload_folder for the mixin's
push_to_hub) are called with the right arguments, through monkeypatched methods.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from test_cards import make_student_folder

import zoo
import zoo.catalogue as catalogue
from zoo.cards import write_card
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


def folder_state(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_validates_then_uploads_with_the_right_arguments(run_dir, monkeypatch, capsys):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def create_commit(self, **kwargs):
        calls["create_commit"] = kwargs
        return "https://huggingface.co/me/student/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    (run_dir / ".README.md.123.tmp").write_text("left over by an interrupted write")
    # the trainer's layout: other students in subfolders, training state that must stay local
    shutil.copytree(run_dir, run_dir.parent / "int8")
    shutil.move(run_dir.parent / "int8", run_dir / "int8")
    (run_dir / "checkpoints" / "prune").mkdir(parents=True)
    (run_dir / "checkpoints" / "prune" / "optimizer.bin").write_bytes(b"accelerate state (pickle)")
    shutil.copytree(run_dir / "int8", run_dir / "teachers" / "image")
    write_card(run_dir)
    before = folder_state(run_dir)
    assert main(["push", str(run_dir), "me/student", "--private", "--message", "first"]) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/me/student/commit/abc"
    assert folder_state(run_dir) == before  # the cards for the repo were rendered in memory
    assert calls["create_repo"] == ("me/student", {"private": True, "exist_ok": True, "repo_type": "model"})
    commit = calls["create_commit"]
    assert commit["repo_id"] == "me/student" and commit["commit_message"] == "first"
    ops = {op.path_in_repo: op for op in commit["operations"]}
    expected = ["README.md", "accuracy_vs_latency.png", "config.json", "metrics.json", "model.safetensors"]
    expected += ["int8/README.md", "int8/config.json", "int8/metrics.json", "int8/model.safetensors"]
    assert sorted(ops) == sorted(expected), sorted(ops)
    card = ModelCard(ops["README.md"].path_or_fileobj.decode())  # rendered so its usage code loads the repo
    assert 'zoo.load("me/student")' in card.text and card.data.model_name == "me/student"
    assert "- `int8/`: int8 (83.00% test accuracy;" in card.text
    assert 'int8 = zoo.load("me/student", subfolder="int8")' in card.text
    sub = ModelCard(ops["int8/README.md"].path_or_fileobj.decode())  # each student folder: its own card
    assert 'zoo.load("me/student", subfolder="int8")' in sub.text and sub.data.library_name == "distill-zoo"


def test_failed_push_leaves_the_folder_unchanged(run_dir, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    def create_repo(self, repo_id, **kwargs):
        raise HfHubHTTPError("403 Forbidden: no write access")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    write_card(run_dir)
    before = folder_state(run_dir)
    assert main(["push", str(run_dir), "someone-else/student"]) == 1
    assert folder_state(run_dir) == before  # README.md's title still the folder's, not the repo's


def test_student_push_to_hub_uploads_what_zoo_push_uploads(run_dir, monkeypatch):
    """The mixin's push_to_hub, through its generate_model_card hook: the card for the repo, metrics.json, plots."""
    from types import SimpleNamespace

    uploaded = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id))

    def upload_folder(self, *, folder_path, **kwargs):
        uploaded.update(folder_state(Path(folder_path)))
        return "https://huggingface.co/me/student/commit/def"

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    write_card(run_dir)
    before = folder_state(run_dir)
    student = zoo.load(run_dir)
    assert student.push_to_hub("me/student") == "https://huggingface.co/me/student/commit/def"
    assert {"README.md", "metrics.json", "accuracy_vs_latency.png", "config.json", "model.safetensors"} <= set(uploaded)
    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.library_name == "distill-zoo" and 'zoo.load("me/student")' in card.text
    assert json.loads(uploaded["metrics.json"]) == json.loads(before["metrics.json"])
    assert json.loads(uploaded["config.json"])["model_type"] == "distill-zoo"
    assert folder_state(run_dir) == before


def test_load_subfolder_from_a_folder_and_from_the_hub_cache(run_dir, tmp_path, monkeypatch):
    """zoo.load(repo, subfolder="int8") and zoo.load("org/name/int8") give the int8 student, offline from the cache."""
    from zoo.compress.quant import is_quantized, quantize_student

    student = zoo.load(run_dir)
    batch = student.preprocess([{"id": "x", "image": torch.rand(3, 16, 16)}])
    batch.pop("labels")
    quantize_student(student, [batch]).save_pretrained(run_dir / "int8")
    assert is_quantized(zoo.load(run_dir, subfolder="int8")) and not is_quantized(zoo.load(run_dir))
    with pytest.raises(FileNotFoundError, match="no subfolder 'hardware'"):
        zoo.load(run_dir, subfolder="hardware")
    # the layout huggingface_hub's cache gives a downloaded repo
    cache = tmp_path / "hf-cache"
    repo = cache / "models--me--student"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(run_dir, repo / "snapshots" / ("0" * 40))
    assert is_quantized(zoo.load("me/student", subfolder="int8", cache_dir=str(cache)))
    assert is_quantized(zoo.load("me/student/int8", cache_dir=str(cache)))
    assert not is_quantized(zoo.load("me/student", cache_dir=str(cache)))


def test_offline_hint_names_the_hf_command():
    with pytest.raises(ConnectionError) as e:
        zoo.load("someone/missing-student")
    assert "`hf download someone/missing-student --local-dir" in str(e.value) and "huggingface-cli" not in str(e.value)


def test_transformers_auto_classes_load_a_student_folder(run_dir):
    """After `import zoo`, transformers' AutoConfig and AutoModel read a student folder (model_type distill-zoo)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(run_dir)
    assert config.model_type == "distill-zoo" and config.modalities == ["image", "audio"]
    model = AutoModel.from_pretrained(run_dir)
    assert torch.allclose(logits(model), logits(zoo.load(run_dir)))


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
