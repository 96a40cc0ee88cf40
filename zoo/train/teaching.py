"""The teacher side of a ``zoo distill`` run: loading the teachers and checking them against the data's labels,
their validation accuracy before any training, the teacher-output cache over the train split, the loss module
sized from the cached outputs, and the per-step lookups (``teachers_for``, ``loss_scales``).

``Run`` (``zoo.train.run``) takes these methods from ``RunTeachers``; they read the run's recipe, rows, teachers
and accelerator.
"""

from __future__ import annotations

import torch

from zoo.bench import accuracy
from zoo.losses import ALIGNMENT_PARTS, DistillationLoss
from zoo.modalities import IGNORE_INDEX
from zoo.teachers import TeacherCache, load_teacher, shared_cache_dir
from zoo.train.report import carries
from zoo.train.rows import SampleList


class RunTeachers:
    """What a run does with its teachers (mixed into ``zoo.train.run.Run``)."""

    def check_teachers(self, margin: float = 0.05) -> None:
        """Each classifier teacher's validation accuracy, before any distillation: a teacher within ``margin`` of
        chance or below the majority class's share teaches less than the labels do, so say so and what to do."""
        rows = self.rows.get("validation")
        if rows is None or not len(rows):
            return
        samples = [rows.raw(i) for i in range(len(rows))]
        labels = [int(s["label"]) for s in samples if s.get("label") is not None]
        if not labels:
            return
        chance = 1.0 / self.num_classes
        majority = max(labels.count(k) for k in set(labels)) / len(labels)
        for m, t in self.teachers.items():
            if t.num_classes != self.num_classes:
                continue  # an encoder: no predictions to measure
            mine = [s for s in samples if carries(t, s) and s.get("label") is not None]
            if not mine:
                continue
            acc = accuracy(lambda batch, t=t: t(batch, layers=[]).logits, mine, batch_size=64)
            self.teacher_validation[m] = round(acc, 6)
            self.log(
                f"teacher {m}: validation accuracy {100 * acc:.2f}% (chance {100 * chance:.2f}%, majority class "
                f"{100 * majority:.2f}%)"
            )
            if acc < chance + margin or acc < majority:
                self.warn(
                    f"teacher {m} reaches {100 * acc:.2f}% on validation, "
                    + (f"within {100 * margin:.0f} points of chance ({100 * chance:.2f}%)" if acc < chance + margin
                       else f"below the majority class's share ({100 * majority:.2f}%)")
                    + ": distilling it can make the student worse than training on the labels alone. Fine-tune a "
                    f"pretrained model on this data (`zoo teacher MODEL --data ... --out DIR`) and pass "
                    f"--teacher {m}=DIR."
                )  # fmt: skip

    def check_teachers_against(self, raw_accuracy: float | None) -> None:
        """After the raw-student baseline: a teacher below the student trained on the labels alone."""
        if raw_accuracy is None:
            return
        for m, acc in self.teacher_validation.items():
            if acc < raw_accuracy:
                self.warn(
                    f"teacher {m} ({100 * acc:.2f}% on validation) is below the raw student trained on the labels "
                    f"alone ({100 * raw_accuracy:.2f}%): the distilled student is likely to end below it too. "
                    f"Fine-tune a pretrained model (`zoo teacher MODEL --data ... --out DIR`) and pass "
                    f"--teacher {m}=DIR."
                )

    def _teacher_cache(self) -> dict:
        """Teacher outputs over the train split, computed once (main process) and looked up by sample id."""
        train = self.rows["train"]
        samples = SampleList(train)
        fingerprint = self.data.fingerprint("train")
        if self.recipe.data.max_train_samples:
            fingerprint += f"-first{len(train)}"
        root = self.out / "teacher_cache" if self.recipe.train.teacher_cache == "run" else shared_cache_dir()
        caches = {}
        for m, teacher in self.teachers.items():
            layers = _cache_layers(teacher, self.recipe.losses.feature_layers.get(m))
            caches[m] = TeacherCache(root, teacher, samples, features=layers, dataset_fingerprint=fingerprint)
            if self.is_main and not caches[m].complete:
                self.log(f"teacher cache: running teacher {m!r} over {len(samples)} train samples ({caches[m].path})")
                caches[m].precompute(batch_size=64, progress=self.progress, log=self.log)
            elif self.is_main:
                self.log(f"teacher cache: teacher {m!r} outputs read from {caches[m].path}")
        self.accelerator.wait_for_everyone()
        return {m: c.as_teacher() for m, c in caches.items()}

    def _criterion(self):
        r = self.recipe
        ids = self.rows["train"].ids[: min(8, len(self.rows["train"]))]
        specs = {}
        for m, cached in self.cached.items():
            out = cached.lookup(ids)
            specs[m] = {
                "modality": cached.modality,
                "num_classes": cached.num_classes,
                "features": {k: tuple(v.shape[1:]) for k, v in out.features.items() if "embeds" not in k},
                "embeds": None if out.embeds is None else int(out.embeds.shape[-1]),
                "similarity": cached.similarity_scale is not None,
            }
        torch.manual_seed(r.seed + 1)
        return DistillationLoss(
            self.student.config.embed_dim,
            self.student.config.depth,
            specs,
            feature_layers=r.losses.feature_layers,
            feature_loss=r.losses.feature_loss,
            embedding_loss=r.losses.embedding_loss,
            weights={k: getattr(r.losses, k) for k in ALIGNMENT_PARTS},
            modality_weights=r.losses.modality_weights,
            num_classes=self.num_classes,
            fusion=r.losses.teacher_fusion,
        )

    def loss_scales(self, labels: torch.Tensor, teachers: dict) -> dict[str, float]:
        """Weights that turn each process's per-row means into one mean over the global batch.

        CE averages over the labelled rows, KD over the rows a teacher covers (plus labelled rows no teacher
        covers). Their counts differ between the processes' halves of a batch (partial labels, missing
        modalities), and DDP averages gradients with equal weights, so a plain mean of means would weight rows
        unevenly. Scaling by n_local * P / n_global makes the averaged gradient that of the global mean.
        """
        acc = self.accelerator
        labelled = labels != IGNORE_INDEX
        covered = torch.zeros_like(labelled)
        if teachers:
            rows = self.criterion.teacher_log_probs(teachers, 1.0, labels.shape[0])[1]
            if rows is not None:
                covered = rows.to(labelled.device, torch.bool)
        counts = torch.tensor([float(labelled.sum()), float((covered | labelled).sum())], device=acc.device)
        total = acc.reduce(counts.clone(), "sum")
        scale = torch.where(total > 0, counts * acc.num_processes / total.clamp(min=1.0), torch.ones_like(counts))
        return {"ce": float(scale[0]), "kd": float(scale[1])}

    def teachers_for(self, ids: list[str]) -> dict:
        device = self.accelerator.device
        return {m: c.lookup(ids).to(device) for m, c in self.cached.items()}


def _cache_layers(teacher, wanted: dict | None) -> list[str]:
    """Teacher feature layers to cache: those the recipe maps, else the teacher's last one."""
    layers = list(getattr(teacher, "feature_layers", []) or [])
    layers = [n for n in layers if not n.endswith("embeds")]
    if wanted:
        return sorted(set(wanted.values()))
    return layers[-1:]


def load_teachers(paths: dict[str, str], num_classes: int, id2label: dict, log) -> dict:
    """Load each teacher (``zoo.teachers.load_teacher``) and check it predicts the data's classes."""
    teachers = {}
    for modality, path in paths.items():
        t = load_teacher(path, modality=modality)
        if t.num_classes is not None and t.num_classes != num_classes:
            raise ValueError(
                f"teacher {modality}={path} predicts {t.num_classes} classes; the data has {num_classes}. "
                "Fine-tune the teacher on these labels first, or pass an encoder (its embeddings are distilled)."
            )
        theirs = {int(k): str(v) for k, v in (t.id2label or {}).items()}
        ours = {int(k): str(v) for k, v in id2label.items()}
        if theirs and theirs != ours:
            if sorted(theirs.values()) == sorted(ours.values()) and len(set(theirs.values())) == len(theirs):
                by_name = {v: k for k, v in theirs.items()}
                if not hasattr(t, "relabel"):
                    raise ValueError(
                        f"teacher {modality}={path} has the data's labels in another order ({theirs}); fine-tune it "
                        f"on the data's order {ours}."
                    )
                t.relabel([by_name[ours[i]] for i in range(len(ours))])  # train on targets that mean the same class
                log(f"teacher {modality}: labels {theirs} reordered by name to the data's {ours}")
            else:
                log(f"warning: teacher {modality} labels {theirs} differ from the data's {ours}; order must match")
        teachers[modality] = t
        log(f"teacher {modality}: {t.name} ({sum(p.numel() for p in t.parameters()) / 1e6:.2f}M params)")
    return teachers
