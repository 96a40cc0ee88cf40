"""Cross-fitted teachers: honest soft targets on the data the teachers were trained on.

A teacher trained on the student's own training rows has memorised them: its outputs there are near one-hot
and carry none of the "dark knowledge" (which wrong classes are close) that distillation transfers, so KD on
those rows is label smoothing at best. Cross-fitting (out-of-fold prediction, as in stacking) fixes that: the
train rows are split into K folds, teacher k is trained on every fold but k, and a train row is labelled by the
one teacher that never saw it. Rows outside the folds (validation, test, new data) get the K teachers' mean
probability, an ordinary ensemble.

Layout of a cross-fitted teacher folder (written by ``zoo distill`` when ``teacher_training.folds > 1``)::

    <folder>/crossfit.json     {"folds": K, "assignment": {sample id: fold}}
    <folder>/fold-0/ ...       a teacher folder (load_teacher loads it), trained without fold 0
    <folder>/fold-1/ ...

Features and embeddings of different fold teachers live in different spaces, so a cross-fitted teacher offers
logits only (feature and embedding distillation need a single teacher).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from zoo.io import atomic_write_json
from zoo.teachers.base import ComposedTeacher, Teacher, TeacherOutput, hash_json

CROSSFIT_FILE = "crossfit.json"


def is_crossfit_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CROSSFIT_FILE).is_file()


def tokenizer_folder(path: str | os.PathLike) -> Path:
    """The tokenizer a student takes from a teacher folder: the folder's own, or fold 0's for a cross-fitted teacher
    (each fold keeps the processor it was trained with; the student needs one, and fold 0's is as good as any)."""
    return Path(path) / "fold-0" if is_crossfit_folder(path) else Path(path)


def assign_folds(ids: Sequence, folds: int, seed: int) -> dict[str, int]:
    """Sample id -> fold, balanced and fixed by ``seed`` (a seeded permutation dealt round-robin)."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds; got {folds}.")
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    return {str(ids[i]): k % folds for k, i in enumerate(order)}


class CrossFitTeacher(ComposedTeacher):
    """K teachers of one modality; a sample of fold k is answered by teacher k (trained without fold k).

    It has the teacher interface the trainer and the teacher cache use (``__call__``, ``modality``,
    ``num_classes``, ``fingerprint``...), with logits only.
    """

    kind = "cross-fitted teacher"
    logits_only_because = " (its fold teachers' features live in different spaces)"

    def __init__(self, teachers: Sequence[Teacher], assignment: dict[str, int], name: str = "crossfit"):
        super().__init__()
        if len(teachers) < 2:
            raise ValueError(f"CrossFitTeacher needs at least 2 fold teachers; got {len(teachers)}.")
        first = teachers[0]
        for t in teachers[1:]:
            if (t.modality, t.num_classes) != (first.modality, first.num_classes):
                raise ValueError(
                    f"fold teachers disagree: {first.name} ({first.modality}, {first.num_classes} classes) vs "
                    f"{t.name} ({t.modality}, {t.num_classes} classes); they must be the same task trained on "
                    "different folds."
                )
        bad = sorted({k for k in assignment.values() if not 0 <= k < len(teachers)})
        if bad:
            raise ValueError(f"fold assignment names folds {bad}; there are {len(teachers)} fold teachers.")
        self.folds = nn.ModuleList(teachers)
        self.assignment = {str(k): int(v) for k, v in assignment.items()}
        self.modality = first.modality
        self.num_classes = first.num_classes
        self.id2label = first.id2label
        self.name = name
        self.feature_layers: list[str] = []
        # each fold keeps its own processor (a tokenizer trained per fold may number its tokens differently)
        self.preprocess_hash = hash_json([t.preprocess_hash for t in teachers])
        self.identity = {
            "adapter": type(self).__name__,
            "folds": [t.fingerprint for t in teachers],
            "assignment": hash_json(self.assignment),
            "preprocess_hash": self.preprocess_hash,
        }
        self.fingerprint = hash_json(self.identity)

    @property
    def parts(self) -> Sequence[Teacher]:
        return self.folds

    def forward(self, samples: Sequence[dict], layers: Sequence[str] | None = None, pool: bool = False):
        """Logits per sample from the teacher that did not see it; the mean probability for unseen ids."""
        self._check_layers(layers)
        outputs = [t(samples, layers=[]) for t in self.folds]  # each fold through its own processor
        mask = outputs[0].mask
        outs = [o.logits for o in outputs]  # K x (B, C)
        probs = torch.stack([o.float().softmax(-1) for o in outs])  # (K, B, C)
        logits = probs.mean(0).clamp_min(torch.finfo(torch.float32).tiny).log()
        for i, s in enumerate(samples):
            fold = self.assignment.get(str(s.get("id")))
            if fold is not None:
                logits[i] = outs[fold][i].float()
        logits = logits * mask.unsqueeze(-1).to(logits.dtype)
        return TeacherOutput(logits=logits, features={}, embeds=None, mask=mask)


def save_assignment(folder: str | os.PathLike, assignment: dict[str, int], folds: int) -> None:
    atomic_write_json(Path(folder) / CROSSFIT_FILE, {"folds": folds, "assignment": assignment})
