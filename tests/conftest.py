"""Shared test setup: one torch thread, no network, tiny fixtures."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _zoo_cache(tmp_path_factory, monkeypatch):
    """Each test its own shared teacher cache ($ZOO_CACHE), never the user's ~/.cache/distill-zoo."""
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path_factory.mktemp("zoo-cache")))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A WordPiece tokenizer trained on a few number words (no download)."""
    from zoo.modalities.text import train_wordpiece_tokenizer

    corpus = ["zero one two three four", "five six seven eight nine", "plus minus times", "eins zwei drei vier"] * 4
    return train_wordpiece_tokenizer(corpus, vocab_size=120)


@pytest.fixture
def raw_samples():
    """Four raw samples: all modalities, image only, stereo audio at another rate, text only."""
    rng = np.random.default_rng(0)
    return [
        {
            "id": "a",
            "text": "one two",
            "image": rng.integers(0, 255, (8, 8), dtype=np.uint8),
            "audio": {"array": rng.standard_normal(8000).astype("float32"), "sampling_rate": 8000},
            "label": 1,
        },
        {"id": "b", "image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "label": 2},
        {
            "id": "c",
            "audio": {"array": rng.standard_normal((2, 22050)).astype("float32"), "sampling_rate": 22050},
            "label": 3,
        },
        {"id": "d", "text": "nine", "label": 4},
    ]


@pytest.fixture
def forbid_unpickling(monkeypatch):
    """A function that, once called, makes any pickle load or ``torch.load`` fail the test: checkpoints, resumes and
    their setup must read safetensors and JSON only."""

    def arm(what: str = "the code under test") -> None:
        import pickle

        def boom(*args, **kwargs):
            raise AssertionError(f"{what} unpickled something")

        for name in ("load", "loads", "Unpickler"):
            monkeypatch.setattr(pickle, name, boom)
        monkeypatch.setattr(torch, "load", boom)

    return arm


@pytest.fixture
def drawn_figures(monkeypatch):
    """The matplotlib figures the code under test draws, kept open (``plt.close`` is a no-op) so a test can read
    their axes, lines and legends instead of pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    yield figures
    for fig in figures:
        close(fig)
