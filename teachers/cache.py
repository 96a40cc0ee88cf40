"""Teacher-output cache: run a teacher over a dataset once, store its outputs as safetensors shards, look them up
by sample id at every training step.

Layout: ``<root>/<teacher name>-<key>/`` holds ``manifest.json`` and ``shard-00000.safetensors``, ... The key
hashes the dataset fingerprint, the teacher fingerprint, the preprocessing hash, the storage format and the
augmentation seed, so a changed teacher or preprocessing lands in a new folder (recomputed; old shards are never
mixed in). Shard ``s`` holds dataset rows ``[s * shard_size, (s + 1) * shard_size)`` with their sample ids in
its metadata. Each shard is written to a temporary file and renamed, then recorded in the manifest (also
renamed into place), so an interrupted ``precompute`` resumes at the first unrecorded shard.

Stored per sample: ``mask``; full ``logits`` when the class count is at most ``max_full_classes``, else the
top-k logits ``topk_values`` / ``topk_indices`` and ``rest_lse``, the log-sum-exp of the other C - k logits;
``embeds``; and the chosen ``features`` pooled to (D,) with the teacher's pooling.

Temperature from top-k + rest-logsumexp. With z the C logits, K the top-k indices, n = C - k and
R = logsumexp_{j not in K} z_j, the softmax at T = 1 is exact: p_i = exp(z_i - L) for i in K and the rest
holds exp(R - L), with L = logsumexp(z_K, R). At T != 1, p_i(T) = exp(z_i / T) / (sum_K exp(z_j / T) + S_T)
where S_T = sum_{j not in K} exp(z_j / T) is not determined by R. Two estimates, both exact at T = 1:

- ``"spread"`` (default): the rest mass is spread evenly, every rest class gets logit r = R - log n, so
  S_T ~ n exp(r / T). It is exact when the rest logits are equal and an upper bound of S_T for T > 1 (power
  mean inequality). The target is a full (B, C) distribution, so KD losses need no change: ``lookup`` returns
  these dense logits (``expand_logits``) and ``softmax(logits / T)`` is the spread target at any T.
- ``"bucket"``: the rest is one "other" class with logit R, so S_T ~ exp(R / T), a lower bound for T > 1.
  The target is (B, k + 1); group the student's classes the same way with ``bucket_log_probs``.

For T > 1 the true distribution lies between the two. We default to "spread": it keeps the (B, C) shape and
errs towards a softer tail, like label smoothing; "bucket" keeps the tail's total mass honest at T = 1 only.

Random augmentation: teacher outputs of a randomly augmented sample change every epoch, so a dataset that
transforms on the fly is refused. Pass ``augment=fn(sample, generator) -> sample`` with an
``augmentation_seed`` instead: each sample gets one fixed view per seed (``augmented_view``), cached under its
own key; the trainer feeds the student the same view.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from zoo import console
from zoo.console import Progress
from zoo.teachers.base import TeacherOutput, hash_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RESTS = ("spread", "bucket")
CACHE_ENV = "ZOO_CACHE"


def shared_cache_dir() -> str:
    """The teacher caches every run shares, like the Hugging Face cache: ``$ZOO_CACHE/teacher_cache``, else
    ``$XDG_CACHE_HOME/distill-zoo/teacher_cache`` (``~/.cache/distill-zoo/teacher_cache``). A cache's folder name
    holds the hash of the dataset, teacher and preprocessing fingerprints, so runs into different output folders
    (and teachers written by ``zoo teacher``, whose fingerprint hashes their weights) find each other's outputs."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "distill-zoo"
    )
    return os.path.join(root, "teacher_cache")


# -- top-k compression ----------------------------------------------------------------------------------------
def compress_logits(logits: Tensor, k: int) -> dict[str, Tensor]:
    """(B, C) logits -> ``topk_values`` (B, k), ``topk_indices`` (B, k) and ``rest_lse`` (B,) of the others."""
    values, indices = logits.topk(k, dim=-1)
    rest = logits.scatter(-1, indices, float("-inf"))
    return {"topk_values": values, "topk_indices": indices, "rest_lse": torch.logsumexp(rest, dim=-1)}


def expand_logits(values: Tensor, indices: Tensor, rest_lse: Tensor, num_classes: int) -> Tensor:
    """Top-k + rest-logsumexp -> dense (B, C) logits with the rest spread evenly (logit R - log(C - k)).

    ``softmax(expand_logits(...) / T)`` is the "spread" KD target at temperature T; exact at T = 1.
    """
    n_rest = num_classes - values.shape[-1]
    if n_rest <= 0:
        return torch.empty_like(values).scatter_(-1, indices.long(), values)
    fill = (rest_lse - math.log(n_rest)).unsqueeze(-1)  # (B, 1)
    dense = fill.expand(-1, num_classes).clone()
    return dense.scatter_(-1, indices.long(), values)


def kd_target(
    values: Tensor, indices: Tensor, rest_lse: Tensor, num_classes: int, temperature: float, rest: str = "spread"
) -> Tensor:
    """The KD target distribution at ``temperature`` from cached top-k logits (see the module docstring).

    Returns (B, C) probabilities for ``rest="spread"``, or (B, k + 1) for ``rest="bucket"`` (the top-k
    classes in ``indices`` order, then the "other" bucket).
    """
    if rest == "spread":
        return torch.softmax(expand_logits(values, indices, rest_lse, num_classes) / temperature, dim=-1)
    if rest == "bucket":
        return torch.softmax(torch.cat([values, rest_lse.unsqueeze(-1)], -1) / temperature, dim=-1)
    raise ValueError(f"rest {rest!r}: expected one of {list(RESTS)}.")


def bucket_log_probs(student_logits: Tensor, indices: Tensor, temperature: float) -> Tensor:
    """Student log-probabilities at ``temperature`` grouped like a "bucket" target: (B, k + 1)."""
    logp = torch.log_softmax(student_logits / temperature, dim=-1)
    top = logp.gather(-1, indices.long())
    other = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.cat([top, other.unsqueeze(-1)], -1)


# -- dataset identity and augmentation ------------------------------------------------------------------------
def _update_with_value(h, value) -> None:
    if value is None:
        h.update(b"\x00none")
    elif isinstance(value, str):
        h.update(b"s" + value.encode())
    elif isinstance(value, dict):
        for k in sorted(value):
            h.update(b"k" + str(k).encode())
            _update_with_value(h, value[k])
    elif isinstance(value, (list, tuple)):
        for v in value:
            _update_with_value(h, v)
    elif isinstance(value, (np.ndarray, torch.Tensor)):
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        h.update(f"a{arr.dtype}{arr.shape}".encode() + np.ascontiguousarray(arr).tobytes())
    elif hasattr(value, "tobytes") and hasattr(value, "mode"):  # PIL image
        h.update(f"i{value.mode}{value.size}".encode() + value.tobytes())
    else:
        h.update(repr(value).encode())


def fingerprint_dataset(dataset: Sequence[dict], modalities: Sequence[str] = ("text", "image", "audio")) -> str:
    """A dataset's fingerprint: its own (``fingerprint`` / HF ``_fingerprint``), else a hash of every sample's id
    and inputs (labels excluded: the teacher does not see them). The hash reads the whole dataset once; pass
    ``dataset_fingerprint=`` to the cache to skip it."""
    own = getattr(dataset, "fingerprint", None) or getattr(dataset, "_fingerprint", None)
    if isinstance(own, str):
        return own
    h = hashlib.sha256(f"n={len(dataset)}".encode())
    for i in range(len(dataset)):
        sample = dataset[i]
        _update_with_value(h, str(_sample_id(sample, i)))
        for m in modalities:
            h.update(m.encode())
            _update_with_value(h, sample.get(m))
    return h.hexdigest()


def _sample_id(sample: dict, index: int) -> str:
    if not isinstance(sample, dict) or sample.get("id") is None:
        raise KeyError(f"dataset row {index} has no 'id'; the teacher cache looks samples up by id.")
    return str(sample["id"])


def augmented_view(sample: dict, augment: Callable, seed: int) -> dict:
    """The fixed augmented view of ``sample`` for ``seed``: ``augment(sample, generator)`` with a generator seeded
    from (seed, sample id), so the student can be fed exactly the view the teacher saw."""
    digest = hashlib.sha256(f"{seed}/{sample['id']}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return augment(dict(sample), generator)


def _refuse_on_the_fly_transform(dataset) -> None:
    fmt = getattr(dataset, "format", None)
    on_the_fly = (isinstance(fmt, dict) and fmt.get("type") == "custom") or any(
        getattr(dataset, a, None) is not None for a in ("transform", "transforms")
    )
    if on_the_fly:
        raise ValueError(
            "the dataset transforms samples on the fly (a transform / set_transform); if it is random, cached "
            "teacher outputs would not match what the student sees. Pass the dataset without the transform and "
            "give the cache augment=fn(sample, generator) with augmentation_seed=N (one fixed view per seed; use a "
            "new seed per epoch), or run the teacher online."
        )


# -- the cache ------------------------------------------------------------------------------------------------
def _atomic_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=repr)
    os.replace(tmp, path)


class TeacherCache:
    """Teacher outputs over one dataset, computed once (``precompute``) and looked up by sample id.

    Args:
        root: folder that holds caches (one subfolder per key).
        teacher: the teacher adapter (its fingerprint and preprocessing hash enter the key).
        dataset: indexable raw samples ``{"id", <modality>, ...}`` with ``len``.
        features: teacher feature layers to store, pooled to (D,); embeds are stored whenever present.
        max_full_classes: store full logits up to this many classes, else top-k + rest-logsumexp.
        topk: k for the top-k storage.
        shard_size: samples per shard file.
        dtype: storage dtype of float tensors (float32, or float16 / bfloat16 to halve the size).
        augment, augmentation_seed: cache one fixed augmented view per seed (see the module docstring).
        dataset_fingerprint: the dataset's identity, when the caller knows it (skips hashing the dataset).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        teacher,
        dataset: Sequence[dict],
        *,
        features: Sequence[str] = (),
        max_full_classes: int = 256,
        topk: int = 32,
        shard_size: int = 1024,
        dtype: torch.dtype = torch.float32,
        augment: Callable | None = None,
        augmentation_seed: int | None = None,
        dataset_fingerprint: str | None = None,
    ):
        _refuse_on_the_fly_transform(dataset)
        if augment is not None and augmentation_seed is None:
            raise ValueError(
                "augment is given without augmentation_seed: outputs of a random augmentation cannot be cached. "
                "Pass augmentation_seed=N to cache one fixed view per seed, or run the teacher online."
            )
        if shard_size < 1 or topk < 1:
            raise ValueError(f"shard_size ({shard_size}) and topk ({topk}) must be positive.")
        features = list(features)
        if teacher.similarity_scale is not None:  # CLIP pairs: logits are rebuilt from both embeddings
            features += [f for f in ("image_embeds", "text_embeds") if f not in features]
        teacher._check_layers(features)
        self.teacher, self.dataset = teacher, dataset
        self.augment, self.augmentation_seed = augment, augmentation_seed
        c = teacher.num_classes
        self.format = {
            "logits": None if c is None else ("full" if c <= max_full_classes else "topk"),
            "num_classes": c,
            "topk": min(topk, c) if c is not None and c > max_full_classes else None,
            "features": features,
            "dtype": str(dtype).removeprefix("torch."),
        }
        self.shard_size, self.dtype = shard_size, dtype
        self.dataset_fingerprint = dataset_fingerprint or fingerprint_dataset(dataset)
        augmentation = None
        if augment is not None:
            augmentation = {"fn": getattr(augment, "__qualname__", repr(augment)), "seed": augmentation_seed}
        key_parts = {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset_fingerprint,
            "teacher": teacher.fingerprint,
            "preprocess": teacher.preprocess_hash,
            "format": self.format,
            "augmentation": augmentation,
            "shard_size": shard_size,
        }
        self.key = hash_json(key_parts)
        safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", teacher.name)[-48:] or "teacher"
        self.path = os.path.join(os.fspath(root), f"{safe_name}-{self.key[:16]}")
        self.manifest = {
            **key_parts,
            "key": self.key,
            "teacher_identity": teacher.identity,
            "teacher_meta": {
                "name": teacher.name,
                "modality": teacher.modality,
                "num_classes": c,
                "id2label": teacher.id2label,
                "similarity_scale": teacher.similarity_scale,
                "preprocess_hash": teacher.preprocess_hash,
                "teacher_fingerprint": teacher.fingerprint,
            },
            "num_samples": len(dataset),
            "num_shards": math.ceil(len(dataset) / shard_size),
            "shards": {},
            "complete": False,
        }
        self._store: _Store | None = None

    @staticmethod
    def open(path: str | os.PathLike, device: str | torch.device = "cpu") -> CachedTeacher:
        """A complete cache folder -> ``CachedTeacher``, without loading the teacher or the dataset.

        The caller vouches that the folder matches the teacher and dataset (the folder name carries the key).
        """
        return CachedTeacher(_Store.load(os.fspath(path), device))

    def _read_manifest(self) -> dict:
        path = os.path.join(self.path, MANIFEST)
        if not os.path.isfile(path):
            return self.manifest
        with open(path) as f:
            found = json.load(f)
        if found.get("key") != self.key:
            raise ValueError(f"{path} belongs to cache key {found.get('key')}, not {self.key}; remove the folder.")
        return found

    def _done_shards(self, manifest: dict) -> set[int]:
        return {
            int(s) for s, info in manifest["shards"].items() if os.path.isfile(os.path.join(self.path, info["file"]))
        }

    @property
    def complete(self) -> bool:
        """Whether every shard has been computed."""
        m = self._read_manifest()
        return len(self._done_shards(m)) == m["num_shards"]

    def _samples(self, lo: int, hi: int) -> list[dict]:
        samples = [self.dataset[i] for i in range(lo, hi)]
        for i, s in zip(range(lo, hi), samples):
            _sample_id(s, i)
        if self.augment is not None:
            samples = [augmented_view(s, self.augment, self.augmentation_seed) for s in samples]
        return samples

    def _outputs_to_tensors(self, out: TeacherOutput) -> dict[str, Tensor]:
        t: dict[str, Tensor] = {"mask": out.mask.cpu()}
        if self.format["logits"] == "full":
            t["logits"] = out.logits
        elif self.format["logits"] == "topk":
            t.update(compress_logits(out.logits, self.format["topk"]))
        if out.embeds is not None:
            t["embeds"] = out.embeds
        for name in self.format["features"]:
            t[f"features.{name}"] = out.features[name]
        return {k: (v.to(self.dtype) if v.is_floating_point() else v).cpu().contiguous() for k, v in t.items()}

    def precompute(self, batch_size: int = 32, progress: bool = True, log=None, every: int = 1000) -> TeacherCache:
        """Compute the missing shards (all of them the first time; the unfinished ones after an interruption).

        A bar on a terminal (``progress``); off a terminal a ``log`` line (default: ``zoo.console.log``) every
        ``every`` samples with the rate and the ETA."""
        os.makedirs(self.path, exist_ok=True)
        manifest = self._read_manifest()
        if manifest["num_samples"] != len(self.dataset):
            raise ValueError(
                f"cache {self.path} was started for {manifest['num_samples']} samples; the dataset has "
                f"{len(self.dataset)}. Pass a new dataset_fingerprint for a changed dataset."
            )
        done = self._done_shards(manifest)
        if len(done) == manifest["num_shards"] and manifest["complete"]:
            return self  # nothing to do; leave the folder untouched
        n, size = len(self.dataset), self.shard_size
        rows_done = sum(min(size, n - s * size) for s in done)
        bar = Progress(n, rows_done, f"teacher cache {self.teacher.name}", log or console.log,
                       None if progress else False, every=every, unit="sample")  # fmt: skip
        try:
            for shard in range(manifest["num_shards"]):
                if shard in done:
                    continue
                lo, hi = shard * size, min(n, (shard + 1) * size)
                parts: list[dict[str, Tensor]] = []
                ids: list[str] = []
                for start in range(lo, hi, batch_size):
                    samples = self._samples(start, min(hi, start + batch_size))
                    ids += [str(s["id"]) for s in samples]
                    out = self.teacher(samples, layers=self.format["features"], pool=True)
                    parts.append(self._outputs_to_tensors(out))
                    bar.update(len(samples))
                if len(set(ids)) != len(ids):
                    dup = next(i for i in ids if ids.count(i) > 1)
                    raise ValueError(
                        f"sample id {dup!r} appears twice in dataset rows {lo}-{hi - 1}; ids must be unique."
                    )
                tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
                name = f"shard-{shard:05d}.safetensors"
                tmp = os.path.join(self.path, f".{name}.tmp-{os.getpid()}")
                save_file(tensors, tmp, metadata={"ids": json.dumps(ids)})
                os.replace(tmp, os.path.join(self.path, name))
                manifest["shards"][str(shard)] = {"file": name, "rows": hi - lo}
                _atomic_json(os.path.join(self.path, MANIFEST), manifest)
        finally:
            bar.close()
        manifest["complete"] = True
        _atomic_json(os.path.join(self.path, MANIFEST), manifest)
        self._store = None
        return self

    def as_teacher(self, device: str | torch.device = "cpu") -> CachedTeacher:
        """The cached outputs behind the teacher interface: ``cached(samples)`` looks up ``sample["id"]``."""
        if self._store is None:
            if not self.complete:
                m = self._read_manifest()
                raise ValueError(
                    f"teacher cache {self.path} is incomplete ({len(self._done_shards(m))} of {m['num_shards']} "
                    "shards); run precompute() first (it resumes where it stopped)."
                )
            self._store = _Store.load(self.path, device)
        return CachedTeacher(self._store)

    def lookup(self, ids: Sequence[Any]) -> TeacherOutput:
        """Teacher outputs for these sample ids, as a batch (see ``CachedTeacher.lookup``)."""
        return self.as_teacher().lookup(ids)


class _Store:
    """All shards of a cache folder, concatenated in memory, with an id -> row index."""

    def __init__(self, path: str, manifest: dict, tensors: dict[str, Tensor], ids: list[str]):
        self.path, self.manifest, self.tensors = path, manifest, tensors
        self.index = {}
        for row, sid in enumerate(ids):
            if sid in self.index:
                raise ValueError(f"teacher cache {path}: sample id {sid!r} is stored twice; ids must be unique.")
            self.index[sid] = row

    @classmethod
    def load(cls, path: str, device) -> _Store:
        mpath = os.path.join(path, MANIFEST)
        if not os.path.isfile(mpath):
            raise FileNotFoundError(f"{path} is not a teacher cache (no {MANIFEST}); run TeacherCache.precompute().")
        with open(mpath) as f:
            manifest = json.load(f)
        shards = [manifest["shards"].get(str(s)) for s in range(manifest["num_shards"])]
        if not manifest.get("complete") or None in shards:
            raise ValueError(f"teacher cache {path} is incomplete; run precompute() (it resumes where it stopped).")
        parts: dict[str, list[Tensor]] = {}
        ids: list[str] = []
        for info in shards:
            with safe_open(os.path.join(path, info["file"]), framework="pt") as f:
                ids += json.loads(f.metadata()["ids"])
                for k in f.keys():
                    parts.setdefault(k, []).append(f.get_tensor(k))
        tensors = {
            k: (torch.cat(v).float() if v[0].is_floating_point() else torch.cat(v)).to(device) for k, v in parts.items()
        }
        return cls(path, manifest, tensors, ids)


class CachedTeacher:
    """Cached teacher outputs behind the teacher interface (``modality``, ``num_classes``, ``fingerprint``, ...).

    ``cached(samples)`` and ``lookup(ids)`` return ``TeacherOutput`` batches on the cache's device: logits
    (dense; top-k entries expanded with the "spread" rule), embeds, the cached features (pooled) and mask.
    """

    def __init__(self, store: _Store):
        self.store = store
        meta = store.manifest["teacher_meta"]
        self.name = meta["name"]
        self.modality = meta["modality"]
        self.num_classes = meta["num_classes"]
        self.id2label = {int(k): v for k, v in meta["id2label"].items()} if meta["id2label"] else None
        self.similarity_scale = meta["similarity_scale"]
        self.fingerprint = meta["teacher_fingerprint"]
        self.preprocess_hash = meta["preprocess_hash"]
        self.format = store.manifest["format"]
        self.feature_layers = list(self.format["features"])
        self.path = store.path

    def carries(self, sample: dict) -> bool:
        if self.modality == "image-text":
            return sample.get("image") is not None and sample.get("text") is not None
        return sample.get(self.modality) is not None

    def rows(self, ids: Sequence[Any]) -> Tensor:
        """Row indices of the ids in the cache; a KeyError naming the first unknown id."""
        index = self.store.index
        try:
            rows = [index[str(i)] for i in ids]
        except KeyError as e:
            raise KeyError(
                f"sample id {e.args[0]!r} is not in teacher cache {self.path}; precompute the cache over the dataset "
                "the trainer reads (same ids)."
            ) from None
        return torch.tensor(rows, dtype=torch.long, device=self.store.tensors["mask"].device)

    def lookup_raw(self, ids: Sequence[Any]) -> dict[str, Tensor]:
        """The stored tensors for these ids (``topk_values`` / ``topk_indices`` / ``rest_lse`` when top-k)."""
        rows = self.rows(ids)
        return {k: v.index_select(0, rows) for k, v in self.store.tensors.items()}

    def lookup(self, ids: Sequence[Any]) -> TeacherOutput:
        """Teacher outputs for these sample ids, as one batch."""
        raw = self.lookup_raw(ids)
        mask = raw["mask"]
        features = {k.removeprefix("features."): v for k, v in raw.items() if k.startswith("features.")}
        logits = raw.get("logits")
        if "topk_values" in raw:
            logits = expand_logits(raw["topk_values"], raw["topk_indices"], raw["rest_lse"], self.num_classes)
        if self.similarity_scale is not None:
            logits = self.similarity_scale * features["image_embeds"] @ features["text_embeds"].T
            logits = logits * (mask[:, None] & mask[None, :]).to(logits.dtype)
        return TeacherOutput(logits=logits, features=features, embeds=raw.get("embeds"), mask=mask)

    def kd_target(self, ids: Sequence[Any], temperature: float, rest: str = "spread") -> Tensor:
        """KD target distribution at ``temperature``: softmax of full logits, or the top-k reconstruction
        (``rest="spread"`` (B, C) or ``"bucket"`` (B, k + 1); see the module docstring)."""
        raw = self.lookup_raw(ids)
        if "topk_values" in raw:
            return kd_target(
                raw["topk_values"], raw["topk_indices"], raw["rest_lse"], self.num_classes, temperature, rest
            )
        if "logits" not in raw:
            raise ValueError(f"teacher cache {self.path} stores no logits (teacher {self.name!r} is not a classifier).")
        return torch.softmax(raw["logits"] / temperature, dim=-1)

    def __call__(
        self, samples: Sequence[dict], layers: Sequence[str] | None = None, pool: bool = True
    ) -> TeacherOutput:
        """Look up ``sample["id"]`` of each sample; features are the cached (pooled) ones, ``layers`` a subset."""
        out = self.lookup([s["id"] for s in samples])
        if layers is not None:
            missing = [n for n in layers if n not in out.features]
            if missing:
                raise ValueError(f"teacher cache {self.path} holds features {self.feature_layers}, not {missing}.")
            out.features = {n: out.features[n] for n in layers}
        return out
