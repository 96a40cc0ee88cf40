"""Teacher-output cache: cached == online, top-k + rest-logsumexp at any temperature, invalidation, resume after
an interruption, augmentation seeds, lookups."""

from __future__ import annotations

import functools
import json
import os
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.modalities.text import train_wordpiece_tokenizer
from zoo.teachers import (
    TeacherCache,
    TeacherSet,
    augmented_view,
    bucket_log_probs,
    compress_logits,
    expand_logits,
    kd_target,
    load_teacher,
)

WORDS = "the cat sat on a mat dog ran in park birds sing at dawn quick brown fox".split()
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


@functools.cache
def _tokenizer():
    return train_wordpiece_tokenizer([" ".join(WORDS)] * 4, vocab_size=120)


def save_classifier(folder, num_labels=3, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = BertConfig(vocab_size=len(tok), max_position_embeddings=32, num_labels=num_labels, **TINY)
    BertForSequenceClassification(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


def dataset(n=23, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9))))
        rows.append({"id": f"s{i}", "text": None if i % 7 == 3 else text, "label": i % 3})
    return rows


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("t"))


def _counting(teacher, interrupt_after=None):
    """Count the teacher's batches; raise KeyboardInterrupt on batch ``interrupt_after + 1``."""
    calls = []
    original = teacher.forward_inputs

    def forward_inputs(*args, **kwargs):
        if interrupt_after is not None and len(calls) >= interrupt_after:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kwargs)

    teacher.forward_inputs = forward_inputs
    return calls


def test_cached_equals_online(teacher_dir, tmp_path, capsys):
    teacher = load_teacher(teacher_dir)
    data = dataset()
    cache = TeacherCache(tmp_path, teacher, data, features=["layer.1"], shard_size=8).precompute(batch_size=4)
    assert "teacher cache" not in capsys.readouterr().err  # progress bars show on a terminal only, not in a log
    files = sorted(os.listdir(cache.path))
    assert files == ["manifest.json"] + [f"shard-0000{i}.safetensors" for i in range(3)]
    cached = cache.as_teacher()
    assert cached.fingerprint == teacher.fingerprint and cached.num_classes == 3 and cached.format["logits"] == "full"
    batch = [data[i] for i in (20, 3, 0, 9, 15)]  # across shards, one without text
    online = teacher(batch, layers=["layer.1"], pool=True)
    out = cached(batch)
    assert out.mask.tolist() == [True, False, True, True, True]
    torch.testing.assert_close(out.logits, online.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.embeds, online.embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.features["layer.1"], online.features["layer.1"], atol=1e-5, rtol=1e-5)
    # Opening the folder alone (no teacher, no dataset) gives the same lookups.
    torch.testing.assert_close(TeacherCache.open(cache.path).lookup(["s20"]).logits, out.logits[:1])
    # A cached teacher stands in a TeacherSet like an online one.
    torch.testing.assert_close(TeacherSet({"text": cached})(batch)["text"].logits, out.logits)
    with pytest.raises(KeyError, match="'nope'"):
        cached.lookup(["s1", "nope"])
    with pytest.raises(ValueError, match="layer.0"):
        cached(batch, layers=["layer.0"])


def test_lookup_is_fast(teacher_dir, tmp_path):
    cache = TeacherCache(tmp_path, load_teacher(teacher_dir), dataset(), shard_size=8).precompute(progress=False)
    cached = cache.as_teacher()
    ids = [f"s{i}" for i in range(0, 23, 2)]
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        cached.lookup(ids)
        times.append(time.perf_counter() - t0)
    assert sorted(times)[25] < 0.005  # a fraction of any training step


def test_topk_storage_and_temperature(tmp_path):
    teacher = load_teacher(save_classifier(tmp_path / "t50", num_labels=50))
    data = dataset(9)
    cache = TeacherCache(tmp_path / "c", teacher, data, max_full_classes=16, topk=5).precompute(progress=False)
    cached = cache.as_teacher()
    assert cached.format["logits"] == "topk" and cached.format["topk"] == 5
    raw = cached.lookup_raw(["s0", "s1"])
    assert set(raw) >= {"topk_values", "topk_indices", "rest_lse"} and "logits" not in raw
    online = teacher([data[0], data[1]]).logits
    # At T = 1 the reconstruction is exact on the top-k and on the rest's total mass.
    p, q = online.softmax(-1), cached.lookup(["s0", "s1"]).logits.softmax(-1)
    idx = raw["topk_indices"]
    torch.testing.assert_close(q.gather(-1, idx), p.gather(-1, idx))
    torch.testing.assert_close(1 - q.gather(-1, idx).sum(-1), 1 - p.gather(-1, idx).sum(-1))
    # At T = 4 the truth lies between the bucket (lower) and spread (upper) estimates of the rest mass.
    true_rest = 1 - F.softmax(online / 4, -1).gather(-1, idx).sum(-1)
    spread = cached.kd_target(["s0", "s1"], 4.0)
    bucket = cached.kd_target(["s0", "s1"], 4.0, rest="bucket")
    assert spread.shape == (2, 50) and bucket.shape == (2, 6)
    torch.testing.assert_close(spread.sum(-1), torch.ones(2))
    torch.testing.assert_close(bucket.sum(-1), torch.ones(2))
    spread_rest = 1 - spread.gather(-1, idx).sum(-1)
    assert torch.all(bucket[:, -1] <= true_rest + 1e-6) and torch.all(true_rest <= spread_rest + 1e-6)
    # The student side of a bucket target sums to 1 too.
    student = torch.randn(2, 50)
    torch.testing.assert_close(bucket_log_probs(student, idx, 4.0).exp().sum(-1), torch.ones(2))


def test_compress_expand_roundtrip():
    logits = torch.randn(4, 10)
    c = compress_logits(logits, 3)
    dense = expand_logits(c["topk_values"], c["topk_indices"], c["rest_lse"], 10)
    torch.testing.assert_close(torch.logsumexp(dense, -1), torch.logsumexp(logits, -1))
    torch.testing.assert_close(
        kd_target(c["topk_values"], c["topk_indices"], c["rest_lse"], 10, temperature=1.0).gather(
            -1, c["topk_indices"]
        ),
        logits.softmax(-1).gather(-1, c["topk_indices"]),
    )
    # k = C: the dense logits are the logits.
    full = compress_logits(logits, 10)
    torch.testing.assert_close(expand_logits(full["topk_values"], full["topk_indices"], full["rest_lse"], 10), logits)


def test_changed_teacher_or_preprocessing_invalidates(teacher_dir, tmp_path):
    data = dataset(10)
    first = TeacherCache(tmp_path, load_teacher(teacher_dir), data, shard_size=4).precompute(progress=False)
    before = {f: os.path.getmtime(os.path.join(first.path, f)) for f in os.listdir(first.path)}
    # The same teacher again: same key, nothing recomputed.
    same = load_teacher(teacher_dir)
    calls = _counting(same)
    again = TeacherCache(tmp_path, same, data, shard_size=4)
    assert again.path == first.path and again.complete
    again.precompute(progress=False)
    assert calls == []

    changed = load_teacher(save_classifier(tmp_path / "retrained", seed=5))
    calls = _counting(changed)
    new = TeacherCache(tmp_path, changed, data, shard_size=4).precompute(batch_size=4, progress=False)
    assert new.path != first.path and len(calls) == 3
    torch.testing.assert_close(new.lookup(["s0"]).logits, changed([data[0]]).logits, atol=1e-5, rtol=1e-5)

    shorter = load_teacher(teacher_dir, max_length=4)  # a preprocessing change
    pre = TeacherCache(tmp_path, shorter, data, shard_size=4)
    assert pre.path not in (first.path, new.path) and not pre.complete
    # The old cache is untouched and still answers with the old teacher's outputs.
    assert before == {f: os.path.getmtime(os.path.join(first.path, f)) for f in os.listdir(first.path)}
    torch.testing.assert_close(first.lookup(["s0"]).logits, same([data[0]]).logits, atol=1e-5, rtol=1e-5)
    # Another dataset (same ids, other texts) is another key too.
    other = [dict(r, text=None if r["text"] is None else r["text"] + " fox") for r in data]
    assert TeacherCache(tmp_path, same, other, shard_size=4).path != first.path


def test_interrupted_precompute_resumes(teacher_dir, tmp_path):
    data = dataset(23)
    teacher = load_teacher(teacher_dir)
    _counting(teacher, interrupt_after=2)  # batch_size = shard_size: shards 0 and 1 finish, then stop
    with pytest.raises(KeyboardInterrupt):
        TeacherCache(tmp_path, teacher, data, shard_size=5).precompute(batch_size=5, progress=False)
    cache = TeacherCache(tmp_path, load_teacher(teacher_dir), data, shard_size=5)
    with open(os.path.join(cache.path, "manifest.json")) as f:
        assert sorted(json.load(f)["shards"]) == ["0", "1"]
    assert not cache.complete and not any(".tmp" in f for f in os.listdir(cache.path))
    with pytest.raises(ValueError, match="incomplete"):
        cache.as_teacher()
    resumed = load_teacher(teacher_dir)
    calls = _counting(resumed)
    cache = TeacherCache(tmp_path, resumed, data, shard_size=5).precompute(batch_size=5, progress=False)
    assert len(calls) == 3  # shards 2, 3, 4 only
    ref = TeacherCache(tmp_path / "ref", load_teacher(teacher_dir), data, shard_size=5).precompute(progress=False)
    ids = [r["id"] for r in data]
    torch.testing.assert_close(cache.lookup(ids).logits, ref.lookup(ids).logits)


def _drop_word(sample, generator):
    words = sample["text"].split() if sample.get("text") else None
    if words and len(words) > 1:
        del words[int(torch.randint(len(words), (1,), generator=generator))]
        sample["text"] = " ".join(words)
    return sample


def test_random_augmentation_refused_or_cached_per_seed(teacher_dir, tmp_path):
    teacher, data = load_teacher(teacher_dir), dataset(8)
    with pytest.raises(ValueError, match="augmentation_seed"):
        TeacherCache(tmp_path, teacher, data, augment=_drop_word)

    class Transformed(list):
        transform = staticmethod(lambda x: x)

    with pytest.raises(ValueError, match="on the fly"):
        TeacherCache(tmp_path, teacher, Transformed(data))
    seed1 = TeacherCache(tmp_path, teacher, data, augment=_drop_word, augmentation_seed=1).precompute(progress=False)
    seed2 = TeacherCache(tmp_path, teacher, data, augment=_drop_word, augmentation_seed=2)
    assert seed2.path != seed1.path
    view = [augmented_view(data[i], _drop_word, 1) for i in range(3)]
    assert view == [augmented_view(data[i], _drop_word, 1) for i in range(3)]  # deterministic per seed
    assert [v["text"] for v in view] != [d["text"] for d in data[:3]]
    torch.testing.assert_close(seed1.lookup(["s0", "s1", "s2"]).logits, teacher(view).logits, atol=1e-5, rtol=1e-5)


def test_clip_pairs_cache_rebuilds_similarity_logits(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = _tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=16, eos_token_id=tok.sep_token_id, **TINY),
        vision_config=dict(image_size=30, patch_size=6, **TINY),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(tmp_path / "clip", safe_serialization=True)
    tok.save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(
        tmp_path / "clip"
    )
    teacher = load_teacher(tmp_path / "clip")
    rng = np.random.default_rng(0)
    data = [
        {"id": i, "text": " ".join(rng.choice(WORDS, 3)), "image": rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)}
        for i in range(6)
    ]
    data[4]["text"] = None
    cached = TeacherCache(tmp_path / "c", teacher, data).precompute(progress=False).as_teacher()
    batch = [data[i] for i in (5, 0, 4, 2)]
    online, out = teacher(batch), cached(batch)
    assert out.mask.tolist() == [True, True, False, True]
    torch.testing.assert_close(out.logits, online.logits, atol=1e-4, rtol=1e-4)
