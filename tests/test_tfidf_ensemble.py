"""`zoo teacher tfidf` and `zoo teacher ensemble:A,B`: a TF-IDF + logistic regression teacher saved without pickle
(its logits equal scikit-learn's), cross-fitted by default, and an ensemble folder that loads as one teacher and
serves `zoo distill --teacher text=DIR`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_teacher_finetune import WORDS, _env, _write_task


def _rows(folder, split):
    import csv

    from zoo import data as zdata

    data = zdata.load(str(folder))
    with open(folder / f"{split}.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(data.splits[split])
    return data, list(data.splits[split])


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return _write_task(tmp_path_factory.mktemp("task"), rows_per_label=30)


@pytest.fixture(scope="module")
def tfidf(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("t") / "tfidf"
    cmd = [sys.executable, "-m", "zoo.cli", "teacher", "tfidf", "--data", str(task), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_tfidf_teacher_logits_are_scikit_learns_and_load_without_pickle(task, tmp_path, forbid_unpickling):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from zoo.teachers import load_teacher
    from zoo.teachers.tfidf import fit_tfidf

    data, train = _rows(task, "train")
    val, test = list(data.splits["validation"]), list(data.splits["test"])
    fit = fit_tfidf(train, val, data.id2label, tmp_path / "t")
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, dtype=np.float32)
    x = vec.fit_transform([r["text"] for r in train])
    clf = LogisticRegression(C=fit["C"], max_iter=3000).fit(x, [int(r["label"]) for r in train])
    expected = clf.decision_function(vec.transform([r["text"] for r in test]))
    forbid_unpickling("loading a TF-IDF teacher")
    teacher = load_teacher(tmp_path / "t")
    assert teacher.modality == "text" and teacher.num_classes == len(WORDS)
    got = teacher(test + [{"id": "img", "image": np.zeros((4, 4, 3), np.uint8)}], layers=[])
    np.testing.assert_allclose(got.logits[: len(test)].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert got.mask.tolist() == [True] * len(test) + [False]  # a row without text is not the teacher's
    assert not list((tmp_path / "t").glob("*.pkl")) and not list((tmp_path / "t").glob("*.joblib"))


def test_zoo_teacher_tfidf_cross_fits_and_reports_its_accuracy(tfidf, task):
    from zoo.teachers import load_teacher

    metrics = json.loads((tfidf / "metrics.json").read_text())["teacher"]
    assert metrics["model"] == "tfidf" and metrics["validation_accuracy"] > 0.6 and metrics["test_accuracy"] > 0.6
    assert sorted(p.name for p in tfidf.glob("fold-*")) == [f"fold-{k}" for k in range(5)]
    data, train = _rows(task, "train")
    teacher = load_teacher(tfidf)
    fold = json.loads((tfidf / "crossfit.json").read_text())["assignment"][str(train[0]["id"])]
    alone = load_teacher(tfidf / f"fold-{fold}")(train[:1], layers=[]).logits
    torch.testing.assert_close(teacher(train[:1], layers=[]).logits, alone)  # a train row: the fold that never saw it
    assert "TF-IDF" in (tfidf / "README.md").read_text()


def test_an_ensemble_folder_picks_weights_on_validation_loads_as_one_teacher_and_distills(tfidf, task, tmp_path):
    from zoo.teachers import load_teacher
    from zoo.teachers.tfidf import fit_tfidf

    data, train = _rows(task, "train")
    other = tmp_path / "small"  # a second, weaker member: TF-IDF on half the train rows
    fit_tfidf(train[::2], list(data.splits["validation"]), data.id2label, other)
    (other / "metrics.json").write_text("{}")
    out = tmp_path / "ens"
    cmd = [sys.executable, "-m", "zoo.cli", "teacher", f"ensemble:{tfidf},{other}", "--data", str(task),
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = json.loads((out / "ensemble.json").read_text())
    assert spec["members"] == ["member-0", "member-1"] and abs(sum(spec["weights"]) - 1) < 1e-6
    assert "by weight" in proc.stdout + proc.stderr  # the validation accuracy of each weight is shown
    ens = load_teacher(out)
    a, b = load_teacher(out / "member-0"), load_teacher(out / "member-1")
    w = spec["weights"]
    test = list(data.splits["test"])
    want = w[0] * a(test, layers=[]).logits.log_softmax(-1) + w[1] * b(test, layers=[]).logits.log_softmax(-1)
    torch.testing.assert_close(ens(test, layers=[]).logits, want)
    assert ens.fingerprint != a.fingerprint
    with pytest.raises(ValueError, match="logits only"):
        ens(test, layers=["layer.0"])
    # a broken member list is named before any work
    bad = subprocess.run([*cmd[:4], f"ensemble:{tfidf}", *cmd[5:-1], str(tmp_path / "e2")], capture_output=True,
                         text=True, env=_env())  # fmt: skip
    assert bad.returncode == 1 and "two or more" in bad.stderr and "Traceback" not in bad.stderr

    run = tmp_path / "run"
    tiny = ["student=hybrid_test", "data.batch_size=16", "stages.soft_distill.epochs=1", "stages.mixed_distill=null",
            "stages.prune=null", "stages.quant_finetune=null", "train.latency_repeats=2",
            "train.baseline=false"]  # fmt: skip
    cmd = [sys.executable, "-m", "zoo.cli", "distill", "--data", str(task), "--teacher", f"text={out}", "--out",
           str(run), "--no-progress", *tiny]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["models"]["teacher"]["accuracy"] > 0.6 and "distilled" in metrics["models"]
