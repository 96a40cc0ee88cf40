"""zoo.data: every source format, every bad-input case (raise and skip), label maps, splits, the quickstart
dataset, the CLI, and that loading never opens a network connection."""

import json
import socket

import datasets
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from zoo.data import DataError, load, quickstart


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt while a test runs is a failure."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"zoo.data tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_png(path, value=128, size=(6, 6), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def write_wav(path, seconds=0.1, rate=8000, channels=1, fmt="WAV"):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(path, np.stack([wave] * channels, 1) if channels > 1 else wave, rate, format=fmt)
    return path


@pytest.fixture
def table(tmp_path):
    """20 rows over three labels with text, image and audio paths (relative), some rows lacking modalities."""
    write_png(tmp_path / "img" / "a.png")
    write_wav(tmp_path / "snd" / "a.wav", channels=2)
    rows = []
    for i in range(20):
        rows.append(
            {
                "text": f"sample {i}" if i % 3 != 1 else None,
                "image": "img/a.png" if i % 2 == 0 else None,
                "audio": "snd/a.wav" if i % 3 == 1 else None,
                "label": ["cat", "dog", "bird"][i % 3],
            }
        )
    return tmp_path, rows


def check_loaded(data, n_rows=20):
    assert sum(len(s) for s in data.splits.values()) == n_rows
    assert set(data.splits) == {"train", "validation", "test"}
    assert data.id2label == {0: "bird", 1: "cat", 2: "dog"} and data.label2id["dog"] == 2
    assert data.modalities == ["text", "image", "audio"]
    samples = [s for split in data.splits.values() for s in split]
    with_image = [s for s in samples if s["image"] is not None]
    with_audio = [s for s in samples if s["audio"] is not None]
    assert with_image and with_audio
    assert isinstance(with_image[0]["image"], Image.Image) and with_image[0]["image"].size == (6, 6)
    audio = with_audio[0]["audio"]
    assert audio["sampling_rate"] == 16000 and audio["array"].dtype == np.float32 and audio["array"].ndim == 1
    assert len(audio["array"]) == 1600  # 0.1 s at 8 kHz, resampled to 16 kHz
    assert all(s["label"] in (0, 1, 2) for s in samples)
    assert len({s["id"] for s in samples}) == n_rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_table_formats(table, fmt):
    root, rows = table
    path = root / f"data.{fmt}"
    df = pd.DataFrame(rows)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    data = load(path)
    check_loaded(data)
    assert len(data.splits["validation"]) == 2 and len(data.splits["test"]) == 2
    train = data.splits["train"]
    assert train.has("audio").sum() + train.has("image").sum() > 0
    assert data.fingerprint("train") == load(path).fingerprint("train")


def test_custom_columns_split_column_and_ids(tmp_path):
    write_png(tmp_path / "p.png")
    lines = [
        {"uid": f"u{i}", "sentence": f"s {i}", "picture": "p.png", "y": i % 2, "part": ["train", "val", "test"][i % 3]}
        for i in range(9)
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines))
    data = load(
        path, text_column="sentence", image_column="picture", label_column="y", id_column="uid", split_column="part"
    )
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 3, "validation": 3, "test": 3}
    assert [s["id"] for s in data.splits["validation"]] == ["u1", "u4", "u7"]
    assert data.modalities == ["text", "image"] and data.id2label == {0: "0", 1: "1"}
    with pytest.raises(DataError, match="no column 'nope'"):
        load(path, text_column="nope")


def test_folder_layouts(tmp_path):
    for label in ("cat", "dog"):
        for i in range(5):
            write_png(tmp_path / "flat" / label / f"{i}.png", value=10 * i)
            write_wav(tmp_path / "flat" / label / f"{i}.flac", fmt="FLAC")
            write_png(tmp_path / "bysplit" / ("train" if i < 3 else "test") / label / f"{i}.jpg", mode="RGB")
        (tmp_path / "flat" / label / "note.txt").write_text(f"a {label}")
    (tmp_path / "flat" / "cat" / "ignored.csv").write_text("x")
    data = load(tmp_path / "flat", val_fraction=0.2, test_fraction=0.2)
    assert sum(len(s) for s in data.splits.values()) == 22
    assert data.modalities == ["text", "image", "audio"] and data.id2label == {0: "cat", 1: "dog"}
    texts = [s["text"] for split in data.splits.values() for s in split if s["text"] is not None]
    assert sorted(texts) == ["a cat", "a dog"]
    data = load(tmp_path / "bysplit", val_fraction=0.2)  # 6 train + 4 test files; validation: 2 out of train
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 4, "validation": 2, "test": 4}
    assert data.splits["validation"][0]["image"].mode == "RGB"


def test_save_to_disk_with_embedded_images(tmp_path):
    png = write_png(tmp_path / "x.png")
    ds = datasets.Dataset.from_dict({"image": [str(png)] * 6, "label": ["a", "b"] * 3}).cast_column(
        "image", datasets.Image()
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(tmp_path / "saved")
    png.unlink()  # the saved dataset must carry the bytes itself
    data = load(tmp_path / "saved", val_fraction=0.0)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 6, "validation": 0, "test": 2}
    assert data.splits["test"][1]["image"].size == (6, 6) and data.splits["test"][1]["label"] == 1


def test_split_files_in_a_folder(tmp_path):
    for split, n in (("train", 40), ("test", 10)):
        pd.DataFrame({"text": [f"t{i}" for i in range(n)], "label": [i % 4 for i in range(n)]}).to_csv(
            tmp_path / f"{split}.csv", index=False
        )
    data = load(tmp_path, val_fraction=0.2)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 30, "validation": 10, "test": 10}
    # validation is carved out of train, stratified: every label keeps its share
    assert sorted(np.bincount(data.splits["validation"].labels).tolist()) == [2, 2, 3, 3]


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="offline.*pass a local CSV/JSONL/Parquet file"):
        load("someone/some-dataset")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load("missing/data.csv")


def make_bad(case, d):
    """Write what ``case`` needs under ``d``; return (value for the bad cell, its column, expected message)."""
    if case == "missing file":
        return "img/nope.png", "image", "file not found"
    if case == "unreadable image":
        (d / "bad.png").write_bytes(b"not a png at all")
        return "bad.png", "image", "cannot be read as an image"
    if case == "corrupt wav":
        (d / "bad.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
        return "bad.wav", "audio", "cannot be read as audio"
    if case == "empty wav":
        return write_wav(d / "empty.wav", seconds=0).name, "audio", "empty audio"
    if case == "zero-byte wav":
        (d / "zero.wav").write_bytes(b"")
        return "zero.wav", "audio", "empty (0 bytes)"
    if case == "empty text":
        return "   ", "text", "empty text"
    if case == "unknown label":
        return "fish", "label", "unknown label 'fish'"
    return None, None, "row has no modality"  # no modality


BAD_CASES = [
    "missing file",
    "unreadable image",
    "corrupt wav",
    "empty wav",
    "zero-byte wav",
    "empty text",
    "unknown label",
    "no modality",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_or_skips(tmp_path, case):
    write_png(tmp_path / "img" / "a.png")
    rows = [{"text": f"row {i}", "image": "img/a.png", "audio": None, "label": ["a", "b"][i % 2]} for i in range(10)]
    value, column, message = make_bad(case, tmp_path)
    if column is None:
        rows[4].update(text=None, image=None)
    else:
        rows[4][column] = value
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    label_map = {0: "a", 1: "b"}
    with pytest.raises(DataError) as err:
        load(path, label_map=label_map)
    where = "rows.jsonl row 4" + (f", column '{column}'" if column else "")
    assert where in str(err.value) and message in str(err.value) and "on_error='skip'" in str(err.value)
    data = load(path, label_map=label_map, on_error="skip")
    assert sum(len(s) for s in data.splits.values()) == 9
    assert data.report.skipped_rows == 1 and len(data.report.problems) == 1
    assert where in str(data.report) and message in str(data.report)


def test_lazy_decoding_still_names_file_row_and_column(tmp_path):
    good = write_png(tmp_path / "good.png", size=(64, 64))
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])  # header intact, pixels cut off
    pd.DataFrame({"image": ["good.png", "truncated.png"], "label": [0, 1]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match=r"d.csv row 1, column 'image'"):
        load(tmp_path / "d.csv")  # small data: decoded up front
    data = load(tmp_path / "d.csv", full_check=False, val_fraction=0, test_fraction=0)
    assert data.splits["train"][0]["image"].size == (64, 64)
    with pytest.raises(DataError, match=r"d.csv row 1, column 'image': .*truncated.png"):
        data.splits["train"][1]


def test_duplicate_ids_and_bad_split_values(tmp_path):
    pd.DataFrame({"id": ["x", "y", "x"], "text": ["a", "b", "c"], "label": [0, 1, 0]}).to_csv(
        tmp_path / "d.csv", index=False
    )
    with pytest.raises(DataError, match=r"d.csv row 2, column 'id': duplicate id 'x' \(first in .*row 0\)"):
        load(tmp_path / "d.csv")
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 1], "split": ["train", "holdout", "train"]}).to_csv(
        tmp_path / "s.csv", index=False
    )
    with pytest.raises(DataError, match=r"s.csv row 1, column 'split': split 'holdout'"):
        load(tmp_path / "s.csv")
    data = load(tmp_path / "s.csv", on_error="skip")
    assert len(data.splits["train"]) == 2 and data.report.skipped_rows == 1  # (one class left would be an error)


def test_label_maps(tmp_path):
    labels = [str(v) for v in (10, 2, 9, 2, 10, 9)]
    pd.DataFrame({"text": list("abcdef"), "label": labels}).to_csv(tmp_path / "d.csv", index=False)
    data = load(tmp_path / "d.csv", val_fraction=0, test_fraction=0)
    assert data.id2label == {0: "2", 1: "9", 2: "10"}  # numbers sort as numbers
    saved = data.save_label_map(tmp_path / "out" / "labels.json")
    assert json.loads(saved.read_text())["id2label"] == {"0": "2", "1": "9", "2": "10"}
    # a saved map fixes the ids, even with extra classes absent from the data
    json_map = {"id2label": {"0": "10", "1": "9", "2": "2", "3": "7"}}
    (tmp_path / "m.json").write_text(json.dumps(json_map))
    data = load(tmp_path / "d.csv", label_map=tmp_path / "m.json", val_fraction=0, test_fraction=0)
    assert data.num_labels == 4 and [s["label"] for s in data.splits["train"]] == [0, 2, 1, 2, 0, 1]
    assert load(tmp_path / "d.csv", label_map=["2", "9", "10"], test_fraction=0).label2id == {"2": 0, "9": 1, "10": 2}


def test_stratified_splits_are_seeded(tmp_path):
    pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": [i % 5 for i in range(100)]}).to_csv(
        tmp_path / "d.csv", index=False
    )
    a, b = load(tmp_path / "d.csv", seed=1), load(tmp_path / "d.csv", seed=1)
    c = load(tmp_path / "d.csv", seed=2)
    for split in ("validation", "test"):
        assert np.bincount(a.splits[split].labels).tolist() == [2] * 5
        assert [s["id"] for s in a.splits[split]] == [s["id"] for s in b.splits[split]]
    assert a.fingerprint("test") == b.fingerprint("test") != c.fingerprint("test")


def test_quickstart_sizes_balance_and_determinism():
    data = quickstart(100, 30, 20, seed=3)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 100, "validation": 30, "test": 20}
    assert data.id2label == {i: str(i) for i in range(10)} and data.modalities == ["text", "image", "audio"]
    for split in data.splits.values():
        assert np.bincount(split.labels, minlength=10).tolist() == [len(split) // 10] * 10
        carried = np.stack([split.has(m) for m in ("text", "image", "audio")])
        assert carried.any(0).all() and carried.all(0).any() and (carried.sum(0) == 1).any()
    train, test = data.splits["train"], data.splits["test"]
    # images never shared between splits; speakers never shared between splits
    refs = {s: {r for r in data.splits[s].dataset["image"] if r} for s in data.splits}
    assert not refs["train"] & refs["test"] and not refs["train"] & refs["validation"]
    from zoo._quickstart import _clips

    speakers = {s: {_clips()[1][int(r[6:])]["speaker"] for r in data.splits[s].dataset["audio"] if r} for s in refs}
    assert not speakers["train"] & speakers["test"]
    sample = train[int(np.flatnonzero(train.has("image") & train.has("audio"))[0])]
    assert sample["image"].mode == "L" and sample["image"].size == (8, 8)
    assert sample["audio"]["array"].shape == (16000,) and sample["audio"]["array"].dtype == np.float32
    assert sample["audio"]["sampling_rate"] == 16000 and sample["label"] in range(10)
    again = quickstart(100, 30, 20, seed=3)
    assert again.fingerprint("test") == data.fingerprint("test") != quickstart(100, 30, 20, seed=4).fingerprint("test")
    for i in range(len(test)):
        a, b = test[i], again.splits["test"][i]
        assert a["text"] == b["text"] and a["label"] == b["label"]
        if a["image"] is not None:
            assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        if a["audio"] is not None:
            assert np.array_equal(a["audio"]["array"], b["audio"]["array"])
    assert load("quickstart").fingerprint("train") == quickstart().fingerprint("train")


def test_quickstart_text_is_varied_and_batches_collate():
    from zoo.modalities import collate
    from zoo.modalities.audio import AudioConfig, AudioPreprocessor
    from zoo.modalities.image import ImageConfig, ImagePreprocessor

    data = quickstart(60, 10, 10, seed=0)
    texts = [s["text"] for s in data.splits["train"] if s["text"]]
    assert len(set(texts)) > 0.8 * len(texts)
    assert any(op in t.lower() for t in texts for op in ("plus", "minus", "mal", "moins", "times", "menos"))
    samples = [data.splits["train"][i] for i in range(16)]
    preprocessors = {
        "image": ImagePreprocessor(ImageConfig(in_chans=1, mean=[0.5], std=[0.5])),
        "audio": AudioPreprocessor(AudioConfig()),
    }
    samples = [s for s in samples if s["image"] is not None or s["audio"] is not None]
    batch = collate(samples, preprocessors)
    assert batch["image_mask"].tolist() == [s["image"] is not None for s in samples]
    assert batch["audio_mask"].tolist() == [s["audio"] is not None for s in samples]
    assert batch["labels"].tolist() == [s["label"] for s in samples]


def test_cli_summary_and_exit_codes(tmp_path, capsys):
    from zoo.cli import main

    rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(10)] + [{"text": "", "label": "a"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["data", str(tmp_path / "d.jsonl")]) == 1
    out = capsys.readouterr()
    assert "d.jsonl row 10, column 'text': empty text" in out.out and "--skip-bad" in out.err
    assert main(["data", str(tmp_path / "d.jsonl"), "--skip-bad", "--save-label-map", str(tmp_path / "l.json")]) == 0
    out = capsys.readouterr().out
    assert "rows" in out and "text" in out
    assert json.loads((tmp_path / "l.json").read_text())["label2id"] == {"a": 0, "b": 1}
    assert main(["data", "quickstart", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["rows"] == 1500 and summary["splits"]["test"]["labels"]["7"] == 30
    assert main(["data", "someone/offline-dataset"]) == 1
    assert "offline" in capsys.readouterr().err
