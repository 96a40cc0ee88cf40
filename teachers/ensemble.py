"""Several teachers: one or more per modality, routed by modality and averaged within a modality.

``TeacherSet({"text": [t1], "image": [t2, t3]}, ensemble="probs")(samples)`` returns
``{"text": TeacherOutput, "image": TeacherOutput}``. Within a modality:

- ``ensemble="logits"``: logits are the weighted mean of the teachers' logits.
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

from collections.abc import Mapping, Sequence

import torch

from zoo.teachers.base import TeacherOutput, hash_json

ENSEMBLES = ("probs", "logits")


class TeacherSet:
    """Teachers routed by modality, averaged within a modality.

    Args:
        teachers: modality -> teacher or list of teachers (adapters or cached teachers).
        ensemble: "probs" (mean of probabilities, default) or "logits" (mean of logits).
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
