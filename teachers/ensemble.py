"""Several teachers: one or more per modality, routed by modality and averaged within a modality.

``TeacherSet({"text": [t1], "image": [t2, t3]}, ensemble="probs")(samples)`` returns
``{"text": TeacherOutput, "image": TeacherOutput}``. Within a modality:

- ``ensemble="logits"``: logits are the weighted mean of the teachers' logits.
- ``ensemble="logprobs"``: logits are the weighted mean of the teachers' log-probabilities (a weighted geometric
  mean of their distributions, renormalised by the softmax; product-of-experts style: a class either teacher rules
  out stays unlikely).
- ``ensemble="probs"``: logits are ``T * log(mean_j softmax(z_j / T))``, so ``softmax(logits / T)`` is exactly
  the weighted mean of the teachers' distributions at the ensemble's ``temperature`` T (1 by default). At
  another temperature T' the KD target ``softmax(logits / T')`` is that mixture re-tempered, not the mean of the
  teachers' T'-tempered distributions: build the set with the temperature the KD loss uses.

Means are per sample over the teachers that carry the sample (``mask``). Features and embeddings are not
averaged (the teachers' spaces differ): with several teachers they are returned as features named
``"<j>/<layer>"`` and ``"<j>/embeds"`` for the j-th teacher of the modality, and ``embeds`` is None. A cached
teacher (``TeacherCache.as_teacher()``) can stand wherever a teacher can.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from zoo.io import atomic_write_json
from zoo.teachers.base import ComposedTeacher, TeacherOutput, hash_json

ENSEMBLES = ("probs", "logits", "logprobs")


class TeacherSet:
    """Teachers routed by modality, averaged within a modality.

    Args:
        teachers: modality -> teacher or list of teachers (adapters or cached teachers).
        ensemble: "probs" (mean of probabilities, default), "logits" (mean of logits) or "logprobs" (mean of
            log-probabilities).
        weights: modality -> one weight per teacher (default equal); normalised per sample.
        temperature: temperature at which "probs" averages the distributions.
    """

    def __init__(
        self,
        teachers: Mapping[str, object | Sequence[object]],
        ensemble: str = "probs",
        weights: Mapping[str, Sequence[float]] | None = None,
        temperature: float = 1.0,
    ):
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble {ensemble!r}: expected one of {list(ENSEMBLES)}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}.")
        self.teachers: dict[str, list] = {}
        for modality, ts in teachers.items():
            ts = list(ts) if isinstance(ts, (list, tuple)) else [ts]
            if not ts:
                raise ValueError(f"TeacherSet: modality {modality!r} has no teacher.")
            for t in ts:
                if t.modality != modality:
                    raise ValueError(
                        f"teacher {t.name!r} takes modality {t.modality!r}; it is listed under {modality!r}."
                    )
            classes = {t.num_classes for t in ts if t.num_classes is not None}
            if len(classes) > 1:
                raise ValueError(
                    f"teachers of modality {modality!r} disagree on the class count {sorted(classes)}: "
                    f"{[(t.name, t.num_classes) for t in ts]}; an ensemble needs the same classes in the same order."
                )
            self.teachers[modality] = ts
        self.weights = {}
        for modality, ts in self.teachers.items():
            w = list((weights or {}).get(modality, [1.0] * len(ts)))
            if len(w) != len(ts) or any(x < 0 for x in w) or sum(w) <= 0:
                raise ValueError(
                    f"weights for {modality!r} must be {len(ts)} non-negative numbers, not all 0; got {w}."
                )
            self.weights[modality] = w
        self.ensemble = ensemble
        self.temperature = float(temperature)

    @property
    def modalities(self) -> list[str]:
        return list(self.teachers)

    @property
    def fingerprint(self) -> str:
        """Hash of every teacher's fingerprint and of the ensemble settings."""
        return hash_json(
            {
                "teachers": {m: [t.fingerprint for t in ts] for m, ts in self.teachers.items()},
                "weights": self.weights,
                "ensemble": self.ensemble,
                "temperature": self.temperature,
            }
        )

    def __call__(
        self, samples: Sequence[dict], layers: Mapping[str, Sequence[str]] | None = None, pool: bool = False
    ) -> dict[str, TeacherOutput]:
        """Run every teacher on the samples of its modality; ``layers``: modality -> feature names to return
        (names as in the output: ``"<j>/<layer>"`` for ensembles). A modality no sample carries is skipped."""
        outputs = {}
        for modality, ts in self.teachers.items():
            if not any(t.carries(s) for s in samples for t in ts):
                continue
            wanted = None if layers is None or modality not in layers else list(layers[modality])
            if len(ts) == 1:
                outputs[modality] = ts[0](samples, layers=wanted, pool=pool)
                continue
            outs = []
            for j, t in enumerate(ts):
                sub = None if wanted is None else [n.split("/", 1)[1] for n in wanted if n.startswith(f"{j}/")]
                outs.append(t(samples, layers=sub, pool=pool))
            outputs[modality] = self.combine(outs, self.weights[modality])
        return outputs

    def combine(self, outs: Sequence[TeacherOutput], weights: Sequence[float]) -> TeacherOutput:
        """Average the logits of several outputs for the same batch (see the module docstring)."""
        mask = torch.stack([o.mask for o in outs]).any(0)
        with_logits = [(o, w) for o, w in zip(outs, weights) if o.logits is not None]
        logits = None
        if with_logits:
            # (J, B) per-sample weights: zero where a teacher does not carry the sample.
            w = torch.stack([o.mask.to(o.logits.dtype) * w for o, w in with_logits])
            w = w / w.sum(0).clamp_min(1e-12)
            shape = (len(with_logits), w.shape[1]) + (1,) * (with_logits[0][0].logits.dim() - 1)
            w = w.view(shape)
            z = torch.stack([o.logits for o, _ in with_logits])  # (J, B, C)
            if self.ensemble == "logits":
                logits = (w * z).sum(0)
            elif self.ensemble == "logprobs":
                logits = (w * torch.log_softmax(z.float(), dim=-1)).sum(0)
            else:
                t = self.temperature
                probs = (w * torch.softmax(z / t, dim=-1)).sum(0)
                logits = t * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
            logits = logits * mask.view((-1,) + (1,) * (logits.dim() - 1)).to(logits.dtype)
        features = {}
        for j, o in enumerate(outs):
            features.update({f"{j}/{k}": v for k, v in o.features.items()})
            if o.embeds is not None:
                features[f"{j}/embeds"] = o.embeds
        return TeacherOutput(logits=logits, features=features, embeds=None, mask=mask)


# ------------------------------------------------------------------------------------- an ensemble teacher folder
ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "zoo-ensemble-1"


def is_ensemble_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


class EnsembleTeacher(ComposedTeacher):
    """Several teachers of one modality and one label set as one teacher: ``TeacherSet.combine`` of their outputs.

    The folder ``zoo teacher ensemble:A,B --out DIR`` writes (``fit_ensemble``) loads as one (``load_teacher``), so a
    run, its teacher cache and ``--teacher MODALITY=DIR`` see a single teacher. Logits only: the members' features
    live in different spaces (a TF-IDF member has none).
    """

    kind = "ensemble teacher"

    def __init__(self, members: Sequence, weights: Sequence[float], combine: str = "logprobs", name: str = "ensemble"):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble teacher needs at least 2 members; got {len(members)}.")
        first = members[0]
        for t in members[1:]:
            if (t.modality, t.num_classes) != (first.modality, first.num_classes):
                raise ValueError(
                    f"ensemble members disagree: {first.name} ({first.modality}, {first.num_classes} classes) vs "
                    f"{t.name} ({t.modality}, {t.num_classes} classes); members need one modality and one label set."
                )
            names = {int(k): v for k, v in (t.id2label or {}).items()}
            if first.id2label and names and names != {int(k): v for k, v in first.id2label.items()}:
                raise ValueError(f"ensemble members {first.name} and {t.name} order their labels differently.")
        self.members = nn.ModuleList(members)
        self._set = TeacherSet({first.modality: list(members)}, ensemble=combine,
                               weights={first.modality: list(weights)})  # fmt: skip
        self.weights = self._set.weights[first.modality]
        self.combine_kind = combine
        self.modality, self.num_classes, self.id2label = first.modality, first.num_classes, first.id2label
        self.name = name
        self.feature_layers: list[str] = []
        self.preprocess_hash = hash_json([t.preprocess_hash for t in members])
        self.identity = {
            "adapter": type(self).__name__,
            "members": [t.fingerprint for t in members],
            "weights": self.weights,
            "combine": combine,
            "preprocess_hash": self.preprocess_hash,
        }
        self.fingerprint = hash_json(self.identity)

    @property
    def parts(self) -> Sequence:
        return self.members

    def combine(self, outs: Sequence[TeacherOutput]) -> TeacherOutput:
        """The ensemble's output from its members' outputs for one batch (logits only)."""
        out = self._set.combine(outs, self.weights)
        return TeacherOutput(logits=out.logits, features={}, embeds=None, mask=out.mask)

    def forward(self, samples: Sequence[dict], layers: Sequence[str] | None = None, pool: bool = False):
        self._check_layers(layers)
        return self.combine([t(samples, layers=[]) for t in self.members])


def load_ensemble(folder: str | os.PathLike, load, **kwargs) -> EnsembleTeacher:
    """``folder/ensemble.json`` and its member folders, each loaded with ``load`` (``load_teacher``)."""
    folder = Path(folder)
    try:
        spec = json.loads((folder / ENSEMBLE_FILE).read_text(encoding="utf-8"))
        members, weights, combine = list(spec["members"]), list(spec["weights"]), spec.get("combine", "logprobs")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{folder / ENSEMBLE_FILE} is not a valid ensemble description ({e}).") from e
    missing = [m for m in members if not (folder / m).is_dir()]
    if missing:
        raise FileNotFoundError(f"ensemble teacher {folder} is missing its member folders {missing}.")
    teachers = [load(folder / m, **kwargs) for m in members]
    return EnsembleTeacher(teachers, weights, combine, name=folder.name)


def _copy_folder(src: Path, dst: Path) -> None:
    """``src`` into ``dst``, files hard-linked where the file system allows (a teacher can weigh 100 MB)."""

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def fit_ensemble(members: Sequence[str], data, out: str | os.PathLike, load, log=print, combine: str = "logprobs",
                 grid: int = 10) -> dict:  # fmt: skip
    """Write the ensemble of the teacher folders ``members`` into ``out`` (copies as ``member-<j>``).

    With two members the weight of the second is chosen on the validation split among 0, 1/grid, ..., 1 (ties go
    to the weight nearest 1/2); with more, or without validation rows, the weights are equal. Returns
    ``{"weights", "validation_accuracy", "members": [validation accuracy of each]}``.
    """
    out = Path(out)
    teachers = [load(m) for m in members]
    check = EnsembleTeacher(teachers, [1.0] * len(teachers), combine)  # the members fit together, before any copy
    val = [r for r in (data.splits["validation"] if "validation" in data.splits else []) if teachers[0].carries(r)]
    weights, best, each = [1.0] * len(teachers), None, [None] * len(teachers)
    if val:
        outs = [[t(val[i : i + 64], layers=[]) for i in range(0, len(val), 64)] for t in teachers]
        y = torch.tensor([int(r["label"]) for r in val])
        each = [float((torch.cat([o.logits for o in os_]).argmax(-1) == y).float().mean()) for os_ in outs]

        def acc(w):
            z = torch.cat([check._set.combine([o[b] for o in outs], w).logits for b in range(len(outs[0]))])
            return float((z.argmax(-1) == y).float().mean())

        if len(teachers) == 2:
            scored = [(acc([1 - k / grid, k / grid]), -abs(k / grid - 0.5), k / grid) for k in range(grid + 1)]
            best, _, w2 = max(scored)
            weights = [round(1 - w2, 6), round(w2, 6)]
            log(f"zoo teacher ensemble: validation accuracy by weight of {members[1]}: "
                + ", ".join(f"{w:.1f}: {100 * a:.2f}%" for a, _, w in scored))  # fmt: skip
        else:
            best = acc(weights)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for j, m in enumerate(members):
        dst = out / f"member-{j}"
        if dst.exists():
            shutil.rmtree(dst)
        _copy_folder(Path(m), dst)
        names.append(dst.name)
    atomic_write_json(out / ENSEMBLE_FILE, {"format": ENSEMBLE_FORMAT, "members": names, "weights": weights,
                                            "combine": combine, "sources": [str(m) for m in members]})  # fmt: skip
    return {"weights": weights, "validation_accuracy": best, "members": each}
