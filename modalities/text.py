"""Text modality: tokenizer handling, preprocessing from raw strings, and the token stem.

The student either reuses a teacher's tokenizer (a folder holding ``tokenizer.json`` or the files
``AutoTokenizer`` reads) or trains a WordPiece tokenizer on the user's corpus with ``tokenizers``.
Either way the tokenizer is saved next to the student's weights and reloaded with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zoo.modalities.base import Modality, register_modality

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class TextConfig:
    """Text stem settings.

    Args:
        vocab_size: number of rows of the token embedding; must cover the tokenizer's vocabulary.
        max_length: texts are truncated to this many tokens (special tokens included).
        pad_token_id: id the tokenizer pads with.
        lowercase: lowercase before tokenizing (WordPiece tokenizers trained here).
    """

    vocab_size: int = 4096
    max_length: int = 32
    pad_token_id: int = 0
    lowercase: bool = True


def _wordpiece_vocab(words: dict[str, int], size: int) -> list[str]:
    """WordPiece tokens for ``{word: count}``: every character (``##`` when inside a word), then BPE merges of the
    most frequent adjacent pair until ``size`` tokens, ties broken by the pair's text (deterministic)."""
    import heapq

    seqs = [[w[0]] + [f"##{c}" for c in w[1:]] for w in words]
    counts = list(words.values())
    vocab = sorted({t for seq in seqs for t in seq})
    pairs: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pairs[pair] = pairs.get(pair, 0) + counts[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    known = set(vocab)
    while len(vocab) < size and heap:
        n, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -n or n == 0:
            continue  # a stale entry: the pair's count changed after it was pushed
        a, b = pair
        merged = a + b[2:]
        changed: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            seq, c = seqs[i], counts[i]
            for old in zip(seq, seq[1:]):
                pairs[old] -= c
                changed.add(old)
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for new in zip(out, out[1:]):
                pairs[new] = pairs.get(new, 0) + c
                where.setdefault(new, set()).add(i)
                changed.add(new)
        pairs.pop(pair, None)
        for p in sorted(changed):
            if pairs.get(p, 0) > 0:
                heapq.heappush(heap, (-pairs[p], p))
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
    return vocab


def train_wordpiece_tokenizer(corpus: Iterable[str], vocab_size: int = 4096, lowercase: bool = True):
    """Train a WordPiece tokenizer on ``corpus`` and wrap it as a ``PreTrainedTokenizerFast``.

    Special tokens are ``[PAD]`` (id 0), ``[UNK]``, ``[CLS]``, ``[SEP]`` and ``[MASK]``, as in BERT.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in corpus if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("train_wordpiece_tokenizer: the corpus holds no non-empty string; pass the training texts.")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    norm = [normalizers.NFD(), normalizers.StripAccents()]
    if lowercase:
        norm.insert(0, normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The Rust trainer breaks ties between equally frequent merges in hash-map order, which changes from process to
    # process (PYTHONHASHSEED does not reach it), so the same corpus gave different vocabularies. The merges are
    # learned here instead, ties broken by the tokens' text: the same corpus gives the same vocabulary everywhere.
    words: dict[str, int] = {}
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            words[word] = words.get(word, 0) + 1
    learned = _wordpiece_vocab(words, vocab_size - len(specials))
    tok.model = models.WordPiece(
        vocab={t: i for i, t in enumerate(specials + sorted(learned, key=lambda t: (t.startswith("##"), t)))},
        unk_token="[UNK]",
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def count_truncated(tokenizer, texts: Iterable[str | None], max_length: int, batch_size: int = 1024) -> int:
    """How many texts a tokenizer encodes into more than ``max_length`` tokens (special tokens included), i.e.
    how many a preprocessing that truncates at ``max_length`` cuts."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    n = 0
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], truncation=False, verbose=False)["input_ids"]
        n += sum(len(ids) > max_length for ids in enc)
    return n


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer from a local folder (a teacher's or a saved student's), never running remote code."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"tokenizer folder {path!r} does not exist; pass a local folder holding tokenizer.json "
            "(for instance a teacher saved with save_pretrained)."
        )
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # transformers raises several types here; name the folder either way
        raise ValueError(f"could not load a tokenizer from {path!r}: {e}") from e


class TextPreprocessor:
    """Raw strings -> ``input_ids`` (B, L), ``attention_mask`` (B, L) and ``text_mask`` (B,).

    ``None`` marks a sample without text: its row is all padding and ``text_mask`` is False.
    An empty or whitespace-only string is an error, since it carries no signal and usually means a
    broken row; drop the text (``None``) instead.
    """

    def __init__(self, tokenizer, config: TextConfig):
        self.tokenizer = tokenizer
        self.config = config
        n = len(tokenizer)
        if n > config.vocab_size:
            raise ValueError(
                f"the tokenizer has {n} tokens but the student's text.vocab_size is {config.vocab_size}; "
                f"build the student with text vocab_size >= {n}."
            )

    def truncated(self, texts: Sequence[str | None]) -> int:
        """How many of ``texts`` are longer than ``max_length`` tokens (their ends are cut)."""
        return count_truncated(self.tokenizer, texts, self.config.max_length)

    def __call__(self, texts: Sequence[str | None]) -> dict[str, torch.Tensor]:
        present = []
        for i, t in enumerate(texts):
            if t is None:
                present.append(False)
                continue
            if not isinstance(t, str):
                raise TypeError(f"text of sample {i} is a {type(t).__name__}; expected a str (or None when absent).")
            if not t.strip():
                raise ValueError(f"text of sample {i} is empty; pass None for a sample without text.")
            present.append(True)
        batch = len(texts)
        length = self.config.max_length
        input_ids = torch.full((batch, length), self.config.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        idx = [i for i, p in enumerate(present) if p]
        if idx:
            enc = self.tokenizer(
                [texts[i] for i in idx], max_length=length, truncation=True, padding="max_length", return_tensors="pt"
            )
            input_ids[idx] = enc["input_ids"]
            attention_mask[idx] = enc["attention_mask"]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "text_mask": torch.tensor(present)}


class TextStem(nn.Module):
    """Token ids -> tokens (B, L, D): token embedding + learned positions + a depthwise 1D conv for local n-grams.

    The output grid is (1, L) so the trunk's 2D conv blocks treat text as a one-row image.
    """

    def __init__(self, config: TextConfig, embed_dim: int):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, embed_dim, padding_idx=config.pad_token_id)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.max_length, embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.embed.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Returns tokens (B, L, D), the grid (1, L) and the token padding mask (B, L), True where valid."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length); got shape {tuple(input_ids.shape)}.")
        length = input_ids.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"input_ids has length {length}; this student takes at most {self.config.max_length}.")
        x = self.embed(input_ids) + self.pos_embed[:, :length]  # (B, L, D)
        x = self.norm(x)
        valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        x = x * valid.unsqueeze(-1).to(x.dtype)
        return x, (1, length), valid


# ------------------------------------------------------------------------------- a teacher's vocabulary, trimmed
def trim_tokenizer(tokenizer, corpus: Iterable[str]):
    """The teacher's WordPiece tokenizer cut down to the tokens ``corpus`` uses, plus every single character.

    As model2vec does: a BERT tokenizer has 30k tokens, and at a student width of 128 their embedding rows alone
    are 3.9M parameters, most of them for tokens the user's data never holds. Tokens the corpus produces are kept
    (so the corpus tokenizes exactly as before: WordPiece takes the longest piece in the vocabulary, which the
    trimmed one still holds), and so is every one-character piece, so an unseen word still splits into pieces
    rather than ``[UNK]``. Returns ``(tokenizer, kept)``: a ``PreTrainedTokenizerFast`` and, for each new id, the
    teacher's id it came from (to inherit that row of the teacher's embedding).
    """
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec.get("model", {}).get("type") != "WordPiece":
        raise ValueError(
            f"trim_tokenizer: only WordPiece tokenizers can be trimmed; this one is {spec['model']['type']}."
        )
    vocab: dict[str, int] = spec["model"]["vocab"]
    used = set(tokenizer.all_special_ids)
    texts = [t for t in corpus if isinstance(t, str) and t.strip()]
    for i in range(0, len(texts), 1024):
        for ids in tokenizer(texts[i : i + 1024], add_special_tokens=True)["input_ids"]:
            used.update(ids)
    chars = {i for t, i in vocab.items() if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    kept = sorted(used | chars)
    by_id = {i: t for t, i in vocab.items()}
    new_vocab = {by_id[old]: new for new, old in enumerate(kept)}
    spec["model"]["vocab"] = new_vocab
    for tok in spec.get("added_tokens") or []:
        tok["id"] = new_vocab[tok["content"]]
    post = spec.get("post_processor") or {}
    for entry in (post.get("special_tokens") or {}).values():  # TemplateProcessing
        entry["ids"] = [new_vocab[t] for t in entry["tokens"]]
    for key in ("cls", "sep"):  # BertProcessing: [token, id]
        if isinstance(post.get(key), list):
            post[key] = [post[key][0], new_vocab[post[key][0]]]
    backend = Tokenizer.from_str(json.dumps(spec))
    specials = {k: getattr(tokenizer, k) for k in ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token")}
    trimmed = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=tokenizer.model_max_length,
        **{k: v for k, v in specials.items() if v is not None},
    )
    return trimmed, kept


def teacher_token_embeddings(
    model, kept: Sequence[int], cls_id: int, sep_id: int, batch_size: int = 512
) -> torch.Tensor:
    """One vector per kept token: the teacher's output for ``[CLS] token [SEP]``, at the token (model2vec's way).

    A token's row of the teacher's input embedding knows little; its contextual output, run alone, carries what the
    whole encoder makes of it. ``model`` is a transformers encoder or ``*ForSequenceClassification`` (its base);
    ``kept``, ``cls_id`` and ``sep_id`` are ids of the teacher's tokenizer. Returns (len(kept), hidden_size).
    """
    base = getattr(model, "base_model", model)
    out = []
    with torch.no_grad():
        for i in range(0, len(kept), batch_size):
            ids = torch.tensor(kept[i : i + batch_size]).unsqueeze(1)
            x = torch.cat([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)  # (B, 3)
            out.append(base(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[:, 1])
    return torch.cat(out)


def pca_project(vectors: torch.Tensor, dim: int, std: float = 0.02) -> torch.Tensor:
    """``vectors`` (N, H) -> (N, dim) on their top principal components, scaled to an overall ``std``.

    The student's embedding then starts from the teacher's token geometry at the student's width (TinyCLIP's and
    model2vec's weight inheritance, with PCA in place of a learned projection).
    """
    x = vectors.double() - vectors.double().mean(0, keepdim=True)
    k = min(dim, x.shape[1], x.shape[0])  # fewer tokens (or teacher width) than ``dim``: the rest stays zero
    _, _, v = torch.linalg.svd(x, full_matrices=False)  # (H, H) rows are components, largest first
    y = x.new_zeros(x.shape[0], dim)
    y[:, :k] = x @ v[:k].T  # (N, k)
    y = y / y.std().clamp_min(1e-8) * std  # default: the std of a fresh embedding (0.02)
    return y.float()


def example_text(config: TextConfig, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random token ids filling the whole length (no tokenizer needed), all samples carrying text."""
    low = min(5, config.vocab_size - 1)  # skip the special tokens of our WordPiece tokenizers
    ids = torch.from_numpy(rng.integers(low, config.vocab_size, (batch_size, config.max_length)))
    return {
        "input_ids": ids.long(),
        "attention_mask": torch.ones(batch_size, config.max_length, dtype=torch.long),
        "text_mask": torch.ones(batch_size, dtype=torch.bool),
    }


TEXT = register_modality(
    Modality(
        name="text",
        order=0,
        config=TextConfig,
        preprocessor=TextPreprocessor,
        stem=TextStem,
        input_keys=("input_ids", "attention_mask", "text_mask"),
        pipeline_tag="text-classification",
        example=example_text,
        needs_tokenizer=True,
        stem_takes_act=False,
    )
)
