"""A ``zoo distill`` run: setup and the stage sequence (``distill`` is the Python API, ``zoo distill`` the CLI).

A recipe (``zoo.recipe``) runs top to bottom:

1. data (``zoo.data``), teachers (given, or trained here when none are: ``zoo.teachers.train``), the student and
   its tokenizer, the teacher-output cache over the train split (``zoo.teachers.TeacherCache``);
2. the raw-student baseline: the same student, CE only, as many steps as the distillation stages together;
3. the stages: pretrain -> soft_distill -> mixed_distill (the float "distilled" student, saved at the top of the
   output folder), each through the one training loop (``zoo.train.loop``) with its loss weights
   (``zoo.train.objective``), temperature schedule and learning rate; the adaptive controller (``zoo.controller``)
   scales the distillation term in mixed_distill; then the compression stages (``zoo.compress.stages``: prune ->
   quant_finetune -> hardware_adapt) under the accuracy guard (``zoo.compress.guard``);
4. measurements (``zoo.train.report``): metrics.json, metrics.jsonl, training_curves.png, the card, the table.

``torchrun --nproc_per_node 2 -m zoo.cli distill ...`` runs the same code on two CPU processes (gloo, one torch
thread each). In accelerate 1.15, ``accelerate launch --cpu --num_processes 2`` starts one process unless mpirun is
set up (``--mpirun_hostfile``). Each global batch of ``data.batch_size`` rows is split across the processes
(``split_batches``) and shuffled by a seeded sampler, so the processes together see the batches one process would
and the learning rate stays the same: results match a one-process run up to float summation order.

The output folder's layout is in ``zoo.runs``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import set_seed
from torch import nn
from transformers.utils import logging as hf_logging

from zoo import console
from zoo import data as zdata
from zoo.compress.guard import compression_stage
from zoo.compress.hardware import check_runtime
from zoo.controller import BanditController
from zoo.io import atomic_write_json, load_state_dict_checked, not_local, pid_alive, save_state_dict_atomic
from zoo.recipe import DISTILL_STAGES, Recipe, Stage, apply_overrides, load_recipe, recipe_from_dict
from zoo.runs import JSONL_NAME, STATE_NAME
from zoo.students import load_student
from zoo.teachers.train import train_teachers
from zoo.train.loop import StopRun, train_phase
from zoo.train.report import measure
from zoo.train.rows import Rows, collate_rows, split_inputs, truncation_lines, truncation_report
from zoo.train.starting import RunStudent
from zoo.train.teaching import RunTeachers, load_teachers

LOCK_NAME = ".lock"  # the pid of the run writing into the folder
STOP_ENV = "ZOO_STOP_AFTER_STEPS"  # simulate a crash after this many optimizer steps (resume tests)
__all__ = ["Run", "StopRun", "distill"]


def _launched_processes() -> int:
    """How many processes the launcher (torchrun, mpirun) started, from its environment."""
    names = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return max(int(os.environ.get(n) or 1) for n in names)


DDP_UNUSED_NOTE = "find_unused_parameters=True was specified in DDP constructor"
# a conv weight with one input channel ([C, 1, k, k], the grey-image patch embedding) gets its gradient with another
# stride on that size-1 dimension than DDP's bucket: the same memory layout, so no slower; torch warns all the same
DDP_STRIDES_NOTE = "Grad strides do not match bucket view strides"


def _quiet_ddp_notes(device) -> None:
    """Silence the two notes every process of a DDP run prints once, which the user cannot act on.

    ``DDP_STRIDES_NOTE`` is a Python warning: filtered. ``DDP_UNUSED_NOTE``: the runs need
    ``find_unused_parameters=True`` (which projectors and encoders take part depends on the stage and on the
    modalities in each batch), and in a step where all take part (any mixed_distill step) torch's reducer writes
    that note from C++ to stderr, out of reach of Python's warning filters. It is written once per process
    (``TORCH_WARN_ONCE``), so one forward of a throwaway DDP module, with stderr captured, spends it; anything
    else written meanwhile is passed on. Collective: every process calls it at the same point.
    """
    warnings.filterwarnings("ignore", message=DDP_STRIDES_NOTE, category=UserWarning)
    probe = nn.parallel.DistributedDataParallel(nn.Linear(1, 1).to(device), find_unused_parameters=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            probe(torch.zeros(1, 1, device=device))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        other = [line for line in f.read().decode(errors="replace").splitlines(True) if DDP_UNUSED_NOTE not in line]
    sys.stderr.write("".join(other))


class Run(RunTeachers, RunStudent):
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
        data_options: dict | None = None,
    ):
        self.recipe = recipe
        self.data_options = data_options or {}  # zoo.data.load's on_error / allow_outside_paths
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
        if self.accelerator.num_processes > 1:
            _quiet_ddp_notes(self.accelerator.device)
        hf_logging.disable_progress_bar()  # per-file load / save bars of the teachers drown the run's own log
        self.timings: dict[str, float] = {}
        self.stage_log: list[dict] = []
        self.warnings: list[str] = []  # metrics.json's run.warnings: what the user should look at
        self.teacher_validation: dict[str, float] = {}
        self.global_step = 0
        self.state: dict = {"completed": {}, "global_step": 0}

    # -- the output folder's lock ----------------------------------------------------------------------------------
    def _lock(self) -> None:
        """Take ``out/.lock`` (the pid of this run): a second run into the same folder refuses instead of wiping the
        first one's checkpoints. A lock whose process is gone (a killed run) is taken over."""
        path = self.out / LOCK_NAME
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and pid_alive(pid):
                    raise FileExistsError(
                        f"{self.out} is in use by another zoo distill (pid {pid}, {path}); wait for it, or choose "
                        "another --out."
                    ) from None
                path.unlink(missing_ok=True)  # a stale lock: its run was killed
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._locked = True
            return

    def unlock(self) -> None:
        if getattr(self, "_locked", False):
            (self.out / LOCK_NAME).unlink(missing_ok=True)
            self._locked = False

    # -- logging ------------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """A line for the run's log: printed on the main process and kept in run.log."""
        if self.is_main:
            line = f"[zoo distill] {message}"
            console.log(line)  # hidden by `zoo -q`; run.log keeps every line
            with open(self.out / "run.log", "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def record(self, **fields) -> None:
        if self.is_main:
            with open(self.jsonl, "a", encoding="utf-8") as f:
                f.write(json.dumps(fields) + "\n")

    @property
    def jsonl(self) -> Path:
        """The run's metrics.jsonl: the loop truncates it back to a checkpoint when resuming."""
        return self.out / JSONL_NAME

    def save_state(self) -> None:
        if self.is_main:
            atomic_write_json(self.out / STATE_NAME, self.state)

    # -- setup --------------------------------------------------------------------------------------------------
    def setup(self, data=None, teachers: dict[str, str] | None = None) -> None:
        """Data, teachers (trained when none are given), tokenizer, student, teacher cache, loss module."""
        r, acc = self.recipe, self.accelerator
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            self._lock()
        state_path = self.out / STATE_NAME
        settings = {"recipe": r.to_dict(), "teachers": dict(teachers if teachers is not None else r.teachers)}
        if self.resume and state_path.exists():
            self.state = json.loads(state_path.read_text())
            _refuse_changes(self.out, self.state.get("settings"), settings)
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
            self.state["settings"] = settings  # what --resume must find unchanged
        acc.wait_for_everyone()
        self.save_state()
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
        if isinstance(data, (str, os.PathLike)):  # a source, as `zoo distill --data` takes it
            data = zdata.load(data, seed=r.seed, **self.data_options)
        self.data = data if data is not None else _load_data(r, **self.data_options)
        if self.data.report.problems:
            self.log(f"data: skipped {self.data.report.skipped_rows} row(s) with problems:\n{self.data.report}")
        self.log(
            f"data: {self.data.source}: "
            + ", ".join(f"{k} {len(v)}" for k, v in self.data.splits.items())
            + f"; modalities {self.data.modalities}; {self.data.num_labels} classes"
        )
        if r.data.max_train_samples and len(self.data.splits["train"]) > r.data.max_train_samples:
            self.data.splits["train"] = self.data.splits["train"].select(range(r.data.max_train_samples))
        self.labelled_rows = len(self.data.splits["train"])
        if r.data.unlabeled:
            extra = zdata.load_unlabeled(r.data.unlabeled, self.data, max_rows=r.data.max_unlabeled)
            self.data = zdata.with_unlabeled(self.data, extra)
            self.log(f"data: {len(extra)} unlabeled rows from {r.data.unlabeled} join train (the teachers label them)")
        self.modalities = list(self.data.modalities)
        self.num_classes = self.data.num_labels
        data_ids = {name: self.data.fingerprint(name) for name in self.data.splits}
        if "data" in self.state:
            _refuse_changes(self.out, {"data": self.state["data"]}, {"data": data_ids})
        self.state["data"] = data_ids
        self.save_state()
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
        self.teachers = load_teachers(teacher_paths, self.num_classes, self.data.id2label, self.log)
        self.timings["teachers"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        set_seed(r.seed)
        self.student = self.new_student()
        hw = r.stages.hardware_adapt
        if hw is not None and hw.enabled:
            check_runtime(hw.runtime, self.student)  # an operator the runtime lacks fails now, not after the training
        self.log(
            f"student: {r.student} ({sum(p.numel() for p in self.student.parameters()) / 1e6:.2f}M params), "
            f"modalities {self.student.config.modalities}"
        )
        pre = self.student.preprocessors()
        self.rows = {name: Rows(split, pre) for name, split in self.data.splits.items()}
        if r.data.label_fraction < 1.0:
            kept = self.rows["train"].hide_labels(r.data.label_fraction, r.seed)
            self.log(
                f"data: the students see the labels of {kept} of {len(self.rows['train'])} train rows "
                f"(data.label_fraction {r.data.label_fraction})"
                + ("; the teachers trained here saw all of them" if self.trained_teachers else "")
            )
        # what each preprocessing cuts (the student's and each teacher's): a cut text loses its end silently otherwise
        self.truncation = truncation_report(self.rows["train"], pre, self.teachers)
        for line in truncation_lines(self.truncation):
            self.log(line)
        self.timings["preprocess"] = time.perf_counter() - t0

        self.check_teachers()

        t0 = time.perf_counter()
        self.cached = self._teacher_cache()
        self.timings["teacher_cache"] = time.perf_counter() - t0
        self.criterion = self._criterion()
        self.global_step = int(self.state.get("global_step", 0))

    def warn(self, message: str) -> None:
        """A loud log line, kept for metrics.json's ``run.warnings``."""
        self.warnings.append(message)
        self.log(f"WARNING: {message}")

    # -- evaluation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, student: nn.Module, split: str = "validation", limit: int | None = None) -> dict:
        """Accuracy and CE of ``student`` on a split (sharded across processes, gathered for the metric)."""
        rows = self.rows[split]
        indices = list(range(len(rows) if limit is None else min(limit, len(rows))))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(rows, indices), batch_size=self.recipe.data.eval_batch_size,
            collate_fn=collate_rows,
        )  # fmt: skip
        acc = self.accelerator
        loader = prepare_data_loader(
            loader, acc.device, num_processes=acc.num_processes, process_index=acc.process_index, split_batches=True
        )
        was_training = student.training
        student.eval()
        logits_all, labels_all = [], []
        for batch in loader:
            inputs, labels, _ = split_inputs(batch)
            with torch.no_grad():
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

    # -- checkpoints --------------------------------------------------------------------------------------------
    def phase_dir(self, phase: str) -> Path:
        return self.out / "checkpoints" / phase

    def finish_phase(self, phase: str, student: nn.Module, summary: dict) -> None:
        """Save the phase's result and mark it complete (a resumed run starts after it)."""
        acc = self.accelerator
        folder = self.phase_dir(phase) / "final"
        if self.is_main:
            student.save_pretrained(folder)
            save_state_dict_atomic(self.criterion.state_dict(), folder / "criterion.safetensors")
        acc.wait_for_everyone()
        self.state["completed"][phase] = summary
        self.state["global_step"] = self.global_step
        self.save_state()
        for old in self.phase_dir(phase).glob("step-*"):
            if self.is_main:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def load_phase(self, phase: str) -> nn.Module:
        folder = self.phase_dir(phase) / "final"
        student = load_student(folder)
        crit = folder / "criterion.safetensors"
        if crit.exists():
            self.criterion.load_state_dict(load_state_dict_checked(crit))
        return student.train()

    # -- the whole run ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Baseline, stages, measurements; returns metrics.json's content."""
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
                raw = self.load_phase("raw_student")
            else:
                torch.manual_seed(r.seed)
                # same seed, same initial weights as the distilled student, except what student_init takes from
                # the teacher: the baseline learns without any teacher
                raw = self.new_student(inherit=False)
                lr = max(s.lr for _, s in distill)
                # a diverging baseline names the stage whose learning rate it borrowed
                self.lr_keys = {"raw_student": f"stages.{max(distill, key=lambda d: d[1].lr)[0]}.lr"}
                base = Stage(steps=budget, lr=lr, warmup=distill[0][1].warmup)
                base.weights.ce = 1.0
                # the labelled rows only: unlabeled rows teach nothing without KD
                raw, summary = train_phase(
                    self, "raw_student", base, raw, schedule=(0, budget), rows=self.labelled_rows
                )
                self.finish_phase("raw_student", raw, summary)
            self.raw_student = raw
            self.check_teachers_against((self.state["completed"].get("raw_student") or {}).get("val_accuracy"))
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
                student = self.load_phase(source)
            t0 = time.perf_counter()
            if name in DISTILL_STAGES:
                controller = None
                if name == "mixed_distill" and r.controller.enabled and stage.weights.adaptive > 0:
                    c = r.controller
                    controller = BanditController(c.arms, c.exploration, c.discount, seed=r.seed)
                schedule = (offsets[name], budget)
                student, summary = train_phase(self, name, stage, student, controller=controller, schedule=schedule)
                if controller is not None:
                    summary["controller"] = controller.state_dict()["trajectory"]
            else:
                student, summary = compression_stage(self, name, stage, student)
            summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
            self.finish_phase(name, student, summary)
            self.stage_log.append(summary)
            last = name
            last_float = name if name != "quant_finetune" else last_float
            if name == DISTILL_STAGES[-1] or (
                name in DISTILL_STAGES and not any(n == "mixed_distill" for n, _ in stages)
            ):
                self._save_distilled(student)
        if last is not None and not (self.out / "model.safetensors").exists():
            self._save_distilled(self.load_phase(last) if last in DISTILL_STAGES else student)
        self.timings["train"] = time.perf_counter() - t_start
        return measure(self)

    def _save_distilled(self, student) -> None:
        if self.is_main:
            self.accelerator.unwrap_model(student).save_pretrained(self.out)
        self.accelerator.wait_for_everyone()


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out if out or not prefix else {prefix: d}


def _refuse_changes(out: Path, saved: dict | None, now: dict) -> None:
    """``--resume`` continues the same run: refuse when a setting, the data or a teacher changed, listing each."""
    if saved is None:  # a run folder written before settings were recorded
        return
    before, after = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(now)))
    changed = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)]  # fmt: skip
    if changed:
        listed = "; ".join(changed[:10]) + (f"; ... and {len(changed) - 10} more" if len(changed) > 10 else "")
        raise ValueError(
            f"--resume: {out} was started with other settings, data or teachers ({listed}). Resume with the same "
            "command, or start a new run (--overwrite or another --out)."
        )


def _load_data(recipe: Recipe, **options):
    """The recipe's data (``options``: ``zoo.data.load``'s on_error and allow_outside_paths)."""
    source = recipe.data.source
    if source in (None, "quickstart"):
        return zdata.quickstart(seed=recipe.seed)
    return zdata.load(source, seed=recipe.seed, **options)


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
    skip_bad: bool = False,
    allow_outside_paths: bool = False,
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
        skip_bad: drop data rows with problems (listed in the log) instead of stopping (``on_error="skip"``).
        allow_outside_paths: accept media paths in the data file that leave its folder (``../x.png``).
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
        r = recipe_from_dict(apply_overrides(recipe.to_dict(), extra), "recipe (with overrides)")
    for modality, path in (teachers or r.teachers).items():  # a mistyped teacher path fails before any work
        if not os.path.exists(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1):
            raise FileNotFoundError(f"--teacher {modality}: {not_local(path)}.")
    out = Path(out_dir) if out_dir is not None else Path("runs") / r.name
    options = {"on_error": "skip" if skip_bad else "raise", "allow_outside_paths": allow_outside_paths}
    run = Run(
        r, out, resume=resume, stop_after_steps=stop_after_steps, progress=progress, overwrite=overwrite,
        data_options=options,
    )  # fmt: skip
    try:
        run.setup(data=data, teachers=teachers or None)
        return run.run()
    finally:
        run.unlock()
