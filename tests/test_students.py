"""The hybrid student family, parametrized over the registry: forward/backward, masks, save/load, bad checkpoints."""

import json

import pytest
import torch

import zoo
from zoo.students import HybridConfig, HybridStudent

# Documented sizes (students/variants.py, README): parameters for text+image+audio and 10 classes.
PARAM_RANGES = {
    "hybrid_test": (0.02e6, 0.1e6),
    "hybrid_tiny": (1e6, 3e6),
    "hybrid_small": (5e6, 12e6),
    "hybrid_base": (15e6, 35e6),
}
ALL = ["text", "image", "audio"]


def test_registry_lists_every_size():
    assert set(zoo.list_models()) == set(PARAM_RANGES)
    with pytest.raises(KeyError, match="hybrid_tiny"):
        zoo.create_student("hybrid_tinny")
    with pytest.raises(TypeError, match="unknown arguments"):
        zoo.create_student("hybrid_test", embed_dimension=3)


@pytest.mark.parametrize("name", sorted(PARAM_RANGES))
def test_param_counts_as_documented(name):
    with torch.device("meta"):  # no memory or init cost for the big ones
        n = zoo.create_student(name, modalities=ALL, num_classes=10).num_params()
    lo, hi = PARAM_RANGES[name]
    assert lo <= n <= hi, f"{name}: {n / 1e6:.2f}M params, documented {lo / 1e6}-{hi / 1e6}M"


def _student(name, modalities, tokenizer):
    torch.manual_seed(0)
    kw = {"tokenizer": tokenizer} if "text" in modalities else {}
    return zoo.create_student(name, modalities=modalities, num_classes=5, **kw)


def _samples_for(modalities, raw_samples):
    """Keep only the modalities the student has; drop samples left with none."""
    out = []
    for s in raw_samples:
        kept = {k: v for k, v in s.items() if k in ("id", "label") or k in modalities}
        if any(kept.get(m) is not None for m in modalities):
            out.append(kept)
    return out


@pytest.mark.parametrize("name", ["hybrid_test", "hybrid_tiny"])
@pytest.mark.parametrize("modalities", [["text"], ["image"], ["audio"], ALL])
def test_forward_backward(name, modalities, tiny_tokenizer, raw_samples):
    model = _student(name, modalities, tiny_tokenizer)
    model.train()
    batch = model.preprocess(_samples_for(modalities, raw_samples))
    labels = batch.pop("labels")
    logits = model(**batch)
    assert logits.shape == (len(labels), 5)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, labels).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_absent_modality_does_not_change_a_sample(tiny_tokenizer, raw_samples):
    """A sample's logits depend only on what it carries: the other rows' modalities are masked out."""
    model = _student("hybrid_test", ALL, tiny_tokenizer).eval()
    text_only = {"id": "t", "text": "one two three", "label": 0}
    with torch.no_grad():
        alone = model(**{k: v for k, v in model.preprocess([text_only]).items() if k != "labels"})
        mixed_batch = model.preprocess([text_only] + raw_samples)
        mixed_batch.pop("labels")
        mixed = model(**mixed_batch)
    torch.testing.assert_close(alone[0], mixed[0], atol=1e-5, rtol=1e-5)


def test_forward_intermediates_and_grids(tiny_tokenizer, raw_samples):
    model = _student("hybrid_tiny", ALL, tiny_tokenizer).eval()
    batch = model.preprocess(raw_samples)
    batch.pop("labels")
    feats, inter = model.forward_intermediates([0, -1], **batch)
    assert feats.shape == (4, model.config.embed_dim)
    assert len(inter) == 2 and set(inter[0]) == set(ALL)
    for m in ALL:
        h, w = model.token_grid(m)
        assert inter[-1][m].shape == (4, h * w, model.config.embed_dim)
    assert len(model.forward_intermediates(2, intermediates_only=True, **batch)) == 2
    with pytest.raises(IndexError, match="out of range"):
        model.forward_intermediates([99], **batch)
    torch.testing.assert_close(feats, model.forward_features(**batch))


def test_non_uniform_widths_from_config_alone(tmp_path, raw_samples):
    """A pruned-looking student (different width per block) is rebuilt from config.json alone."""
    cfg = HybridConfig(
        modalities=["image", "audio"],
        tasks={"label": 3, "speaker": 2},
        embed_dim=24,
        conv_hidden=[40, 24],
        attn_heads=[3, 1, 2],
        head_dim=8,
        mlp_hidden=[48, 16, 32],
        image={"image_size": 16, "patch_size": 4, "stem_channels": 8},
        audio={"n_mels": 16, "clip_seconds": 0.5, "hop_length": 250, "patch_size": 4, "stem_channels": 8},
    )
    model = HybridStudent(cfg).eval()
    assert model.conv_blocks[0].dw.weight.shape[0] == 40 and model.attn_blocks[1].attn.qkv.out_features == 3 * 8
    model.save_pretrained(tmp_path)
    again = HybridStudent.from_pretrained(tmp_path)
    assert again.config == cfg
    batch = model.preprocess(_samples_for(["image", "audio"], raw_samples))
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch), again(**batch), rtol=0, atol=0)
        assert again(task="speaker", **batch).shape[1] == 2


def test_activation_is_in_the_config_and_old_configs_stay_gelu(tmp_path):
    relu = zoo.create_student("hybrid_test", modalities=ALL, num_classes=3)
    assert relu.config.act == "relu"
    acts = {type(m).__name__ for m in relu.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.GELU))}
    assert acts == {"ReLU"}  # conv blocks, MLPs and conv stems alike
    relu.save_pretrained(tmp_path / "relu")
    assert json.loads((tmp_path / "relu" / "config.json").read_text())["act"] == "relu"
    assert zoo.load(str(tmp_path / "relu")).config.act == "relu"
    # a config.json written before the key existed is a GELU student, as it was trained
    cfg = json.loads((tmp_path / "relu" / "config.json").read_text())
    del cfg["act"]
    gelu = HybridStudent(cfg)
    assert gelu.config.act == "gelu"
    assert not any(isinstance(m, torch.nn.ReLU) for m in gelu.modules())
    assert sum(isinstance(m, torch.nn.GELU) for m in gelu.modules()) == sum(
        isinstance(m, torch.nn.ReLU) for m in relu.modules()
    )
    with pytest.raises(ValueError, match="act 'rleu'.*'relu'"):
        zoo.create_student("hybrid_test", act="rleu")


@pytest.mark.parametrize("modalities", [["image"], ALL])
def test_save_load_identical_outputs(tmp_path, modalities, tiny_tokenizer, raw_samples):
    model = _student("hybrid_test", modalities, tiny_tokenizer).eval()
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    assert ("tokenizer.json" in files) == ("text" in modalities)
    assert not any(n.endswith((".bin", ".pt", ".pth", ".tmp")) for n in files)
    loaded = zoo.load(str(tmp_path))
    samples = _samples_for(modalities, raw_samples)
    with torch.no_grad():
        a = model(**{k: v for k, v in model.preprocess(samples).items() if k != "labels"})
        b = loaded(**{k: v for k, v in loaded.preprocess(samples).items() if k != "labels"})
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture
def saved(tmp_path):
    model = zoo.create_student("hybrid_test", modalities=["image"], num_classes=3)
    model.save_pretrained(tmp_path)
    return tmp_path


def test_truncated_weights_are_a_clear_error(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="model.safetensors is not a valid safetensors file"):
        zoo.load(str(saved))


def test_tampered_header_is_a_clear_error(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xff\xff\xff"  # garbage in the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        zoo.load(str(saved))


def test_config_that_does_not_match_weights(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["mlp_hidden"] = [32]
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"tensor 'attn_blocks.0.mlp.fc1.(weight|bias)' has shape"):
        zoo.load(str(saved))
    cfg["attn_heads"], cfg["mlp_hidden"] = [2, 2], [64, 64]
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing keys"):
        zoo.load(str(saved))


def test_unknown_config_key_and_missing_files(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["embed_dimm"] = 3
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unknown keys \['embed_dimm'\]"):
        zoo.load(str(saved))
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['model.safetensors'\]"):
        zoo.load(str(saved))


def test_pickle_is_never_loaded(saved):
    (saved / "model.safetensors").rename(saved / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        zoo.load(str(saved))


def test_hub_id_offline_says_how_to_pass_a_folder(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="pass the folder path instead"):
        zoo.load("distill-zoo/not-a-real-student")


def test_save_is_atomic_and_keeps_existing_card(saved):
    (saved / "README.md").write_text("my card")
    model = zoo.load(str(saved))
    model.save_pretrained(saved)
    assert (saved / "README.md").read_text() == "my card"
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".save-")]


def test_text_embedding_sized_to_the_tokenizer(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    model = zoo.create_student("hybrid_test", modalities=["text"], tokenizer=str(tmp_path))  # a teacher's folder
    assert model.config.text.vocab_size == 128 and model.config.text.vocab_size >= len(tiny_tokenizer)
    assert (
        zoo.create_student(
            "hybrid_test", modalities=["text"], tokenizer=tiny_tokenizer, text={"vocab_size": 300}
        ).config.text.vocab_size
        == 300
    )
    with pytest.raises(ValueError, match="vocab_size"):
        zoo.create_student("hybrid_test", modalities=["text"], tokenizer=tiny_tokenizer, text={"vocab_size": 50})


def test_an_image_only_student_skips_the_masks_and_answers_as_the_masked_path(monkeypatch, tiny_tokenizer):
    """One unpadded modality: no key mask, no re-zeroing, a plain mean; the same outputs (absent rows too) as the
    masked path every other student takes."""
    import numpy as np

    import zoo
    from zoo.students.hybrid import HybridStudent

    torch.manual_seed(0)
    m = zoo.create_student("hybrid_test", modalities=["image"], num_classes=3).eval()
    rng = np.random.default_rng(0)
    x = m.preprocess([{"image": rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)} for _ in range(4)])
    x.pop("labels", None)
    x["image_mask"][1] = False
    assert m._embed(x)[3] is True
    with torch.no_grad():
        dense = m(**x)
        orig = HybridStudent._embed
        monkeypatch.setattr(HybridStudent, "_embed", lambda self, inputs: (*orig(self, inputs)[:3], False))
        masked = m(**x)
    torch.testing.assert_close(dense, masked, rtol=1e-6, atol=1e-6)
    both = zoo.create_student("hybrid_test", modalities=["text", "image"], num_classes=3, tokenizer=tiny_tokenizer)
    y = both.preprocess([{"image": np.zeros((12, 12, 3), np.uint8), "text": "one two"}])
    assert orig(both, y)[3] is False  # two modalities in the batch (and text pads): the masked path
    y.pop("pixel_values")
    assert orig(both, y)[3] is False
