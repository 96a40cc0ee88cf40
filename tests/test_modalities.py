"""Modality preprocessing: shapes, conversions, and clear errors on bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.modalities import collate
from zoo.modalities.audio import AudioConfig, AudioPreprocessor
from zoo.modalities.image import ImageConfig, ImagePreprocessor
from zoo.modalities.text import TextConfig, TextPreprocessor, load_tokenizer, train_wordpiece_tokenizer


def test_text_preprocess_pads_and_masks(tiny_tokenizer):
    pre = TextPreprocessor(tiny_tokenizer, TextConfig(vocab_size=512, max_length=8))
    out = pre(["one two three", None, "nine " * 20])
    assert out["input_ids"].shape == (3, 8) and out["attention_mask"].shape == (3, 8)
    assert out["text_mask"].tolist() == [True, False, True]
    assert out["attention_mask"][1].sum() == 0  # absent text is all padding
    assert out["attention_mask"][2].sum() == 8  # truncated to max_length
    assert out["input_ids"][0, 0] == tiny_tokenizer.cls_token_id


@pytest.mark.parametrize("bad, err", [("   ", "empty"), (3, "expected a str")])
def test_text_preprocess_rejects_bad_text(tiny_tokenizer, bad, err):
    pre = TextPreprocessor(tiny_tokenizer, TextConfig(vocab_size=512, max_length=8))
    with pytest.raises((ValueError, TypeError), match=err):
        pre(["ok", bad])


def test_text_vocab_too_small_is_an_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="vocab_size"):
        TextPreprocessor(tiny_tokenizer, TextConfig(vocab_size=10))


def test_tokenizer_round_trip(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok("one two")["input_ids"] == tiny_tokenizer("one two")["input_ids"]
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="no non-empty string"):
        train_wordpiece_tokenizer(["", "  "])


def test_image_conversions():
    pre = ImagePreprocessor(ImageConfig(image_size=16, in_chans=3))
    grey = np.full((8, 8), 255, dtype=np.uint8)
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 128))
    chw = torch.rand(3, 16, 16)
    out = pre([grey, rgba, chw, None])
    assert out["pixel_values"].shape == (4, 3, 16, 16)
    assert out["image_mask"].tolist() == [True, True, True, False]
    # grey repeated to three equal channels (before normalisation they are equal: check de-normalised)
    mean, std = torch.tensor(pre.config.mean).view(3, 1, 1), torch.tensor(pre.config.std).view(3, 1, 1)
    x = out["pixel_values"][0] * std + mean
    assert torch.allclose(x, torch.ones_like(x), atol=1e-5)
    # RGBA drops alpha: red stays red
    r = out["pixel_values"][1] * std + mean
    assert r[0].mean() > 0.99 and r[1].mean() < 0.01
    assert (out["pixel_values"][3] == 0).all()


def test_image_to_grey_for_one_channel_students():
    pre = ImagePreprocessor(ImageConfig(image_size=8, in_chans=1, mean=[0.0], std=[1.0]))
    rgb = np.zeros((8, 8, 3), dtype=np.float32)
    rgb[..., 1] = 1.0
    out = pre([rgb])["pixel_values"]
    assert out.shape == (1, 1, 8, 8) and torch.allclose(out, torch.full_like(out, 0.587))


@pytest.mark.parametrize(
    "bad, err",
    [
        (np.zeros((4, 4, 2), dtype=np.uint8), r"array shape \(4, 4, 2\)"),
        (np.zeros((4, 4), dtype=np.int64), "dtype int64"),
        (torch.zeros(5, 4, 4), r"tensor shape \(5, 4, 4\)"),
        ("image.png", "expected a PIL image"),
    ],
)
def test_image_bad_input(bad, err):
    pre = ImagePreprocessor(ImageConfig(image_size=8))
    with pytest.raises((ValueError, TypeError), match=err):
        pre([np.zeros((8, 8), np.uint8), bad])


def test_image_config_checks():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ImageConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="mean has 3 values"):
        ImageConfig(in_chans=1)


def _cfg():
    return AudioConfig(sample_rate=16000, clip_seconds=0.5, n_mels=16, hop_length=250, n_fft=400, patch_size=4)


def test_audio_resample_pad_crop_and_stereo():
    pre = AudioPreprocessor(_cfg())
    t = np.linspace(0, 1, 8000, dtype=np.float32)
    tone_8k = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    # 8 kHz -> 16 kHz, 1 s is cropped to 0.5 s
    assert pre.clip({"array": tone_8k, "sampling_rate": 8000}).shape == (8000,)
    # short clip zero-padded
    short = pre.clip((np.ones(100, np.float32), 16000))
    assert short.shape == (8000,) and short[100:].abs().sum() == 0
    # stereo (C, T) and (T, C) both average to mono
    stereo = np.stack([np.ones(16000), -np.ones(16000)]).astype(np.float32)
    assert pre.clip((stereo, 16000)).abs().max() == 0
    assert pre.clip((stereo.T.copy(), 16000)).abs().max() == 0
    # int16 PCM is scaled to -1..1
    pcm = (np.ones(16000) * 32767).astype(np.int16)
    assert torch.allclose(pre.clip((pcm, 16000))[:10], torch.ones(10), atol=1e-4)
    out = pre([{"array": tone_8k, "sampling_rate": 8000}, None])
    assert out["input_features"].shape == (2, 16, 32)
    assert out["audio_mask"].tolist() == [True, False]
    assert torch.isfinite(out["input_features"]).all() and (out["input_features"][1] == 0).all()


@pytest.mark.parametrize(
    "bad, err",
    [
        (np.zeros(100, np.float32), "sample rate is required"),
        ((np.zeros(0, np.float32), 16000), "empty"),
        ((np.zeros(100, np.float32), 0), "sampling_rate"),
        ((np.full(100, np.nan, np.float32), 16000), "NaN"),
        ((np.zeros((20, 30), np.float32), 16000), r"shape \(20, 30\)"),
        ({"wave": np.zeros(10)}, "'array' and 'sampling_rate'"),
    ],
)
def test_audio_bad_input(bad, err):
    pre = AudioPreprocessor(_cfg())
    with pytest.raises((ValueError, TypeError, KeyError), match=err):
        pre([bad])


def test_audio_config_checks():
    with pytest.raises(ValueError, match="must divide n_mels"):
        AudioConfig(n_mels=30, patch_size=4)


def test_collate_labels_and_missing_modalities(tiny_tokenizer, raw_samples):
    pres = {
        "text": TextPreprocessor(tiny_tokenizer, TextConfig(vocab_size=512, max_length=8)),
        "image": ImagePreprocessor(ImageConfig(image_size=16)),
        "audio": AudioPreprocessor(_cfg()),
    }
    raw_samples[3]["label"] = None
    batch = collate(raw_samples, pres)
    assert batch["labels"].tolist() == [1, 2, 3, -100]
    assert batch["text_mask"].tolist() == [True, False, False, True]
    assert batch["image_mask"].tolist() == [True, True, False, False]
    assert batch["audio_mask"].tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="sample 'e' carries none"):
        collate([{"id": "e", "label": 0}], pres)
