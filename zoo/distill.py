"""The distillation trainer and the ``zoo distill`` / ``zoo eval`` commands.

``zoo distill [RECIPE] [--data SOURCE] [--teacher MODALITY=PATH ...] [--student NAME] [--out DIR] [--resume]
[key=value ...]`` runs a recipe (``zoo.recipe``) top to bottom:

1. data (``zoo.data``), teachers (given, or trained here when none are: the offline quickstart), the student and
   its tokenizer, the teacher-output cache over the train split (``zoo.teachers.TeacherCache``);
2. the raw-student baseline: the same student, CE only, as many steps as the distillation stages together;
3. the stages: pretrain -> soft_distill -> mixed_distill (the float "distilled" student, saved at the top of the
   output folder) -> prune -> quant_finetune -> hardware_adapt, each with its loss weights, temperature schedule
   and learning rate; the adaptive controller (``zoo.controller``) scales the distillation term in
   mixed_distill; the accuracy guard rolls a compression stage back when validation accuracy drops;
4. measurements (``zoo.bench``): metrics.json (teacher, raw_student, distilled, ... on the test split),
   metrics.jsonl, training_curves.png, the model card (``zoo.cards``) and the comparison table.

The loop is one ``accelerate`` loop (``with accelerator.accumulate``, ``accelerator.backward``,
``gather_for_metrics``, ``skip_first_batches``); checkpoints go through ``zoo.checkpoint`` (safetensors + JSON)
rather than accelerate's pickled ``save_state``. ``torchrun --nproc_per_node 2 -m zoo.cli distill ...`` runs the
same code on two CPU processes (gloo, one torch thread each). In accelerate 1.15,
``accelerate launch --cpu --num_processes 2`` starts one process unless mpirun is set up (``--mpirun_hostfile``).
Each global batch of ``data.batch_size`` rows is split across the processes (``split_batches``) and shuffled by a
seeded sampler, so the processes together see the batches one process would and the learning rate stays the
same: results match a one-process run up to float summation order.

Output folder::

    OUT/config.json, model.safetensors, tokenizer*    the distilled student
    OUT/raw_student/                                  the CE-only baseline
    OUT/pruned/, OUT/int8/, OUT/hardware/             later stages (when they ran)
    OUT/teachers/<modality>/                          teachers trained here (quickstart)
    OUT/metrics.json, metrics.jsonl, training_curves.png, README.md
    OUT/checkpoints/<phase>/step-<n>/                 resume points (zoo.checkpoint: safetensors + JSON)
    OUT/teacher_cache/                                cached teacher outputs
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from zoo.modalities import IGNORE_INDEX
from zoo.recipe import DISTILL_STAGES, Recipe, Stage, TeacherTraining, load_recipe

STATE_NAME = "run_state.json"
JSONL_NAME = "metrics.jsonl"
STOP_ENV = "ZOO_STOP_AFTER_STEPS"  # simulate a crash after this many optimizer steps (resume tests)
MATERIALIZE_MAX = 20000  # splits up to this many rows are decoded and preprocessed once, up front


def _launched_processes() -> int:
    """How many processes the launcher (torchrun, mpirun) started, from its environment."""
    names = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return max(int(os.environ.get(n) or 1) for n in names)


class StopRun(Exception):
    """Raised when a run stops on purpose (``stop_after_steps``); the last checkpoint lets ``--resume`` go on."""


# ------------------------------------------------------------------------------------------------- the model
class DistillModule(nn.Module):
    """Student + the teacher-term module (projectors), trained together: one module for accelerate / DDP.

    ``forward`` returns a dict of scalar loss terms with the weighted total under ``"loss"``.
    """

    def __init__(self, student: nn.Module, criterion: nn.Module):
        super().__init__()
        self.student = student
        self.criterion = criterion

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        labels: torch.Tensor,
        teachers: dict | None = None,
        temperature: float = 1.0,
        weights: dict[str, float] | None = None,
        multiplier: float = 1.0,
        gradient_penalty: float = 0.0,
        reference_logits: torch.Tensor | None = None,
        scales: dict[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``scales`` ({"ce", "kd"}) reweight this process's per-row means so that, once DDP averages the
        gradients, each term is the mean over the rows of the whole global batch (see ``Run._loss_scales``)."""
        from zoo.losses import ce_loss, kd_loss, logit_gradient_penalty, token_validity

        w = {"ce": 0.0, "kl": 0.0, "adaptive": 0.0, "quant": 0.0, "reference": 0.0, **(weights or {})}
        teachers = teachers or {}
        student, crit = self.student, self.criterion
        indices = crit.intermediate_indices() if w["adaptive"] > 0 and teachers else []
        if indices:
            pooled, inter = student.forward_intermediates(indices, **inputs)
            logits = student.forward_head(pooled)
            inter = dict(zip(indices, inter))
        else:
            logits = student(**inputs)
        terms: dict[str, torch.Tensor] = {}
        loss = logits.sum() * 0.0
        if w["ce"] > 0:
            terms["ce"] = ce_loss(logits, labels) * (scales or {}).get("ce", 1.0)
            loss = loss + w["ce"] * terms["ce"]
        kd = None
        if (w["kl"] > 0 or w["adaptive"] > 0) and teachers:
            kd = terms["kd"] = crit.logit_kd(logits, teachers, temperature, labels) * (scales or {}).get("kd", 1.0)
            loss = loss + w["kl"] * kd
        if w["adaptive"] > 0 and teachers:
            mods = list(student.config.modalities)
            grids = {m: student.token_grid(m) for m in mods}
            parts = crit.alignment(inter, grids, token_validity(inputs, mods), teachers, temperature) if indices else {}
            parts = {k: parts.get(k, loss * 0.0) for k in ("feature", "embedding", "relation")}
            terms.update(parts)
            terms["distill"] = crit.distillation_term({"kd": kd, **parts})
            loss = loss + w["adaptive"] * multiplier * terms["distill"]
        keys = [k for k in ("quant", "reference") if w[k] > 0]  # KD from the stage's starting student (float, unpruned)
        if keys and reference_logits is not None:
            reference_kd = kd_loss(logits, reference_logits, temperature)  # one term, logged under each name it has
            for key in keys:
                terms[key] = reference_kd
                loss = loss + w[key] * reference_kd
        if gradient_penalty > 0 and kd is not None and torch.is_grad_enabled():
            terms["grad_penalty"] = logit_gradient_penalty(kd, logits)
            loss = loss + gradient_penalty * terms["grad_penalty"]
        terms["loss"] = loss
        return terms


# ------------------------------------------------------------------------------------------------------ data
class _Rows(torch.utils.data.Dataset):
    """Rows of one split as student tensors: preprocessed once when small, on the fly (per row) when large."""

    def __init__(self, split, preprocessors: dict, ids: list[str] | None = None):
        from zoo.modalities import collate

        self.split, self.pre = split, preprocessors
        self.unlabeled: set[int] = set()
        self.tensors = None
        self.ids = ids
        n = len(split)
        if n <= MATERIALIZE_MAX:
            samples = [split[i] for i in range(n)]
            self.ids = [str(s["id"]) for s in samples]
            parts = [collate(samples[i : i + 256], preprocessors) for i in range(0, n, 256)]
            self.tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            self.samples = samples

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        if self.tensors is not None:
            row = {"id": self.ids[i], **{k: v[i] for k, v in self.tensors.items()}}
        else:
            from zoo.modalities import collate

            s = self.split[i]
            row = {"id": str(s["id"]), **{k: v[0] for k, v in collate([s], self.pre).items()}}
        if i in self.unlabeled:
            row["labels"] = torch.tensor(IGNORE_INDEX)
        return row

    def hide_labels(self, fraction: float, seed: int) -> int:
        """Keep the labels of a seeded ``fraction`` of the rows (the others read -100); returns how many are kept."""
        g = torch.Generator().manual_seed(seed + 101)
        keep = max(int(round(fraction * len(self))), 1)
        self.unlabeled = set(torch.randperm(len(self), generator=g)[keep:].tolist())
        return keep

    def raw(self, i: int) -> dict:
        return self.samples[i] if self.tensors is not None else self.split[i]


def _collate_rows(rows: list[dict]) -> dict:
    batch = {"ids": [r["id"] for r in rows]}
    for k in rows[0]:
        if k != "id":
            batch[k] = torch.stack([r[k] for r in rows])
    return batch


def _split_inputs(batch: dict) -> tuple[dict, torch.Tensor, list[str]]:
    inputs = {k: v for k, v in batch.items() if k not in ("ids", "labels")}
    return inputs, batch["labels"], batch["ids"]


# --------------------------------------------------------------------------------------------------- the run
class Run:
    """One ``zoo distill`` run: holds the accelerator, data, teachers, student and the output folder."""

    def __init__(
        self,
        recipe: Recipe,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        stop_after_steps: int | None = None,
        progress: bool = True,
        overwrite: bool = False,
    ):
        from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

        self.recipe = recipe
        self.out = Path(out_dir)
        self.resume = resume
        self.overwrite = overwrite
        env_stop = os.environ.get(STOP_ENV)
        self.stop_after = stop_after_steps if stop_after_steps is not None else (int(env_stop) if env_stop else None)
        self.steps_this_session = 0
        self.progress = progress
        # accelerate starts gloo processes (MULTI_CPU) only when asked for the CPU: without an accelerator device,
        # a torchrun launch with cpu=False silently runs each process alone
        self.accelerator = Accelerator(
            cpu=_launched_processes() > 1 and not torch.accelerator.is_available(),
            mixed_precision=recipe.train.mixed_precision,
            gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True),
            # the projectors only take part in mixed_distill; DDP must not wait for their gradients elsewhere
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.is_main = self.accelerator.is_main_process
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-file load / save bars of the teachers drown the run's own log
        self.timings: dict[str, float] = {}
        self.stage_log: list[dict] = []
        self.global_step = 0
        self.state: dict = {"completed": {}, "global_step": 0}

    # -- logging ------------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """A line for the run's log: printed on the main process and kept in run.log."""
        if self.is_main:
            line = f"[zoo distill] {message}"
            print(line, flush=True)
            with open(self.out / "run.log", "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def record(self, **fields) -> None:
        if self.is_main:
            with open(self.out / JSONL_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(fields) + "\n")

    def _save_state(self) -> None:
        if self.is_main:
            from zoo.io import atomic_write_json

            atomic_write_json(self.out / STATE_NAME, self.state)

    # -- setup --------------------------------------------------------------------------------------------------
    def setup(self, data=None, teachers: dict[str, str] | None = None) -> None:
        """Data, teachers (trained when none are given), tokenizer, student, teacher cache, loss module."""
        from accelerate.utils import set_seed

        r, acc = self.recipe, self.accelerator
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        state_path = self.out / STATE_NAME
        if self.resume and state_path.exists():
            self.state = json.loads(state_path.read_text())
            self.log(f"resuming: completed phases {list(self.state['completed'])}")
        elif self.is_main:
            if self.resume:
                self.log(f"--resume: {state_path} does not exist; starting a new run")
            elif state_path.exists() and not self.overwrite:
                raise FileExistsError(
                    f"{self.out} holds a zoo distill run ({STATE_NAME}); pass --resume to continue it, --overwrite to "
                    "replace it, or choose another --out."
                )
            for name in (STATE_NAME, JSONL_NAME, "metrics.json", "run.log"):
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.out / "checkpoints", ignore_errors=True)
        acc.wait_for_everyone()
        self._save_state()
        n = acc.num_processes
        for key in ("batch_size", "eval_batch_size"):
            size = getattr(r.data, key)
            if size % n:
                raise ValueError(
                    f"data.{key}={size} is not a multiple of the {n} processes: each process takes an equal share of "
                    f"every batch. Set data.{key}={max(size - size % n, n)}."
                )
        self.log(
            f"processes: {n} ({acc.distributed_type.value}{f', {acc.state.backend}' if n > 1 else ''}), "
            f"{torch.get_num_threads()} torch thread(s) each; global batch {r.data.batch_size}"
            + (f" split into {n} x {r.data.batch_size // n}" if n > 1 else "")
        )
        if n == 1 and "MASTER_ADDR" in os.environ and _launched_processes() == 1:
            self.log(
                "warning: launched for several processes but running one: `accelerate launch --cpu` starts several "
                "CPU processes only through mpirun (--mpirun_hostfile). Use `torchrun --nproc_per_node N -m zoo.cli "
                "distill ...` instead."
            )
        set_seed(r.seed)
        self.data = data if data is not None else _load_data(r)
        self.log(
            f"data: {self.data.source}: "
            + ", ".join(f"{k} {len(v)}" for k, v in self.data.splits.items())
            + f"; modalities {self.data.modalities}; {self.data.num_labels} classes"
        )
        if r.data.max_train_samples and len(self.data.splits["train"]) > r.data.max_train_samples:
            self.data.splits["train"] = self.data.splits["train"].select(range(r.data.max_train_samples))
        self.labelled_rows = len(self.data.splits["train"])
        if r.data.unlabeled:
            from zoo import data as zdata

            extra = zdata.load_unlabeled(r.data.unlabeled, self.data, max_rows=r.data.max_unlabeled)
            self.data = zdata.with_unlabeled(self.data, extra)
            self.log(f"data: {len(extra)} unlabeled rows from {r.data.unlabeled} join train (the teachers label them)")
        self.modalities = list(self.data.modalities)
        self.num_classes = self.data.num_labels
        self.timings["data"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        teacher_paths = dict(teachers if teachers is not None else r.teachers)
        self.trained_teachers = not teacher_paths
        if not teacher_paths:
            if self.is_main:
                train_teachers(self.data, self.out / "teachers", r.teacher_training, r.seed, log=self.log)
            acc.wait_for_everyone()
            wanted = r.teacher_training.modalities or self.modalities
            teacher_paths = {m: str(self.out / "teachers" / m) for m in self.modalities if m in wanted}
        self.teacher_paths = teacher_paths
        self.teachers = _load_teachers(teacher_paths, self.num_classes, self.data.id2label, self.log)
        self.timings["teachers"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        set_seed(r.seed)
        self.student = self._new_student()
        self.log(
            f"student: {r.student} ({sum(p.numel() for p in self.student.parameters()) / 1e6:.2f}M params), "
            f"modalities {self.student.config.modalities}"
        )
        pre = self.student.preprocessors()
        self.rows = {name: _Rows(split, pre) for name, split in self.data.splits.items()}
        if r.data.label_fraction < 1.0:
            kept = self.rows["train"].hide_labels(r.data.label_fraction, r.seed)
            self.log(
                f"data: the students see the labels of {kept} of {len(self.rows['train'])} train rows "
                f"(data.label_fraction {r.data.label_fraction})"
                + ("; the teachers trained here saw all of them" if self.trained_teachers else "")
            )
        self.timings["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self.cached = self._teacher_cache()
        self.timings["teacher_cache"] = time.perf_counter() - t0
        self.criterion = self._criterion()
        self.global_step = int(self.state.get("global_step", 0))

    def _new_student(self, inherit: bool = True):
        """A freshly initialised student (seeded), with the run's tokenizer; ``student_init: teacher`` (and
        ``inherit``) starts its token embeddings from the text teacher's."""
        from zoo.registry import create_student

        r = self.recipe
        overrides = copy.deepcopy(r.student_overrides)
        id2label = {str(k): v for k, v in self.data.id2label.items()}
        kwargs = {}
        if "text" in self.modalities and self._tokenizer_kind() != "train":
            # a given tokenizer sizes the embedding (as create_student does); a smaller vocab_size cannot hold it
            tokenizer, kept = self._tokenizer(0)
            kwargs["tokenizer"] = tokenizer
            text = dict(overrides.get("text") or {})
            if text.pop("vocab_size", None) is not None:
                overrides["text"] = text
        student = create_student(
            r.student,
            modalities=self.modalities,
            num_classes=self.num_classes,
            id2label=id2label,
            **overrides,
            **kwargs,
        )
        if "text" in student.config.modalities and "tokenizer" not in kwargs:
            student.set_tokenizer(self._tokenizer(student.config.text.vocab_size)[0])
        elif "text" in student.config.modalities and inherit and r.student_init == "teacher":
            self._inherit_token_embeddings(student, kept)
        return student

    def _inherit_token_embeddings(self, student, kept: list[int] | None) -> None:
        """Token embeddings from the text teacher: its output for each token alone, PCA to the student's width."""
        from zoo.modalities.text import pca_project, teacher_token_embeddings

        teacher = self.teachers.get("text")
        models = list(getattr(teacher, "folds", None) or [teacher])  # a cross-fitted teacher: its first fold
        model = getattr(models[0], "model", None)
        if model is None or not hasattr(model, "config") or kept is None:
            self.log("student_init: teacher needs a transformers text teacher and its tokenizer; starting from random")
            return
        tok = student.tokenizer  # trimmed: its ids index ``kept``, the teacher's ids
        rows = teacher_token_embeddings(model, kept, kept[tok.cls_token_id], kept[tok.sep_token_id])  # (V, H)
        stem = student.stems["text"]
        with torch.no_grad():
            stem.embed.weight[: len(kept)] = pca_project(rows, stem.embed.weight.shape[1])
        self.log(
            f"student_init: {len(kept)} token embeddings from the text teacher ({rows.shape[1]} -> "
            f"{stem.embed.weight.shape[1]} by PCA)"
        )

    def _tokenizer_kind(self) -> str:
        """``tokenizer: auto`` is the text teacher's when it is a local folder with a tokenizer, else ``train``."""
        kind = self.recipe.tokenizer
        if kind != "auto":
            return kind
        path = self.teacher_paths.get("text")
        if path and Path(path).is_dir():
            from zoo.teachers.crossfit import tokenizer_folder

            folder = tokenizer_folder(path)
            if any((folder / f).exists() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
                return "teacher"
        return "train"

    def _tokenizer(self, vocab_size: int):
        """The student's text tokenizer and, for a trimmed teacher tokenizer, the teacher id of each of its tokens.

        ``tokenizer: train``: a WordPiece trained on the train texts; ``teacher``: the text teacher's, trimmed to the
        tokens the train texts use (``trim_vocabulary``); else a tokenizer folder. Made once and saved in the run.
        """
        from zoo.modalities.text import load_tokenizer, train_wordpiece_tokenizer, trim_tokenizer

        r = self.recipe
        split = self.data.splits["train"]
        folder = self.out / "checkpoints" / "tokenizer"
        if self._tokenizer_kind() == "teacher":
            if "text" not in self.teacher_paths or not Path(self.teacher_paths["text"]).is_dir():
                raise ValueError("tokenizer: teacher needs a text teacher given as a local folder.")
            from zoo.teachers.crossfit import tokenizer_folder

            source = tokenizer_folder(self.teacher_paths["text"])
        elif self._tokenizer_kind() != "train":
            source = Path(r.tokenizer)
        else:
            if self.is_main and not (folder / "tokenizer.json").exists():
                texts = [t for t in split.dataset["text"] if t] if "text" in split.dataset.column_names else []
                tok = train_wordpiece_tokenizer(texts, vocab_size=vocab_size)
                tok.save_pretrained(str(folder))
            self.accelerator.wait_for_everyone()
            return load_tokenizer(folder), None
        from zoo.io import atomic_write_json

        full = load_tokenizer(source)
        if not r.trim_vocabulary or type(full.backend_tokenizer.model).__name__ != "WordPiece":
            return full, None
        kept_file = folder / "teacher_token_ids.json"
        if self.is_main and not kept_file.exists():
            texts = [t for t in split.dataset["text"] if t] if "text" in split.dataset.column_names else []
            tok, kept = trim_tokenizer(full, texts)
            tok.save_pretrained(str(folder))
            atomic_write_json(kept_file, kept)
            self.log(f"tokenizer: the teacher's {len(full)} tokens trimmed to the {len(tok)} the train texts use")
        self.accelerator.wait_for_everyone()
        return load_tokenizer(folder), json.loads(kept_file.read_text())

    def _teacher_cache(self) -> dict:
        """Teacher outputs over the train split, computed once (main process) and looked up by sample id."""
        from zoo.teachers import TeacherCache

        train = self.rows["train"]
        samples = _SampleList(train)
        fingerprint = self.data.fingerprint("train")
        if self.recipe.data.max_train_samples:
            fingerprint += f"-first{len(train)}"
        caches = {}
        for m, teacher in self.teachers.items():
            layers = _cache_layers(teacher, self.recipe.losses.feature_layers.get(m))
            caches[m] = TeacherCache(
                self.out / "teacher_cache", teacher, samples, features=layers, dataset_fingerprint=fingerprint
            )
            if self.is_main and not caches[m].complete:
                self.log(f"teacher cache: running teacher {m!r} over {len(samples)} train samples")
                caches[m].precompute(batch_size=64, progress=self.progress)
        self.accelerator.wait_for_everyone()
        return {m: c.as_teacher() for m, c in caches.items()}

    def _criterion(self):
        from zoo.losses import DistillationLoss

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
            weights={"feature": r.losses.feature, "embedding": r.losses.embedding, "relation": r.losses.relation},
            modality_weights=r.losses.modality_weights,
            num_classes=self.num_classes,
            fusion=r.losses.teacher_fusion,
        )

    # -- evaluation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, student: nn.Module, split: str = "validation", limit: int | None = None) -> dict:
        """Accuracy and CE of ``student`` on a split (sharded across processes, gathered for the metric)."""
        rows = self.rows[split]
        indices = list(range(len(rows) if limit is None else min(limit, len(rows))))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(rows, indices), batch_size=self.recipe.data.eval_batch_size,
            collate_fn=_collate_rows,
        )  # fmt: skip
        from accelerate.data_loader import prepare_data_loader

        acc = self.accelerator
        loader = prepare_data_loader(
            loader, acc.device, num_processes=acc.num_processes, process_index=acc.process_index, split_batches=True
        )
        was_training = student.training
        student.eval()
        logits_all, labels_all = [], []
        for batch in loader:
            inputs, labels, _ = _split_inputs(batch)
            logits = student(**inputs)
            logits, labels = acc.gather_for_metrics((logits.float(), labels))
            logits_all.append(logits.cpu())
            labels_all.append(labels.cpu())
        student.train(was_training)
        logits, labels = torch.cat(logits_all), torch.cat(labels_all)
        keep = labels != -100
        logits, labels = logits[keep], labels[keep]
        return {
            "accuracy": float((logits.argmax(-1) == labels).float().mean()) if len(labels) else float("nan"),
            "loss": float(torch.nn.functional.cross_entropy(logits, labels)) if len(labels) else float("nan"),
            "predictions": logits.argmax(-1),
            "labels": labels,
        }

    def _loss_scales(self, labels: torch.Tensor, teachers: dict) -> dict[str, float]:
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

    # -- checkpoints --------------------------------------------------------------------------------------------
    def _phase_dir(self, phase: str) -> Path:
        return self.out / "checkpoints" / phase

    def _latest_checkpoint(self, phase: str) -> Path | None:
        from zoo.checkpoint import latest_checkpoint

        return latest_checkpoint(self._phase_dir(phase))

    def _checkpoint(self, phase: str, state: dict, controller, module, optimizer, scheduler) -> None:
        """Module, optimizer, scheduler, RNG (``zoo.checkpoint``: safetensors + JSON, no pickle) and the trainer's
        counters; written atomically by the main process, then the phase's older checkpoints are removed."""
        from zoo.checkpoint import save_checkpoint

        folder = self._phase_dir(phase) / f"step-{state['step']}"
        jsonl = self.out / JSONL_NAME
        state = {
            **state,
            "global_step": self.global_step,
            "jsonl_bytes": jsonl.stat().st_size if jsonl.exists() else 0,
            "controller": controller.state_dict() if controller is not None else None,
        }
        acc = self.accelerator
        save_checkpoint(
            folder, model=module, optimizer=optimizer, scheduler=scheduler, trainer_state=state, accelerator=acc
        )
        if self.is_main:  # only now that the new one is complete
            for old in self._phase_dir(phase).glob("step-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _finish_phase(self, phase: str, student: nn.Module, summary: dict) -> None:
        """Save the phase's result and mark it complete (a resumed run starts after it)."""
        acc = self.accelerator
        folder = self._phase_dir(phase) / "final"
        if self.is_main:
            from zoo.io import save_state_dict_atomic

            student.save_pretrained(folder)
            save_state_dict_atomic(self.criterion.state_dict(), folder / "criterion.safetensors")
        acc.wait_for_everyone()
        self.state["completed"][phase] = summary
        self.state["global_step"] = self.global_step
        self._save_state()
        for old in self._phase_dir(phase).glob("step-*"):
            if self.is_main:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _load_phase(self, phase: str) -> nn.Module:
        from zoo.io import load_state_dict_checked
        from zoo.students import HybridStudent

        folder = self._phase_dir(phase) / "final"
        student = HybridStudent.from_pretrained(folder)
        crit = folder / "criterion.safetensors"
        if crit.exists():
            self.criterion.load_state_dict(load_state_dict_checked(crit))
        return student.train()

    # -- one phase of training ----------------------------------------------------------------------------------
    def train_phase(
        self,
        phase: str,
        stage: Stage,
        student: nn.Module,
        *,
        controller=None,
        reference: nn.Module | None = None,
        weights: dict | None = None,
        schedule: tuple[int, int] | None = None,
    ) -> tuple[nn.Module, dict]:
        """Train ``student`` for one stage; resumes from the phase's latest checkpoint. Returns (student, summary)."""
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        r, acc = self.recipe, self.accelerator
        weights = weights or asdict(stage.weights)
        train = self.rows["train"]
        n_use = max(int(len(train) * stage.data_fraction), 1)
        g = torch.Generator().manual_seed(r.seed + 17)
        subset = sorted(torch.randperm(len(train), generator=g)[:n_use].tolist()) if n_use < len(train) else None
        if phase == "raw_student" and self.labelled_rows < len(train):  # unlabeled rows teach nothing without KD
            subset = list(range(self.labelled_rows))
        dataset = torch.utils.data.Subset(train, subset) if subset is not None else train
        batch_size = min(r.data.batch_size, len(dataset))
        steps = stage.num_steps(len(dataset), batch_size * r.train.gradient_accumulation_steps)
        summary = {"name": phase, "steps": steps, "lr": stage.lr, "weights": weights, "rollbacks": []}
        summary["temperature"] = [stage.temperature.at(0.0), stage.temperature.at(1.0)]
        if steps == 0:
            return student, summary
        set_seed(r.seed)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=_collate_rows
        )
        module = DistillModule(student, self.criterion)
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            (no_decay if p.ndim < 2 or name.endswith("pos_embed") else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": r.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=stage.lr,
        )
        # schedule = (offset, total): this phase is steps offset.. of one schedule spanning total steps (the
        # distillation stages share one warmup + cosine, like the raw-student baseline they are compared with)
        offset, total = schedule or (0, steps)
        warmup = max(int(stage.warmup * total), 0)

        def lr_at(step: int) -> float:  # linear warmup, then cosine to min_lr_ratio
            step += offset
            if step < warmup:
                return (step + 1) / (warmup + 1)
            p = (step - warmup) / max(total - warmup, 1)
            return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
        module, optimizer, loader, scheduler = acc.prepare(module, optimizer, loader, scheduler)
        if reference is not None:
            reference = reference.to(acc.device).eval()

        st = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "rollbacks": [], "metric_before": None}
        ckpt = self._latest_checkpoint(phase) if self.resume else None
        if ckpt is not None:
            from zoo.checkpoint import load_checkpoint

            saved = load_checkpoint(ckpt, model=module, optimizer=optimizer, scheduler=scheduler, accelerator=acc)
            st = {k: saved[k] for k in st}
            self.global_step = saved["global_step"]
            if controller is not None and saved.get("controller"):
                controller.load_state_dict(saved["controller"])
            if self.is_main:  # drop log lines written after the checkpoint: they are about to be redone
                with open(self.out / JSONL_NAME, "r+b") as f:
                    f.truncate(saved["jsonl_bytes"])
            self.log(f"{phase}: resumed from {ckpt.name} (epoch {st['epoch']}, batch {st['batch_in_epoch']})")
        summary["rollbacks"] = st["rollbacks"]

        unwrapped = acc.unwrap_model(module)
        good = _snapshot(unwrapped, optimizer, st)
        ctrl_cfg = r.controller
        if controller is not None:
            if not controller.started:
                controller.start(st["step"])
            if st["metric_before"] is None:  # the reference the first reward is measured against
                ev = self.evaluate(unwrapped.student, limit=ctrl_cfg.eval_samples)
                st["metric_before"] = _controller_metric(ev, ctrl_cfg)
        gp = r.losses.gradient_penalty if weights.get("kl", 0) > 0 or weights.get("adaptive", 0) > 0 else 0.0
        # disable=None: tqdm shows the bar on a terminal only, so a log file gets the run's lines, not bar redraws
        hide = None if self.is_main and self.progress else True
        bar = tqdm(total=steps, initial=st["step"], desc=phase, disable=hide, leave=False)
        t0 = time.perf_counter()
        module.train()
        while st["step"] < steps:
            loader.set_epoch(st["epoch"])
            batches = loader
            if st["batch_in_epoch"]:  # resuming mid-epoch: the same shuffled order, minus the batches already seen
                batches = acc.skip_first_batches(loader, st["batch_in_epoch"])
                batches.set_epoch(st["epoch"])
            for batch in batches:
                st["batch_in_epoch"] += 1
                inputs, labels, ids = _split_inputs(batch)
                temperature = stage.temperature.at(st["step"] / max(steps - 1, 1))
                multiplier = controller.multiplier if controller is not None else 1.0
                teachers = self.teachers_for(ids) if weights.get("kl", 0) > 0 or weights.get("adaptive", 0) > 0 else {}
                ref_logits = None
                if reference is not None:
                    with torch.no_grad():
                        ref_logits = reference(**inputs)
                scales = self._loss_scales(labels, teachers) if acc.num_processes > 1 else None
                with acc.accumulate(module):
                    with acc.autocast():
                        terms = module(
                            inputs, labels, teachers, temperature, weights, multiplier, gp, ref_logits, scales
                        )  # fmt: skip
                    loss = terms["loss"]
                    finite = acc.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0
                    if not bool(finite):
                        # a NaN / inf loss: take no step, return to the last good state, say so
                        optimizer.zero_grad()
                        _restore(unwrapped, optimizer, good)
                        event = {"step": st["step"], "to_step": good["step"], "reason": "non-finite loss"}
                        st["rollbacks"].append(event)
                        self.log(f"{phase}: non-finite loss at step {st['step']}: rolled back to step {good['step']}")
                        self.record(event="rollback", phase=phase, global_step=self.global_step, **event)
                        if len(st["rollbacks"]) > r.train.max_rollbacks:
                            raise RuntimeError(
                                f"{phase}: {len(st['rollbacks'])} non-finite losses; lower the learning rate "
                                f"(stages.{phase.split('-')[0]}.lr) or the temperature."
                            )
                        continue
                    acc.backward(loss)
                    if acc.sync_gradients and r.train.grad_clip:
                        acc.clip_grad_norm_(module.parameters(), r.train.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if not acc.sync_gradients:
                    continue
                st["step"] += 1
                self.global_step += 1
                self.steps_this_session += 1
                bar.update(1)
                if st["step"] % r.train.log_every == 0 or st["step"] == steps:
                    vals = {k: float(acc.reduce(v.detach().float(), "mean")) for k, v in terms.items()}
                    rec = {"temperature": round(temperature, 4), "lr": scheduler.get_last_lr()[0], **vals}
                    if controller is not None:
                        rec["multiplier"] = multiplier
                    self.record(event="train", phase=phase, step=st["step"], global_step=self.global_step, **rec)
                    bar.set_postfix(loss=f"{vals['loss']:.3f}", T=f"{temperature:.2f}")
                if controller is not None and st["step"] % ctrl_cfg.interval == 0 and st["step"] < steps:
                    ev = self.evaluate(unwrapped.student, limit=ctrl_cfg.eval_samples)
                    metric = _controller_metric(ev, ctrl_cfg)
                    reward = metric - st["metric_before"]
                    new = controller.update(reward, step=st["step"], metric=metric)
                    st["metric_before"] = metric
                    self.record(
                        event="eval", phase=phase, step=st["step"], global_step=self.global_step,
                        val_accuracy=ev["accuracy"], val_loss=ev["loss"], reward=reward, multiplier=new,
                    )  # fmt: skip
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val_acc=f"{ev['accuracy']:.3f}", kd_x=new)
                saved_now = st["step"] % r.train.checkpoint_every == 0 and st["step"] < steps
                if saved_now:
                    good = _snapshot(unwrapped, optimizer, st)
                    self._checkpoint(phase, st, controller, module, optimizer, scheduler)
                if self.stop_after is not None and self.steps_this_session >= self.stop_after:
                    if not saved_now:
                        self._checkpoint(phase, st, controller, module, optimizer, scheduler)
                    bar.close()
                    raise StopRun(
                        f"stopped after {self.steps_this_session} steps (in {phase}, step {st['step']} of {steps}); "
                        "run again with --resume to continue."
                    )
                if st["step"] >= steps:
                    break
            else:
                st["epoch"] += 1
                st["batch_in_epoch"] = 0
        bar.close()
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        summary["rollbacks"] = st["rollbacks"]
        student = acc.unwrap_model(module).student
        acc.free_memory()
        ev = self.evaluate(student)
        summary["val_accuracy"], summary["val_loss"] = ev["accuracy"], ev["loss"]
        self.record(
            event="eval", phase=phase, step=steps, global_step=self.global_step,
            val_accuracy=ev["accuracy"], val_loss=ev["loss"],
        )  # fmt: skip
        self.log(
            f"{phase}: {steps} steps in {summary['seconds']:.1f}s, validation accuracy {100 * ev['accuracy']:.2f}%"
        )
        return student, summary

    # -- the whole run ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Baseline, stages, measurements; returns metrics.json's content."""
        from zoo.controller import BanditController

        r = self.recipe
        t_start = time.perf_counter()
        stages = r.stages.active()
        distill = [(n, s) for n, s in stages if n in DISTILL_STAGES]
        train_size = len(self.rows["train"])
        per_step = r.data.batch_size * r.train.gradient_accumulation_steps
        offsets, budget = {}, 0
        for name, s in distill:
            offsets[name] = budget
            budget += s.num_steps(max(int(train_size * s.data_fraction), 1), per_step)

        # 1. the raw-student baseline: CE only, the same number of steps as the distillation stages together
        if r.train.baseline and budget:
            if "raw_student" in self.state["completed"]:
                raw = self._load_phase("raw_student")
            else:
                torch.manual_seed(r.seed)
                # same seed, same initial weights as the distilled student, except what student_init takes from
                # the teacher: the baseline learns without any teacher
                raw = self._new_student(inherit=False)
                lr = max(s.lr for _, s in distill)
                base = Stage(steps=budget, lr=lr, warmup=distill[0][1].warmup)
                base.weights.ce = 1.0
                raw, summary = self.train_phase("raw_student", base, raw, schedule=(0, budget))
                self._finish_phase("raw_student", raw, summary)
            self.raw_student = raw
        # 2. the stages
        student = self.student
        last = last_float = None
        controller = None
        for name, stage in stages:
            if name in self.state["completed"]:
                last = name
                last_float = name if name != "quant_finetune" else last_float
                self.stage_log.append(self.state["completed"][name])
                continue
            if last is not None:
                # hardware_adapt prunes a float student: it starts from the stage before quant_finetune
                source = last_float if name == "hardware_adapt" and last == "quant_finetune" else last
                student = self._load_phase(source)
            t0 = time.perf_counter()
            if name in DISTILL_STAGES:
                controller = None
                if name == "mixed_distill" and r.controller.enabled and stage.weights.adaptive > 0:
                    c = r.controller
                    controller = BanditController(c.arms, c.exploration, c.discount, seed=r.seed)
                student, summary = self.train_phase(
                    name, stage, student, controller=controller, schedule=(offsets[name], budget)
                )
                if controller is not None:
                    summary["controller"] = controller.state_dict()["trajectory"]
            else:
                student, summary = self.compression_stage(name, stage, student)
            summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
            self._finish_phase(name, student, summary)
            self.stage_log.append(summary)
            last = name
            last_float = name if name != "quant_finetune" else last_float
            if name == DISTILL_STAGES[-1] or (
                name in DISTILL_STAGES and not any(n == "mixed_distill" for n, _ in stages)
            ):
                self._save_distilled(student)
        if last is not None and not (self.out / "model.safetensors").exists():
            self._save_distilled(self._load_phase(last) if last in DISTILL_STAGES else student)
        self.timings["train"] = time.perf_counter() - t_start
        return self.measure()

    def _save_distilled(self, student) -> None:
        if self.is_main:
            self.accelerator.unwrap_model(student).save_pretrained(self.out)
        self.accelerator.wait_for_everyone()

    # -- compression stages -------------------------------------------------------------------------------------
    def compression_stage(self, name: str, stage: Stage, student: nn.Module) -> tuple[nn.Module, dict]:
        """prune / quant_finetune / hardware_adapt with the accuracy guard; skipped (and logged) without backend."""
        summary = {"name": name, "steps": 0, "lr": stage.lr, "rollbacks": [], "status": "skipped"}
        backend, reason = _compression_backend(name)
        if backend is None:
            self.log(f"{name}: skipped: {reason}")
            summary["reason"] = reason
            return student, summary
        start = self.evaluate(student)
        before = start["accuracy"]
        tol = stage.accuracy_tolerance if stage.accuracy_tolerance is not None else self.recipe.train.accuracy_tolerance
        attempts = _attempts(name, stage)
        for i, settings in enumerate(attempts):
            phase = f"{name}-a{i}"
            candidate, result, reference = backend(self, stage, student, settings, phase)
            if candidate is None:
                self.log(f"{name}: skipped: {result}")
                summary.update(status="skipped", reason=result)
                return student, summary
            if stage.num_steps(len(self.rows["train"]), self.recipe.data.batch_size):
                candidate, trained = self.train_phase(phase, stage, candidate, reference=reference)
                summary["steps"] += trained["steps"]
            candidate = _finalize(name, candidate)
            evaluated = self.evaluate(candidate)
            after, drop = evaluated["accuracy"], before - evaluated["accuracy"]
            # the share of validation rows answered as before: accuracy can hold while answers churn both ways
            agreement, lost, gained = compare_answers(start["predictions"], evaluated["predictions"], start["labels"])
            summary.update(
                settings=settings, val_accuracy_before=before, val_accuracy=after, val_agreement=agreement,
                val_answers_lost=lost, val_answers_gained=gained, **result,
            )  # fmt: skip
            # lost / gained: rows right before and wrong after, and the reverse; their balance is the accuracy
            # change, their sum tells churn (sampling noise on a small split) from a one-sided loss
            churn = f"right answers: {lost} lost, {gained} gained of {len(start['labels'])}"
            if drop <= tol:
                summary["status"] = "done"
                self.log(
                    f"{name}: {settings}: validation accuracy {100 * before:.2f}% -> {100 * after:.2f}% ({churn}), "
                    f"{100 * agreement:.1f}% of answers unchanged (kept)"
                )
                return candidate, summary
            event = {"settings": settings, "accuracy_before": before, "accuracy_after": after, "drop": drop,
                     "answers_lost": lost, "answers_gained": gained}  # fmt: skip
            summary["rollbacks"].append(event)
            milder = f"; retrying with {attempts[i + 1]}" if i + 1 < len(attempts) else "; no milder setting left"
            self.log(
                f"{name}: accuracy guard: validation accuracy fell {100 * drop:.2f} points (> {100 * tol:.2f}; "
                f"{churn}) with {settings}: rolled back to the previous student{milder}"
            )
            self.record(event="rollback", phase=name, global_step=self.global_step, reason="accuracy guard", **event)
        summary["status"] = "rolled back"
        return student, summary

    # -- measurements -------------------------------------------------------------------------------------------
    def measure(self) -> dict:
        """metrics.json: teacher, raw_student, distilled (and later stages) on the test split; the run section."""
        from zoo.bench import format_table, update_metrics

        acc, r = self.accelerator, self.recipe
        t0 = time.perf_counter()
        models = {}
        split = "test" if len(self.rows.get("test", [])) else "validation"
        example = self._latency_example(split)
        if self.is_main:
            models["teacher"] = self._teacher_entry(split, example)
        students = {"distilled": self.out}
        if hasattr(self, "raw_student"):
            students["raw_student"] = self._phase_dir("raw_student") / "final"
        for name, sub in (("prune", "pruned"), ("quant_finetune", "int8"), ("hardware_adapt", "hardware")):
            done = self.state["completed"].get(name) or {}
            if done.get("status") == "done":
                folder = self.out / sub
                if self.is_main:
                    shutil.copytree(self._phase_dir(name) / "final", folder, dirs_exist_ok=True)
                    (folder / "criterion.safetensors").unlink(missing_ok=True)
                students[sub] = folder
        acc.wait_for_everyone()
        from zoo.students import HybridStudent

        predictions, labels = {}, None
        for name, folder in students.items():
            model = HybridStudent.from_pretrained(folder)
            ev = self.evaluate(model, split)
            predictions[name], labels = ev["predictions"], ev["labels"]
            if self.is_main:
                models[name] = self._student_entry(model, folder, ev["accuracy"], example)
        # each compression step against the student it started from: a small test split moves by whole samples, and
        # the share of answers that stayed the same tells a real loss from churn that happens to net out
        float_source = "pruned" if "pruned" in students else "distilled"
        for name, source in (("pruned", "distilled"), ("int8", float_source), ("hardware", float_source)):
            if self.is_main and name in models and source in predictions:
                same, lost, gained = compare_answers(predictions[source], predictions[name], labels)
                models[name].update(
                    compared_with=source, answers_unchanged=round(same, 6), answers_lost=lost, answers_gained=gained
                )
        fit = (self.state["completed"].get("hardware_adapt") or {}).get("latency_fit")
        if fit and "hardware" in models:  # the budget it was fitted to, on its runtime (the entry's latency is torch's)
            models["hardware"]["latency_budget"] = {
                "runtime": fit.get("runtime"), "budget_ms": fit.get("budget_ms"),
                "latency_ms": fit.get("latency_ms"), "keep": fit.get("keep"),
            }  # fmt: skip
        if "int8" in students and self.is_main:  # the deployment path of the int8 student: onnxruntime
            try:
                models["onnx_int8"] = self._onnx_entry(students["int8"], split, example)
            except Exception as e:  # an export problem must not lose a finished run
                self.log(f"onnx_int8 not measured: {type(e).__name__}: {e}")
        if hasattr(self, "raw_student") and self.is_main:
            shutil.copytree(self._phase_dir("raw_student") / "final", self.out / "raw_student", dirs_exist_ok=True)
            (self.out / "raw_student" / "criterion.safetensors").unlink(missing_ok=True)
        self.timings["measure"] = time.perf_counter() - t0
        run = {
            "recipe": r.name,
            "recipe_settings": r.to_dict(),
            "dataset": {"name": self.data.source, "splits": {k: len(v) for k, v in self.data.splits.items()}},
            "split": split,
            "student": r.student,
            "teachers": {m: str(p) for m, p in self.teacher_paths.items()},
            "teachers_trained_here": self.trained_teachers,
            "stages": self.stage_log,
            "raw_student": self.state["completed"].get("raw_student"),
            "controller": next((s["controller"] for s in self.stage_log if s.get("controller")), None),
            "timings_seconds": {k: round(v, 2) for k, v in self.timings.items()},
            "num_processes": acc.num_processes,
            "torch_threads": torch.get_num_threads(),
            "final_model": "distilled",
        }
        data = None
        if self.is_main:
            data = update_metrics(self.out, models=models, run=run)
            from zoo.plots import plot_training_curves, read_jsonl

            plot_training_curves(read_jsonl(self.out / JSONL_NAME), self.out / "training_curves.png")
            try:
                from zoo.cards import write_card
            except ImportError:
                write_card = None
            if write_card is not None:
                try:
                    write_card(self.out)
                except Exception as e:  # a card problem must not lose a finished run
                    self.log(f"model card not written: {type(e).__name__}: {e}")
            print("\n" + format_table(data), flush=True)
        acc.wait_for_everyone()
        return data

    def _onnx_entry(self, folder: Path, split: str, example: int) -> dict:
        """Export the int8 student to ``folder/model.onnx`` (QDQ) and measure that graph in onnxruntime: accuracy
        on ``split`` and batch-1 latency at one thread, on the same sample as the torch rows."""
        from zoo.bench import count_params, model_entry, one_thread
        from zoo.export import export_onnx, onnx_latency_ms, onnx_session, run_onnx
        from zoo.students import HybridStudent

        model = HybridStudent.from_pretrained(folder)
        rows = self.rows[split]
        inputs, _, _ = _split_inputs(_collate_rows([rows[i] for i in range(min(2, len(rows)))]))
        path = export_onnx(model, folder / "model.onnx", inputs)
        session = onnx_session(path, threads=1)
        correct = total = 0
        for start in range(0, len(rows), self.recipe.data.eval_batch_size):
            batch = _collate_rows(
                [rows[i] for i in range(start, min(start + self.recipe.data.eval_batch_size, len(rows)))]
            )
            inputs, labels, _ = _split_inputs(batch)
            keep = labels != IGNORE_INDEX
            correct += int((run_onnx(session, inputs).argmax(-1)[keep] == labels[keep]).sum())
            total += int(keep.sum())
        one = {k: v[None] for k, v in rows[example].items() if k not in ("id", "labels")}
        with one_thread():
            latency = onnx_latency_ms(session, one, repeats=self.recipe.train.latency_repeats)
        return model_entry(
            accuracy=correct / max(total, 1),
            params=count_params(model),
            size_bytes=path.stat().st_size,
            latency_ms=latency,
            runtime="onnxruntime",
            file=f"{folder.name}/{path.name}",
        )

    def _latency_example(self, split: str) -> int:
        """Index of the sample latency is measured on: the first one carrying the most modalities."""
        rows = self.rows[split]
        best, best_n = 0, -1
        for i in range(min(len(rows), 200)):
            s = rows.raw(i)
            n = sum(s.get(m) is not None for m in self.modalities)
            if n > best_n:
                best, best_n = i, n
        return best

    def _student_entry(self, model, folder: Path, accuracy: float, example: int) -> dict:
        from zoo.bench import count_params, folder_size_bytes, latency_ms, model_entry

        item = self.rows["test" if len(self.rows.get("test", [])) else "validation"][example]
        inputs = {k: v[None] for k, v in item.items() if k not in ("id", "labels")}
        return model_entry(
            accuracy=accuracy,
            params=count_params(model),
            size_bytes=folder_size_bytes(folder),
            latency_ms=latency_ms(model, inputs, repeats=self.recipe.train.latency_repeats),
        )

    def _teacher_entry(self, split: str, example: int) -> dict:
        """The teachers together, as the student is taught: each predicts the samples of its modality, fused per
        sample the way the KD target is (``losses.teacher_fusion``)."""
        from zoo.bench import accuracy, median_ms, model_entry, one_thread

        rows = self.rows[split]
        samples = [rows.raw(i) for i in range(len(rows))]

        def predict(batch: list[dict]) -> torch.Tensor:  # the fused KD target at T = 1
            outs = {}
            for m, t in self.teachers.items():
                if t.num_classes == self.num_classes and any(_carries(t, s) for s in batch):
                    outs[m] = t(batch, layers=[])
            return self.criterion.teacher_log_probs(outs, 1.0, len(batch))[0]

        acc = accuracy(predict, samples, batch_size=64)
        one = [samples[example]]
        with one_thread(), torch.inference_mode():
            ms = median_ms(lambda: [t(one, layers=[]) for t in self.teachers.values() if _carries(t, one[0])], 10, 2)
        params = sum(sum(p.numel() for p in t.parameters()) for t in self.teachers.values())
        size = sum(sum(p.numel() * p.element_size() for p in t.parameters()) for t in self.teachers.values())
        return model_entry(accuracy=acc, params=params, size_bytes=size, latency_ms=ms, teachers=list(self.teachers))


def _carries(teacher, sample: dict) -> bool:
    if teacher.modality == "image-text":
        return sample.get("image") is not None and sample.get("text") is not None
    return sample.get(teacher.modality) is not None


class _SampleList:
    """The raw samples of a ``_Rows`` as a sequence (for the teacher cache)."""

    def __init__(self, rows: _Rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows.raw(i)


def _snapshot(model: nn.Module, optimizer, st: dict) -> dict:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "step": st["step"],
    }


def _restore(model: nn.Module, optimizer, snap: dict) -> None:
    model.load_state_dict(snap["model"])
    optimizer.load_state_dict(snap["optimizer"])


def _controller_metric(ev: dict, cfg) -> float:
    """Higher is better: accuracy, or minus the validation CE."""
    return ev["accuracy"] if cfg.metric == "accuracy" else -ev["loss"]


def _cache_layers(teacher, wanted: dict | None) -> list[str]:
    """Teacher feature layers to cache: those the recipe maps, else the teacher's last one."""
    layers = list(getattr(teacher, "feature_layers", []) or [])
    layers = [n for n in layers if not n.endswith("embeds")]
    if wanted:
        return sorted(set(wanted.values()))
    return layers[-1:]


def _load_data(recipe: Recipe):
    from zoo import data as zdata

    source = recipe.data.source
    if source in (None, "quickstart"):
        return zdata.quickstart(seed=recipe.seed)
    return zdata.load(source, seed=recipe.seed)


def _load_teachers(paths: dict[str, str], num_classes: int, id2label: dict, log) -> dict:
    """Load each teacher (``zoo.teachers.load_teacher``) and check it predicts the data's classes."""
    from zoo.teachers import load_teacher

    teachers = {}
    for modality, path in paths.items():
        t = load_teacher(path, modality=modality)
        if t.num_classes is not None and t.num_classes != num_classes:
            raise ValueError(
                f"teacher {modality}={path} predicts {t.num_classes} classes; the data has {num_classes}. "
                "Fine-tune the teacher on these labels first, or pass an encoder (its embeddings are distilled)."
            )
        if t.id2label and {int(k): str(v) for k, v in t.id2label.items()} != {
            int(k): str(v) for k, v in id2label.items()
        }:
            log(f"warning: teacher {modality} labels {t.id2label} differ from the data's {id2label}; order must match")
        teachers[modality] = t
        log(f"teacher {modality}: {t.name} ({sum(p.numel() for p in t.parameters()) / 1e6:.2f}M params)")
    return teachers


# ------------------------------------------------------------------------------------------------ compression
def _attempts(name: str, stage) -> list[dict]:
    if name == "prune":
        return [{"keep": k} for k in [stage.keep, *stage.retry_keeps]]
    if name == "hardware_adapt":
        return [
            {
                "latency_budget_ms": stage.latency_budget_ms,
                "latency_budget_ratio": stage.latency_budget_ratio,
                "runtime": stage.runtime,
            }
        ]
    return [{}]


def _compression_backend(name: str):
    """(function, None) when the stage's compression module exists, else (None, why it is skipped)."""
    import importlib

    module, fn = {
        "prune": ("zoo.prune", "prune_student"),
        "quant_finetune": ("zoo.quant", "prepare_qat"),
        "hardware_adapt": ("zoo.hardware", "fit_latency_budget"),
    }[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return None, f"{module} is not available ({e}); the stage needs {module}.{fn}."
    if not hasattr(mod, fn):
        return None, f"{module} has no {fn}() yet."
    return {"prune": _prune, "quant_finetune": _quant, "hardware_adapt": _hardware}[name], None


def _example_batches(run: Run, n: int) -> list[dict]:
    rows = run.rows["train"]
    bs = run.recipe.data.batch_size
    out = []
    for i in range(n):
        idx = range(i * bs, min((i + 1) * bs, len(rows)))
        if not len(idx):
            break
        batch = _collate_rows([rows[j] for j in idx])
        batch.pop("ids")
        out.append(batch)
    return out


def _prune(run: Run, stage, student, settings: dict, phase: str):
    from zoo.prune import prune_student

    resumed = _resume_start(run, phase)
    if resumed is not None:
        return resumed[0], resumed[1], _reference(stage, student)
    candidate = prune_student(
        student, keep=settings["keep"], criterion=stage.criterion, importance_batches=_example_batches(run, 4)
    )
    result = {"params_before": student.num_params(), "params_after": candidate.num_params()}
    _save_start(run, phase, candidate, result)
    return candidate.train(), result, _reference(stage, student)


def _save_start(run: Run, phase: str, candidate, result: dict) -> None:
    """Keep a compression attempt's starting student and what made it (``start/``), so a resumed run restarts the
    attempt from the same student and still reports how it was fitted."""
    start = run._phase_dir(phase) / "start"
    if run.is_main:
        from zoo.io import atomic_write_json

        start.mkdir(parents=True, exist_ok=True)
        atomic_write_json(start / "fit.json", result)  # before the weights: their presence marks a complete start/
        candidate.save_pretrained(start)
    run.accelerator.wait_for_everyone()


def _resume_start(run: Run, phase: str):
    """(student, fit report) saved by :func:`_save_start` when resuming and the attempt had begun, else None."""
    start = run._phase_dir(phase) / "start"
    if not (run.resume and (start / "model.safetensors").exists()):
        return None
    from zoo.students import HybridStudent

    report = json.loads((start / "fit.json").read_text()) if (start / "fit.json").exists() else {}
    return HybridStudent.from_pretrained(start).train(), report


def compare_answers(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """Two students' predictions on the same rows: the share answered alike, the rows answered right ``before`` and
    wrong ``after`` (lost), and the reverse (gained)."""
    right_before, right_after = before == labels, after == labels
    lost, gained = int((right_before & ~right_after).sum()), int((~right_before & right_after).sum())
    return float((before == after).float().mean()), lost, gained


def _reference(stage, student):
    """The stage's starting student, frozen, when its loss has a ``reference`` (or ``quant``) KD term; else None."""
    if stage.weights.reference <= 0 and stage.weights.quant <= 0:
        return None
    return copy.deepcopy(student).eval().requires_grad_(False)


def _quant(run: Run, stage, student, settings: dict, phase: str):
    from zoo.quant import calibrate, prepare_qat

    qat = prepare_qat(copy.deepcopy(student))
    calibrate(qat, _example_batches(run, stage.calibration_batches))
    return qat.train(), {}, _reference(stage, student)


def _hardware(run: Run, stage, student, settings: dict, phase: str):
    from zoo.hardware import fit_latency_budget

    budget, ratio = settings.get("latency_budget_ms"), settings.get("latency_budget_ratio")
    if budget is None and ratio is None:
        return None, "neither hardware_adapt.latency_budget_ms nor latency_budget_ratio is set", None
    resumed = _resume_start(run, phase)
    if resumed is not None:
        fit = resumed[1].get("latency_fit") or {}
        if "budget_ms" in fit:  # the budget the saved student was fitted to, as the first run logged it
            settings["latency_budget_ms"] = round(fit["budget_ms"], 3)
        return resumed[0], resumed[1], _reference(stage, student)
    example = _example_batches(run, 1)[0]
    example = {k: v[:1] for k, v in example.items() if k != "labels"}
    try:
        # a ratio is of the incoming student's latency on this machine, measured by the fit itself
        ratio = ratio if budget is None else None
        candidate, report = fit_latency_budget(student, budget, settings["runtime"], example, budget_ratio=ratio)
    except ValueError as e:  # out of reach on this machine: keep the student as it is and say why
        return None, str(e), None
    settings["latency_budget_ms"] = round(report["budget_ms"], 3)
    result = {"latency_fit": {k: report[k] for k in ("keep", "latency_ms", "budget_ms", "runtime") if k in report}}
    _save_start(run, phase, candidate, result)
    return candidate.train(), result, _reference(stage, student)


def _finalize(name: str, candidate):
    if name == "quant_finetune":
        from zoo.quant import convert_int8

        return convert_int8(candidate)
    return candidate


# -------------------------------------------------------------------------------------------------------- API
def distill(
    recipe: str | Recipe = "quickstart",
    out_dir: str | os.PathLike | None = None,
    *,
    data=None,
    data_source: str | None = None,
    teachers: dict[str, str] | None = None,
    student: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    stop_after_steps: int | None = None,
    progress: bool = True,
    unlabeled: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Run a recipe end to end and return metrics.json's content (see the module docstring).

    Args:
        recipe: a bundled recipe name, a YAML path or a ``Recipe``.
        out_dir: output folder (default ``runs/<recipe name>``).
        data: an already loaded ``zoo.data`` dataset (overrides ``data_source`` and the recipe's).
        data_source: a ``zoo.data.load`` source (CSV, folder, ...); default: the recipe's (quickstart).
        teachers: modality -> teacher path or hub id; default: the recipe's, else teachers trained here.
        student: a registered student architecture (overrides the recipe's).
        overrides: ``key=value`` recipe overrides.
        resume: continue the run in ``out_dir`` from its last checkpoint.
        stop_after_steps: stop (after a checkpoint) once this many optimizer steps ran in this call.
        unlabeled: a table of rows without labels (``data.unlabeled``): the teachers label them for KD.
        overwrite: start a new run in an ``out_dir`` that holds one (without it, that is an error).
    """
    extra = list(overrides or [])
    if student:
        extra.append(f"student={student}")
    if data_source:
        extra.append(f"data.source={data_source}")
    if unlabeled:
        extra.append(f"data.unlabeled={unlabeled}")
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, extra)
    if isinstance(recipe, Recipe) and extra:
        from zoo.recipe import apply_overrides, recipe_from_dict

        r = recipe_from_dict(apply_overrides(recipe.to_dict(), extra), "recipe (with overrides)")
    out = Path(out_dir) if out_dir is not None else Path("runs") / r.name
    run = Run(r, out, resume=resume, stop_after_steps=stop_after_steps, progress=progress, overwrite=overwrite)
    run.setup(data=data, teachers=teachers or None)
    return run.run()


def evaluate_folder(folder: str | os.PathLike, data_source: str, split: str = "test") -> dict:
    """Accuracy, params, size and batch-1 latency of a saved student on a split of ``data_source``."""
    from zoo import data as zdata
    from zoo.bench import accuracy, count_params, folder_size_bytes, latency_ms, model_entry, student_predict
    from zoo.students import HybridStudent

    student = HybridStudent.from_pretrained(folder)
    ds = zdata.quickstart() if data_source == "quickstart" else zdata.load(data_source)
    if split not in ds.splits or not len(ds.splits[split]):
        raise ValueError(f"{data_source} has no {split!r} rows; splits: {list(ds.splits)}.")
    samples = list(ds.splits[split])
    n_student = student.config.num_classes
    if ds.num_labels != n_student:
        raise ValueError(f"{folder} predicts {n_student} classes; {data_source} has {ds.num_labels} labels.")
    acc = accuracy(student_predict(student), samples)
    one = student.preprocess(samples[:1])
    one.pop("labels")
    return model_entry(
        accuracy=acc,
        params=count_params(student),
        size_bytes=folder_size_bytes(folder),
        latency_ms=latency_ms(student, one),
        split=split,
        samples=len(samples),
    )


# -------------------------------------------------------------------------------------------------------- CLI
def _parse_teachers(values: list[str] | None) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise ValueError(f"--teacher {v!r}: expected MODALITY=PATH_OR_ID, e.g. --teacher text=./my-bert.")
        m, p = v.split("=", 1)
        out[m.strip()] = p.strip()
    return out


def _cmd_distill(args: argparse.Namespace) -> int:
    import torch

    if os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(1)  # these machines share one core between two vCPUs: more threads only stall
    recipe, overrides = None, []
    for item in args.items:
        if "=" in item:
            overrides.append(item)
        elif recipe is None and not overrides:
            recipe = item
        else:
            raise ValueError(f"unexpected argument {item!r}: give the recipe first, then key=value overrides.")
    # the offline demo without data; your data gets the recipe made for it (every label, epochs sized to the data)
    recipe = recipe or ("user" if args.data and args.data != "quickstart" else "quickstart")
    t0 = time.perf_counter()
    try:
        distill(
            recipe,
            args.out,
            data_source=args.data,
            teachers=_parse_teachers(args.teacher),
            student=args.student,
            overrides=overrides,
            resume=args.resume,
            progress=not args.no_progress,
            unlabeled=args.unlabeled,
            overwrite=args.overwrite,
        )
    except StopRun as e:
        print(f"zoo distill: {e}", file=sys.stderr)
        return 3
    print(f"zoo distill: done in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    entry = evaluate_folder(args.dir, args.data, split=args.split)
    print(json.dumps(entry, indent=2))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distill teachers into a student with a staged recipe (no arguments: the offline quickstart demo)",
        description="zoo distill [RECIPE] [--data SOURCE] [--teacher MODALITY=PATH_OR_ID ...] [--student NAME] "
        "[--out DIR] [--resume] [key=value ...]",
    )
    p.add_argument("items", nargs="*", metavar="RECIPE|key=value", help="recipe name or YAML file, then overrides")
    p.add_argument("--data", default=None, help="dataset: CSV / JSONL / folder / hub id (default: the recipe's)")
    p.add_argument("--teacher", action="append", metavar="MODALITY=PATH_OR_ID", help="a teacher per modality")
    p.add_argument("--unlabeled", default=None, metavar="SOURCE", help="rows without labels: the teachers label them")
    p.add_argument("--student", default=None, help="registered student architecture (e.g. hybrid_tiny)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run --out holds (default: refuse)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (never shown when not on a terminal)")
    p.set_defaults(func=_cmd_distill)
    e = sub.add_parser("eval", help="measure a saved student on a dataset's test split")
    e.add_argument("dir", help="student folder")
    e.add_argument("--data", required=True, help="dataset source (as for zoo distill)")
    e.add_argument("--split", default="test")
    e.set_defaults(func=_cmd_eval)


# ---------------------------------------------------------------------------------------- teachers trained here
def _build_teacher(modality: str, cfg: TeacherTraining, data, folder: Path) -> None:
    """A transformers classifier of ``modality`` with its own processor, freshly initialised, saved to ``folder``.

    text: BERT with a WordPiece tokenizer trained on the train texts; image: a ResNet; audio: Whisper's encoder
    (1-D convs over log-mel frames, then attention), cut to 1 s clips. All larger than the quickstart student and
    trained from scratch (nothing to download).
    """
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTImageProcessor,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForAudioClassification,
    )

    from zoo.modalities.text import train_wordpiece_tokenizer

    labels = {
        "num_labels": data.num_labels,
        "id2label": {int(k): str(v) for k, v in data.id2label.items()},
        "label2id": {str(v): int(k) for k, v in data.id2label.items()},
    }
    width = {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
    }
    if modality == "text":
        split = data.splits["train"]
        texts = [t for t in split.dataset["text"] if t]
        processor = train_wordpiece_tokenizer(texts, vocab_size=cfg.text_vocab_size)
        processor.model_max_length = cfg.text_max_length
        config = BertConfig(
            vocab_size=len(processor), max_position_embeddings=cfg.text_max_length, pad_token_id=0, **width, **labels
        )
        model = BertForSequenceClassification(config)
    elif modality == "image":
        # a CNN: on a few hundred small images its inductive bias beats a ViT trained from scratch by far
        processor = ViTImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size})
        h = cfg.hidden_size
        config = ResNetConfig(
            num_channels=3,
            embedding_size=h // 4,
            hidden_sizes=[h // 4, h // 2, h, h * 2],  # h = 256: ResNet-18's widths
            depths=[2, 2, 2, 2],
            layer_type="basic",
            downsample_in_first_stage=False,
            **labels,
        )
        model = ResNetForImageClassification(config)
    elif modality == "audio":
        # Whisper's encoder: two 1-D convs over the log-mel frames (a TDNN front end), then attention; cut to 1 s
        processor = WhisperFeatureExtractor(feature_size=cfg.audio_mel_bins, chunk_length=1)
        config = WhisperConfig(
            num_mel_bins=cfg.audio_mel_bins,
            max_source_positions=50,  # 100 frames of 10 ms, halved by the second conv
            d_model=cfg.hidden_size,
            encoder_layers=cfg.num_layers,
            encoder_attention_heads=cfg.num_heads,
            encoder_ffn_dim=cfg.intermediate_size,
            decoder_layers=1,
            decoder_attention_heads=cfg.num_heads,
            decoder_ffn_dim=cfg.intermediate_size,
            vocab_size=16,  # the decoder is unused by the classifier; keep it minute
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            **labels,
        )
        model = WhisperForAudioClassification(config)
    else:
        raise ValueError(f"no built-in teacher for modality {modality!r}; pass --teacher {modality}=PATH.")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def _cat_pad(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on dim 0, zero-padding dim 1 (token sequences padded per chunk) to the longest."""
    if parts[0].dim() >= 2 and len({p.shape[1] for p in parts}) > 1:
        n = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, n - p.shape[1])) for p in parts]
    return torch.cat(parts)


def _teacher_inputs(teacher, samples: list[dict]) -> dict[str, torch.Tensor]:
    """The teacher's own preprocessing of every sample (all carry its modality), as stacked tensors."""
    chunks = [teacher.preprocess(samples[i : i + 64]) for i in range(0, len(samples), 64)]
    return {k: _cat_pad([c[k] for c in chunks]) for k in chunks[0] if k != "mask"}


def _teacher_lr(steps: int):
    warmup = max(steps // 10, 1)
    return lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))


def train_teachers(data, folder: Path, cfg: TeacherTraining, seed: int, log=print) -> dict[str, Path]:
    """Train one classifier teacher per modality of ``data`` with CE on its train split (the offline quickstart).

    Each is saved with save_pretrained into ``folder/<modality>`` and loaded back with ``zoo.teachers.load_teacher``
    like a user's teacher. A folder already trained with the same settings on the same data is reused.
    """
    from zoo.io import atomic_write_json

    out = {}
    for modality in data.modalities:
        if cfg.modalities is not None and modality not in cfg.modalities:
            continue
        dst = folder / modality
        marker = dst / "zoo_teacher_training.json"
        key = {"settings": asdict(cfg), "seed": seed, "data": data.fingerprint("train"), "version": 1}
        if marker.exists() and json.loads(marker.read_text()).get("key") == key:
            log(f"teacher {modality}: reusing {dst} (trained with the same settings on the same data)")
            out[modality] = dst
            continue
        t0 = time.perf_counter()
        shutil.rmtree(dst, ignore_errors=True)  # nothing stale (a fold of an earlier layout) may be loaded
        train = [s for s in data.splits["train"] if s.get(modality) is not None]
        val = [s for s in data.splits["validation"] if s.get(modality) is not None]
        if cfg.folds > 1:
            # cross-fitting: teacher k never sees fold k, so its targets on fold k are honest predictions, not
            # memorised labels (see zoo.teachers.crossfit)
            from zoo.teachers.crossfit import assign_folds, save_assignment

            assignment = assign_folds([s["id"] for s in train], cfg.folds, seed)
            accs = []
            for k in range(cfg.folds):
                rows = [s for s in train if assignment[str(s["id"])] != k]
                accs.append(_fit_teacher(modality, cfg, data, dst / f"fold-{k}", rows, val, seed + k))
            save_assignment(dst, assignment, cfg.folds)
            val_acc = None if accs[0] is None else sum(accs) / len(accs)  # mean over the fold teachers
            what = f"{cfg.folds} cross-fitted teachers ({len(train) - len(train) // cfg.folds} samples each)"
        else:
            val_acc = _fit_teacher(modality, cfg, data, dst, train, val, seed)
            what = f"a teacher on {len(train)} samples"
        seconds = time.perf_counter() - t0
        atomic_write_json(marker, {"key": key, "val_accuracy": val_acc, "seconds": round(seconds, 1)})
        acc_txt = "n/a" if val_acc is None else f"{100 * val_acc:.1f}%"
        log(
            f"teacher {modality}: trained {what} for {cfg.steps} steps each in {seconds:.0f}s; validation accuracy "
            f"on its modality {acc_txt}"
        )
        out[modality] = dst
    return out


def _fit_teacher(modality: str, cfg: TeacherTraining, data, dst: Path, train: list, val: list, seed: int):
    """Build a fresh teacher in ``dst``, train it with CE on ``train``, save it; returns its validation accuracy."""
    from zoo.teachers import load_teacher

    torch.manual_seed(seed)
    _build_teacher(modality, cfg, data, dst)
    teacher = load_teacher(dst, modality=modality)
    x = _teacher_inputs(teacher, train)
    y = torch.tensor([int(s["label"]) for s in train])
    model = teacher.model.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _teacher_lr(cfg.steps))
    g = torch.Generator().manual_seed(seed)
    order, pos = torch.randperm(len(train), generator=g), 0
    for _ in range(cfg.steps):
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(train), generator=g), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        logits = model(**{k: v[idx] for k, v in x.items()}).logits
        loss = torch.nn.functional.cross_entropy(logits, y[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    val_acc = None
    if val:
        with torch.no_grad():
            xv = _teacher_inputs(teacher, val)
            chunks = [model(**{k: v[i : i + 128] for k, v in xv.items()}).logits for i in range(0, len(val), 128)]
            pred = torch.cat(chunks)
        val_acc = float((pred.argmax(-1) == torch.tensor([int(s["label"]) for s in val])).float().mean())
    model.save_pretrained(dst, safe_serialization=True)
    return val_acc
