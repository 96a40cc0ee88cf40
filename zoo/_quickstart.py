"""The bundled offline quickstart dataset: ten digit labels over text, image and audio, from pip alone.

- image: scikit-learn's 8x8 handwritten digits (values 0-16 scaled to 0-255), with a seeded one-pixel shift and
  pixel noise per row; train, validation and test draw from disjoint pools of the 1797 digits.
- audio: the spoken digits synthesised once with espeak-ng (``scripts/make_quickstart_audio.py``; 40 seeded
  "speakers" over eight languages and voices, 8 kHz FLAC in ``zoo/assets/quickstart``). Each split draws from its
  own speakers; each row gets its own seeded gain, time shift and background noise (3-25 dB SNR), resampled to
  16 kHz with torchaudio and placed in a 1 s window.
- text: number words in five languages, digits, arithmetic ("drei plus vier", "9 minus 2"), and corrections
  ("five, no, seven"), with seeded typos, case changes and dropped accents. Bag-of-words models cannot do the
  arithmetic or the corrections, so a tiny model trails a larger one.

Each row has a label 0-9 and a seeded non-empty subset of the modalities. Everything is a pure function of the
seed and the sizes: the rows are made when the dataset is built, the noise when a row is read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from importlib import resources

import numpy as np

QUICKSTART_VERSION = 1
SPLITS = ("train", "validation", "test")
MODALITIES = ("text", "image", "audio")  # the modalities the bundled data set carries (not the registry: its own data)
SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE  # 1 s windows, the audio students' default clip length

WORDS = {
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "de": ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"],
    "fr": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
    "es": ["cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
    "it": ["zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove"],
}
OPERATORS = {
    "en": {"+": ["plus", "and"], "-": ["minus", "take away"], "*": ["times"]},
    "de": {"+": ["plus", "und"], "-": ["minus", "weniger"], "*": ["mal"]},
    "fr": {"+": ["plus", "et"], "-": ["moins"], "*": ["fois"]},
    "es": {"+": ["más", "y"], "-": ["menos"], "*": ["por"]},
    "it": {"+": ["più", "e"], "-": ["meno"], "*": ["per"]},
}
NO = {
    "en": ["no", "not", "sorry, I mean"],
    "de": ["nein", "nicht", "ich meine"],
    "fr": ["non", "pardon"],
    "es": ["no", "perdón"],
    "it": ["no", "anzi"],
}
FILLERS = {
    "en": ["number {}", "{} please", "it is {}", "{}"],
    "de": ["die {}", "nummer {}", "{} bitte", "{}"],
    "fr": ["le {}", "numéro {}", "{}"],
    "es": ["el {}", "número {}", "{}"],
    "it": ["il {}", "numero {}", "{}"],
}
KEYBOARD_NEIGHBOURS = dict(
    zip(
        "qwertyuiopasdfghjklzxcvbnm",
        "wa qe wr et ry tu yi uo ip o sq ad sf dg fh gj hk jl k xs zc xv cb vn bm n".split(),
    )
)
ACCENTS = str.maketrans("éèüöäíáóú", "eeuoaiaou")
LANGUAGE_WEIGHTS = {"en": 4, "de": 2, "fr": 2, "es": 1, "it": 1}
TEMPLATE_WEIGHTS = {"word": 4, "digit": 1, "arithmetic": 4, "correction": 2}


def _typo(word: str, rng: random.Random) -> str:
    """One random keyboard slip: drop, double, swap or hit a neighbouring key."""
    letters = [i for i, c in enumerate(word) if c.isalpha()]
    if len(letters) < 2:
        return word
    i = rng.choice(letters)
    kind = rng.choice(["drop", "double", "swap", "neighbour"])
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    near = KEYBOARD_NEIGHBOURS.get(word[i].lower())
    return word[:i] + rng.choice(near) + word[i + 1 :] if near else word


def _number(value: int, language: str, rng: random.Random) -> str:
    """A number as a word of ``language`` (mostly) or as a digit."""
    return str(value) if rng.random() < 0.25 else WORDS[language][value]


def make_text(label: int, rng: random.Random, typo_rate: float = 0.15) -> str:
    """One seeded text over ``label`` (0-9): a word, a digit, an arithmetic phrase or a correction."""
    language = rng.choices(list(LANGUAGE_WEIGHTS), list(LANGUAGE_WEIGHTS.values()))[0]
    template = rng.choices(list(TEMPLATE_WEIGHTS), list(TEMPLATE_WEIGHTS.values()))[0]
    if template == "word":
        text = rng.choice(FILLERS[language]).format(WORDS[language][label])
    elif template == "digit":
        text = rng.choice(FILLERS[language]).format(label)
    elif template == "arithmetic":
        op = rng.choice([o for o in "+-*" if o != "*" or label in (0, 1, 4, 6, 8, 9)])
        if op == "+":
            a = rng.randint(0, label)
            b = label - a
        elif op == "-":
            a = rng.randint(label, 9)
            b = a - label
        else:
            pairs = [(a, b) for a in range(10) for b in range(10) if a * b == label]
            a, b = rng.choice(pairs)
        words = rng.choice(OPERATORS[language][op])
        text = f"{_number(a, language, rng)} {words} {_number(b, language, rng)}"
    else:  # a correction: the label is the second number, so word order matters
        wrong = rng.choice([v for v in range(10) if v != label])
        text = f"{_number(wrong, language, rng)}, {rng.choice(NO[language])}, {_number(label, language, rng)}"
    words = [_typo(w, rng) if rng.random() < typo_rate else w for w in text.split(" ")]
    text = " ".join(words)
    if rng.random() < 0.2:
        text = text.translate(ACCENTS)
    if rng.random() < 0.15:
        text = text.upper() if rng.random() < 0.5 else text.capitalize()
    return text


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits as uint8 (N, 8, 8) 0-255 images and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def _asset_path(name: str):
    return resources.files("zoo").joinpath("assets", "quickstart", name)


@functools.lru_cache(maxsize=1)
def _clips() -> tuple[list[np.ndarray], list[dict], str]:
    """The bundled spoken digits resampled to 16 kHz: (clips, their index entries, a hash of the asset files)."""
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    meta_bytes = _asset_path("digits_audio.json").read_bytes()
    flac_bytes = _asset_path("digits_audio.flac").read_bytes()
    meta = json.loads(meta_bytes)
    with _asset_path("digits_audio.flac").open("rb") as f:
        audio, rate = sf.read(f, dtype="float32")
    audio = AF.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy() if rate != SAMPLE_RATE else audio
    scale = SAMPLE_RATE / rate
    clips = [audio[int(c["start"] * scale) : int((c["start"] + c["length"]) * scale)] for c in meta["clips"]]
    digest = hashlib.sha256(meta_bytes + flac_bytes).hexdigest()[:16]
    return clips, meta["clips"], digest


def _pools(labels_of_items: list[int] | np.ndarray, groups: list[int] | np.ndarray, fractions, seed: int) -> list:
    """Partition item indices into per-split, per-label pools by group (one group never spans two splits)."""
    rng = random.Random(seed)
    unique_groups = sorted(set(int(g) for g in groups))
    rng.shuffle(unique_groups)
    bounds = np.cumsum([0] + [round(f * len(unique_groups)) for f in fractions[:-1]] + [len(unique_groups)])
    bounds[-1] = len(unique_groups)
    split_of_group = {}
    for s in range(len(fractions)):
        for g in unique_groups[bounds[s] : bounds[s + 1]]:
            split_of_group[g] = s
    pools = [{y: [] for y in range(10)} for _ in fractions]
    for i, (y, g) in enumerate(zip(labels_of_items, groups)):
        pools[split_of_group[int(g)]][int(y)].append(i)
    for pool in pools:
        for y in pool:
            rng.shuffle(pool[y])
    return pools


def make_rows(
    sizes: dict[str, int], seed: int = 0, modalities=MODALITIES, modality_prob: float = 0.5, typo_rate: float = 0.15
) -> dict[str, dict[str, list]]:
    """Rows per split as columns ``{id, label, text, image, audio}``; image/audio hold references decoded later.

    Labels are balanced (each split cycles 0-9, then shuffles). Each row carries each modality in ``modalities``
    with probability ``modality_prob``, drawn again until it carries at least one. Images and audio clips are
    dealt from per-split pools (disjoint digits, disjoint speakers), cycling when a pool runs out.
    """
    digit_images, digit_labels = _digits()
    _, clip_meta, _ = _clips()
    fractions = (0.7, 0.15, 0.15)
    # Group images individually; group clips by speaker so a test speaker is never heard in training.
    image_pools = _pools(digit_labels, range(len(digit_labels)), fractions, seed)
    clip_pools = _pools([c["digit"] for c in clip_meta], [c["speaker"] for c in clip_meta], fractions, seed)
    out = {}
    for s, split in enumerate(SPLITS):
        n = sizes[split]
        rng = random.Random(f"quickstart-{seed}-{split}")
        labels = [i % 10 for i in range(n)]
        rng.shuffle(labels)
        cursor = {"image": dict.fromkeys(range(10), 0), "audio": dict.fromkeys(range(10), 0)}
        cols = {"id": [], "label": [], "text": [], "image": [], "audio": []}
        for i, y in enumerate(labels):
            carried = []
            while not carried:
                carried = [m for m in modalities if rng.random() < modality_prob]
            cols["id"].append(f"quickstart-{split}-{i:05d}")
            cols["label"].append(y)
            cols["text"].append(make_text(y, rng, typo_rate) if "text" in carried else None)
            for m, pools in (("image", image_pools), ("audio", clip_pools)):
                ref = None
                if m in carried:
                    pool = pools[s][y]
                    ref = f"{m}:{pool[cursor[m][y] % len(pool)]}"
                    cursor[m][y] += 1
                cols[m].append(ref)
        out[split] = cols
    return out


class QuickstartDecoder:
    """Turns a quickstart row's references into a raw sample, with seeded per-row noise (picklable)."""

    def __init__(self, seed: int = 0, split: str = "train", noise: bool = True):
        self.seed, self.split, self.noise = seed, split, noise

    @property
    def fingerprint_extra(self) -> str:
        return f"quickstart-v{QUICKSTART_VERSION}-seed{self.seed}-noise{self.noise}-{_clips()[2]}"

    def _rng(self, row_id: str, modality: str) -> np.random.Generator:
        key = hashlib.sha256(f"{self.seed}/{row_id}/{modality}".encode()).digest()
        return np.random.default_rng(int.from_bytes(key[:8], "little"))

    def image(self, ref: str, row_id: str):
        from PIL import Image

        image = _digits()[0][int(ref.split(":")[1])].astype(np.float32)
        if self.noise:
            rng = self._rng(row_id, "image")
            dy, dx = rng.integers(-1, 2, size=2)
            image = np.roll(image, (dy, dx), axis=(0, 1))
            if dy:  # roll wraps around: blank the row or column that came in from the other side
                image[0 if dy > 0 else -1, :] = 0
            if dx:
                image[:, 0 if dx > 0 else -1] = 0
            image = image + rng.normal(0.0, 16.0, size=image.shape)
        return Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8), mode="L")

    def audio(self, ref: str, row_id: str) -> dict:
        clip = _clips()[0][int(ref.split(":")[1])]
        out = np.zeros(CLIP_SAMPLES, dtype=np.float32)
        if not self.noise:
            out[: len(clip)] = clip[:CLIP_SAMPLES]
            return {"array": out, "sampling_rate": SAMPLE_RATE}
        rng = self._rng(row_id, "audio")
        clip = clip[:CLIP_SAMPLES] * rng.uniform(0.3, 1.0)
        offset = int(rng.integers(0, CLIP_SAMPLES - len(clip) + 1))
        out[offset : offset + len(clip)] = clip
        snr_db = rng.uniform(3.0, 25.0)
        rms = float(np.sqrt(np.mean(clip**2))) + 1e-8
        noise = rng.normal(0.0, 1.0, CLIP_SAMPLES)
        if rng.random() < 0.5:  # brown-ish noise half of the time: a low rumble instead of hiss
            noise = np.cumsum(noise)
            noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
        noise *= rms / (np.sqrt(np.mean(noise**2)) + 1e-8) / 10 ** (snr_db / 20)
        return {"array": (out + noise).astype(np.float32), "sampling_rate": SAMPLE_RATE}

    def __call__(self, row: dict) -> dict:
        sample = {"id": row["id"], "label": row["label"], "text": row.get("text")}
        sample["image"] = self.image(row["image"], row["id"]) if row.get("image") else None
        sample["audio"] = self.audio(row["audio"], row["id"]) if row.get("audio") else None
        return sample
