"""A TF-IDF + logistic regression text teacher (``zoo teacher tfidf --data SOURCE --out DIR``).

On short domain text (package descriptions, tickets, product titles) TF-IDF + logistic regression is the strongest
simple model, and it errs differently from a fine-tuned transformer: on debian-sections it is 75% alone, and
averaged with the fine-tuned all-MiniLM-L6-v2 (``zoo teacher ensemble:...``) the pair is 2 points above either.
This module makes it a teacher like any other: it loads through ``load_teacher``, is cached, and gives logits
(no features, no embeddings).

scikit-learn fits it (``TfidfVectorizer`` word 1-2 grams, sublinear tf, ``min_df`` 2; ``LogisticRegression`` with
C chosen on the validation split). It is saved without pickle, which is why the save / load here is our own:
scikit-learn models persist only through pickle (joblib). ``DIR/tfidf.json`` holds the vectorizer settings, the
vocabulary and the labels; ``DIR/model.safetensors`` the idf vector, the coefficients and the intercepts. Loading
rebuilds a ``TfidfVectorizer`` with that fixed vocabulary and idf, so its features equal the fitted one's, and the
logits are ``X @ coef.T + intercept``: scikit-learn's ``decision_function`` (its ``predict_log_proba`` is their
log-softmax).

A TF-IDF model fitted on the train rows has nearly memorised them (its train accuracy is near 100%), and KD from
memorised rows is label smoothing. So ``zoo teacher tfidf`` cross-fits by default (``--folds 5``; each fit takes
seconds): a train row is labelled by the fold model that never saw it (``zoo.teachers.crossfit``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoo.io import atomic_write_json
from zoo.teachers.base import Teacher, TeacherOutput, hash_files

TFIDF_FILE = "tfidf.json"
FORMAT = "zoo-tfidf-1"
VECTORIZER = {"ngram_range": [1, 2], "sublinear_tf": True, "min_df": 2, "lowercase": True}
CS = (3.0, 10.0, 30.0, 100.0)


def is_tfidf_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / TFIDF_FILE).is_file()


def _vectorizer(settings: dict, vocabulary: dict | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    s = {**settings, "ngram_range": tuple(settings["ngram_range"])}
    if vocabulary is not None:
        s.pop("min_df", None)  # a fixed vocabulary: min_df was applied when it was built
    return TfidfVectorizer(**s, vocabulary=vocabulary, dtype=np.float32)


def _texts(rows: list[dict], split: str) -> list[str]:
    bad = [r.get("id") for r in rows if not isinstance(r.get("text"), str)]
    if bad:
        raise ValueError(f"zoo teacher tfidf: {len(bad)} {split} rows have no text (first: id {bad[0]!r}).")
    return [r["text"] for r in rows]


def fit_tfidf(train: list[dict], val: list[dict], id2label: dict, folder: str | os.PathLike, seed: int = 0) -> dict:
    """Fit TF-IDF + logistic regression on ``train`` (C chosen on ``val``) and save it to ``folder``.

    Returns ``{"C", "validation_accuracy", "vocabulary"}``. Without validation rows, C is 10.
    """
    from sklearn.linear_model import LogisticRegression

    vec = _vectorizer(VECTORIZER)
    xtr = vec.fit_transform(_texts(train, "train"))
    ytr = np.array([int(r["label"]) for r in train])
    xva = vec.transform(_texts(val, "validation")) if val else None
    yva = np.array([int(r["label"]) for r in val])
    best = None
    for c in CS if val else (10.0,):
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(xtr, ytr)
        acc = float((clf.predict(xva) == yva).mean()) if val else None
        if best is None or (acc is not None and acc > best[0]):
            best = (acc, c, clf)
    acc, c, clf = best
    classes = [int(k) for k in clf.classes_]
    n = len(id2label)
    coef = np.zeros((n, xtr.shape[1]), np.float32)
    intercept = np.full(n, -1e4, np.float32)  # a label absent from these train rows is never predicted
    if len(classes) == 2:  # scikit-learn's binary model has one row: the logit of classes[1] over classes[0]
        coef[classes[1]], intercept[classes[1]] = clf.coef_[0], clf.intercept_[0]
        intercept[classes[0]] = 0.0
    else:
        coef[classes], intercept[classes] = clf.coef_, clf.intercept_
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "idf": torch.from_numpy(vec.idf_.astype(np.float32)),
        "coef": torch.from_numpy(coef),
        "intercept": torch.from_numpy(intercept),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    vocabulary = {str(k): int(v) for k, v in vec.vocabulary_.items()}
    atomic_write_json(
        folder / TFIDF_FILE,
        {"format": FORMAT, "vectorizer": VECTORIZER, "C": c, "id2label": {str(k): str(v) for k, v in id2label.items()},
         "vocabulary": vocabulary},
    )  # fmt: skip
    return {"C": c, "validation_accuracy": acc, "vocabulary": len(vocabulary)}


class _Linear(nn.Module):
    """The saved coefficients as a frozen module (so the teacher has a device and parameters like any other)."""

    def __init__(self, coef: torch.Tensor, intercept: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(coef, requires_grad=False)
        self.bias = nn.Parameter(intercept, requires_grad=False)


class TfidfTeacher(Teacher):
    """TF-IDF + logistic regression over the ``text`` of each sample; logits only."""

    def __init__(self, folder: str | os.PathLike, *, name: str | None = None, autocast=None):
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            spec = json.loads((folder / TFIDF_FILE).read_text(encoding="utf-8"))
            settings, vocabulary = spec["vectorizer"], spec["vocabulary"]
            id2label = {int(k): v for k, v in spec["id2label"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{folder / TFIDF_FILE} is not a TF-IDF teacher description ({e}).") from e
        weights = load_file(str(folder / "model.safetensors"))
        expect = {"idf": (len(vocabulary),), "coef": (len(id2label), len(vocabulary)), "intercept": (len(id2label),)}
        for key, shape in expect.items():
            if key not in weights or tuple(weights[key].shape) != shape:
                got = None if key not in weights else tuple(weights[key].shape)
                raise ValueError(f"{folder}/model.safetensors: {key} has shape {got}, expected {shape}.")
        self.vectorizer = _vectorizer(settings, vocabulary)
        self.vectorizer.idf_ = weights["idf"].numpy()
        super().__init__(
            _Linear(weights["coef"], weights["intercept"]),
            modality="text",
            name=name or folder.name,
            num_classes=len(id2label),
            id2label=id2label,
            feature_layers=[],
            preprocess_config={"tfidf": settings, "vocabulary": len(vocabulary)},
            identity={"weights": hash_files([folder / "model.safetensors", folder / TFIDF_FILE])},
            autocast=None,
        )

    def _values(self, sample: dict):
        text = sample.get("text")
        return text if isinstance(text, str) else None

    def _preprocess(self, values: list, ids: list) -> dict[str, torch.Tensor]:
        x = self.vectorizer.transform(values).tocoo()
        indices = torch.from_numpy(np.stack([x.row, x.col]).astype(np.int64))
        coo = torch.sparse_coo_tensor(indices, torch.from_numpy(x.data.astype(np.float32)), size=x.shape,
                                      check_invariants=False)  # fmt: skip
        return {"tfidf": coo.coalesce()}

    def _forward(self, inputs: dict[str, torch.Tensor], layers: list[str], pool: bool) -> TeacherOutput:
        return TeacherOutput(logits=torch.sparse.mm(inputs["tfidf"], self.model.weight.T) + self.model.bias)


def load_tfidf(path: str | os.PathLike, name: str | None = None, autocast=None, **options) -> TfidfTeacher:
    if options:
        raise TypeError(f"a TF-IDF teacher takes no options; got {sorted(options)}.")
    return TfidfTeacher(path, name=name, autocast=autocast)
