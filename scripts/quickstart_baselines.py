"""How hard is each modality of the quickstart dataset? Small vs. larger scikit-learn models, per modality.

Trains on the train rows that carry a modality and reports accuracy on the test rows that carry it, so there
is evidence that a tiny student trails a larger teacher (room for distillation).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/quickstart_baselines.py [--seed 0] [--no-noise] [--gru]

``--gru`` adds word-order-aware text models (character BiGRUs, small and large; about 5 minutes on one core).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torchaudio
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline, make_union
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import zoo.data


def rows_with(split, modality):
    samples = [split[i] for i in np.flatnonzero(split.has(modality))]
    return [s[modality] for s in samples], np.array([s["label"] for s in samples])


def log_mel(audio):
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=32)
    x = torch.stack([torch.from_numpy(a["array"]) for a in audio])
    return torch.log(mel(x) + 1e-6).numpy()  # (N, 32, frames)


def char_gru_accuracy(hidden: int, xtr, ytr, xva, yva, xte, yte, epochs: int = 60) -> float:
    """Train a character BiGRU; return test accuracy at the epoch with the best validation accuracy."""
    import torch.nn as nn

    vocab = {c: i + 1 for i, c in enumerate(sorted(set("".join(xtr + xva + xte).lower())))}

    def encode(texts):
        out = torch.zeros(len(texts), max(map(len, texts)), dtype=torch.long)
        for i, t in enumerate(texts):
            out[i, : len(t)] = torch.tensor([vocab[c] for c in t.lower()])
        return out

    class CharGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(len(vocab) + 1, hidden // 2 if hidden > 32 else hidden, padding_idx=0)
            layers = 2 if hidden > 32 else 1
            self.gru = nn.GRU(self.embed.embedding_dim, hidden, layers, batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * hidden, 10)

        def forward(self, x):
            mask = (x > 0).float().unsqueeze(-1)
            h, _ = self.gru(self.embed(x))
            return self.head((h * mask).sum(1) / mask.sum(1))  # masked mean over characters

    torch.manual_seed(0)
    model = CharGRU()
    opt = torch.optim.AdamW(model.parameters(), 3e-3 if hidden <= 32 else 2e-3)
    x, y, best_val, best_test = encode(xtr), torch.from_numpy(ytr), -1.0, 0.0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for b in range(0, len(x), 32):
            i = perm[b : b + 32]
            loss = nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float((model(encode(xva)).argmax(1).numpy() == yva).mean())
            test = float((model(encode(xte)).argmax(1).numpy() == yte).mean())
        if val > best_val:
            best_val, best_test = val, test
    return best_test


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gru", action="store_true", help="also train character BiGRUs on the text")
    parser.add_argument("--no-noise", action="store_true", help="clean images and audio (no per-row noise)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    data = zoo.data.quickstart(seed=args.seed, noise=not args.no_noise)
    train, test = data.splits["train"], data.splits["test"]
    results = []

    def run(modality, name, model, xtr, ytr, xte, yte):
        t = time.perf_counter()
        model.fit(xtr, ytr)
        acc = float((model.predict(xte) == yte).mean())
        results.append((modality, name, len(ytr), len(yte), acc, time.perf_counter() - t))
        print(f"{modality:6} {name:48} train {len(ytr):5} test {len(yte):4} acc {acc:.3f}", flush=True)

    xtr, ytr = rows_with(train, "text")
    xte, yte = rows_with(test, "text")
    words = TfidfVectorizer(analyzer="word", token_pattern=r"\w+")
    run(
        "text",
        "tiny: logreg, word unigrams",
        make_pipeline(words, LogisticRegression(max_iter=2000)),
        xtr,
        ytr,
        xte,
        yte,
    )
    chars = make_union(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4)),
        TfidfVectorizer(analyzer="word", token_pattern=r"\w+", ngram_range=(1, 3)),
    )
    run(
        "text",
        "logreg, char 1-4 + word 1-3 grams",
        make_pipeline(chars, LogisticRegression(C=10, max_iter=3000)),
        xtr,
        ytr,
        xte,
        yte,
    )
    chars = make_union(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4)),
        TfidfVectorizer(analyzer="word", token_pattern=r"\w+", ngram_range=(1, 3)),
    )
    run(
        "text",
        "MLP 512, char 1-4 + word 1-3 grams",
        make_pipeline(chars, MLPClassifier((512,), max_iter=300, random_state=0)),
        xtr,
        ytr,
        xte,
        yte,
    )

    if args.gru:
        xva, yva = rows_with(data.splits["validation"], "text")
        for hidden in (16, 128):
            acc = char_gru_accuracy(hidden, xtr, ytr, xva, yva, xte, yte)
            print(
                f"text   char BiGRU hidden {hidden:<3} (best val epoch)            train {len(ytr):5} test "
                f"{len(yte):4} acc {acc:.3f}",
                flush=True,
            )

    xtr, ytr = rows_with(train, "image")
    xte, yte = rows_with(test, "image")
    xtr = np.stack([np.asarray(im, np.float32).ravel() / 255 for im in xtr])
    xte = np.stack([np.asarray(im, np.float32).ravel() / 255 for im in xte])
    run("image", "tiny: logreg on 64 pixels", LogisticRegression(max_iter=2000), xtr, ytr, xte, yte)
    run("image", "SVC rbf", make_pipeline(StandardScaler(), SVC(C=10)), xtr, ytr, xte, yte)
    run("image", "MLP 256x256", MLPClassifier((256, 256), max_iter=500, random_state=0), xtr, ytr, xte, yte)

    xtr, ytr = rows_with(train, "audio")
    xte, yte = rows_with(test, "audio")
    mtr, mte = log_mel(xtr), log_mel(xte)
    pooled = lambda m: np.concatenate([m.mean(2), m.std(2)], 1)  # noqa: E731
    run(
        "audio",
        "tiny: logreg on pooled log-mel (mean+std)",
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        pooled(mtr),
        ytr,
        pooled(mte),
        yte,
    )
    run(
        "audio",
        "SVC rbf on pooled log-mel",
        make_pipeline(StandardScaler(), SVC(C=10)),
        pooled(mtr),
        ytr,
        pooled(mte),
        yte,
    )
    flat = lambda m: m.reshape(len(m), -1)  # noqa: E731
    run(
        "audio",
        "MLP 512 on full log-mel (32x101)",
        make_pipeline(StandardScaler(), MLPClassifier((512,), max_iter=300, random_state=0)),
        flat(mtr),
        ytr,
        flat(mte),
        yte,
    )


if __name__ == "__main__":
    main()
