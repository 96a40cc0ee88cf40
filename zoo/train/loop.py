"""The training loop: one function, ``train_loop``, that every training job of the project goes through.

It reads top to bottom like nanoGPT's ``train.py``: resume, then per step: the batch's arguments (learning rate and
temperature come from the scheduler and the ``Phase``), micro-steps (``accelerator.accumulate``), non-finite rollback,
clip and step, log, controller evaluation, checkpoint, stop; with ``keep_best`` the validation accuracy at each
epoch's end picks the weights the phase returns (the best, or the last when nothing beat it). The loop is plain
``accelerate`` (``accumulate``, ``backward``, ``skip_first_batches``); checkpoints go through ``zoo.checkpoint``
(safetensors + JSON) rather than accelerate's pickled ``save_state``.

What differs between jobs is a ``Phase`` (the module, its batches and how a batch becomes the module's arguments,
the optimizer and schedule, the ``train:`` settings) and the host it runs for: ``train_phase`` builds the phase of a
distillation stage for a ``zoo.train.run.Run``; ``zoo.teachers.fit`` builds one for a teacher.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_model, save_model
from torch import nn

from zoo.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from zoo.console import Progress
from zoo.io import atomic_path
from zoo.recipe import ControllerSettings, Stage, TrainSettings
from zoo.train.objective import DistillModule, uses_teacher
from zoo.train.rows import collate_rows, split_inputs
from zoo.train.schedule import phase_lr


class Diverged(ValueError):
    """Training gave non-finite losses more often than ``train.max_rollbacks``: a setting to change (one line)."""


class StopRun(Exception):
    """Raised when a run stops on purpose (``stop_after_steps``); the last checkpoint lets ``--resume`` go on."""


@dataclass
class Phase:
    """One call of ``train_loop``: what trains, on which batches, how long and with which settings.

    ``feed(batch, progress)`` turns a batch into the module's positional arguments and the values logged with the
    step (``progress``: 0 at the first step, 1 at the last); the module returns its loss terms, the total under
    ``"loss"``. ``model`` is what is evaluated, kept at its best and returned. ``loader`` has ``set_epoch`` and goes
    through ``accelerator.skip_first_batches`` to resume mid-epoch.
    """

    name: str
    steps: int
    model: nn.Module
    module: nn.Module
    loader: Iterable
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    feed: Callable[[object, float], tuple[tuple, dict]]
    settings: TrainSettings
    keep_best: bool = False
    lr_key: str = "lr"  # the setting a diverging phase names
    controller: object = None  # zoo.controller.BanditController: scales the distillation term
    controller_settings: ControllerSettings | None = None


class SingleProcess:
    """The part of ``accelerate.Accelerator`` the loop uses, for a job one process runs alone on ``device``.

    A run's teachers are trained by its main process only, so they cannot take part in the run's collective
    operations (gather, DDP); a teacher fine-tune uses this instead of the process group's accelerator.
    """

    num_processes, process_index, is_main_process = 1, 0, True
    sync_gradients, scaler, step = True, None, 0

    def __init__(self, device: torch.device):
        self.device = device

    def accumulate(self, module):
        return contextlib.nullcontext()

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def gather(self, tensor):
        return tensor

    def reduce(self, tensor, reduction="mean"):
        return tensor

    def unwrap_model(self, model):
        return model

    def skip_first_batches(self, loader, num_batches):
        return _Skipped(loader, num_batches)

    def wait_for_everyone(self):
        pass

    def free_memory(self):
        pass


class _Skipped:
    """``loader`` without its first ``n`` batches (one epoch: the first resumed one)."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        it = iter(self.loader)
        for _ in range(self.n):
            next(it, None)
        return it


def train_phase(
    run,
    phase: str,
    stage: Stage,
    student: nn.Module,
    *,
    controller=None,
    reference: nn.Module | None = None,
    weights: dict | None = None,
    schedule: tuple[int, int] | None = None,
    rows: int | None = None,
) -> tuple[nn.Module, dict]:
    """Train ``student`` for one stage of ``run`` (a ``zoo.train.run.Run``); resumes from the phase's latest
    checkpoint. ``schedule`` = (offset, total): this phase is steps offset.. of one warmup + cosine schedule;
    ``rows``: train on the first ``rows`` train rows only (the labelled ones). Returns (student, summary)."""
    r, acc = run.recipe, run.accelerator
    weights = weights or stage.weights.as_dict()
    dataset = _stage_subset(run.rows["train"], stage.data_fraction, r.seed, rows)
    batch_size = min(r.data.batch_size, len(dataset))
    steps = stage.num_steps(len(dataset), batch_size * r.train.gradient_accumulation_steps)
    summary = {"name": phase, "steps": steps, "lr": stage.lr, "weights": weights, "rollbacks": []}
    summary["temperature"] = [stage.temperature.at(0.0), stage.temperature.at(1.0)]
    if steps == 0:
        return student, summary

    # data, optimizer (the student says which of its parameters get no weight decay), schedule
    set_seed(r.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, drop_last=True, collate_fn=collate_rows)
    module = DistillModule(student, run.criterion)
    skip = {f"student.{n}" for n in student.no_weight_decay()}
    optimizer = torch.optim.AdamW(param_groups(module, r.train.weight_decay, skip), lr=stage.lr)
    offset, total = schedule or (0, steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, phase_lr(stage.warmup, stage.min_lr_ratio, offset, total))
    module, optimizer, loader, scheduler = acc.prepare(module, optimizer, loader, scheduler)
    if reference is not None:
        reference = reference.to(acc.device).eval()
    teacher = uses_teacher(weights)
    gp = r.losses.gradient_penalty if teacher else 0.0

    def feed(batch, progress: float) -> tuple[tuple, dict]:
        """The module's arguments for a batch: the teachers' cached outputs, the reference's logits, the scales."""
        inputs, labels, ids = split_inputs(batch)
        temperature = stage.temperature.at(progress)
        multiplier = controller.multiplier if controller is not None else 1.0
        teachers = run.teachers_for(ids) if teacher else {}
        ref_logits = None
        if reference is not None:
            with torch.no_grad():
                ref_logits = reference(**inputs)
        scales = run.loss_scales(labels, teachers) if acc.num_processes > 1 else None
        logged = {"temperature": round(temperature, 4)} | ({"multiplier": multiplier} if controller is not None else {})
        return (inputs, labels, teachers, temperature, weights, multiplier, gp, ref_logits, scales), logged

    job = Phase(
        phase, steps, student, module, loader, optimizer, scheduler, feed, r.train,
        keep_best=r.train.keep_best and len(run.rows.get("validation") or []) > 0,
        lr_key=getattr(run, "lr_keys", {}).get(phase, f"stages.{phase.split('-')[0]}.lr"),
        controller=controller, controller_settings=r.controller,
    )  # fmt: skip
    summary.update(train_loop(run, job))
    return student, summary


def train_loop(run, job: Phase) -> dict:
    """Train ``job`` for ``run`` and return its summary (seconds, rollbacks, validation accuracy and loss).

    ``run`` is the host: its ``accelerator``, ``resume``, ``is_main``, ``progress``, ``log``, ``record`` (one line of
    ``run.jsonl``, the log a checkpoint truncates back to), ``evaluate(model, limit=None)`` ({accuracy, loss}),
    ``phase_dir(name)`` (checkpoints) and the step counters ``global_step``, ``steps_this_session``, ``stop_after``.
    """
    acc, cfg, steps, phase, controller = run.accelerator, job.settings, job.steps, job.name, job.controller
    module, optimizer, scheduler = job.module, job.optimizer, job.scheduler

    # resume: counters, weights, optimizer and RNG from the phase's last checkpoint
    st = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "rollbacks": [], "metric_before": None}
    st.update(best=None, best_step=None)
    if run.resume:
        st = _resume(run, phase, st, module, optimizer, scheduler, controller)
    unwrapped = acc.unwrap_model(module)
    good = _snapshot(unwrapped, optimizer, st)  # the state a non-finite loss rolls back to
    ctrl = job.controller_settings
    if controller is not None:
        if not controller.started:
            controller.start(st["step"])
        if st["metric_before"] is None:  # the reference the first reward is measured against
            st["metric_before"] = _controller_metric(run.evaluate(job.model, limit=ctrl.eval_samples), ctrl)
    # a bar on a terminal; off one (a log file), a line every train.progress_every steps with loss, rate and ETA
    bar = Progress(steps, st["step"], phase, run.log, None if run.is_main and run.progress else False,
                   every=cfg.progress_every)  # fmt: skip
    t0 = time.perf_counter()
    module.train()
    while st["step"] < steps:
        job.loader.set_epoch(st["epoch"])
        batches = job.loader
        if st["batch_in_epoch"]:  # resuming mid-epoch: the same shuffled order, minus the batches already seen
            batches = acc.skip_first_batches(job.loader, st["batch_in_epoch"])
            batches.set_epoch(st["epoch"])
        for batch in batches:
            st["batch_in_epoch"] += 1
            args, logged = job.feed(batch, st["step"] / max(steps - 1, 1))

            # forward, backward, clip and step (a micro-step when accumulating)
            with acc.accumulate(module):
                with acc.autocast():
                    terms = module(*args)
                loss = terms["loss"]
                if not bool(acc.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0):
                    optimizer.zero_grad()  # a NaN / inf loss: no step, back to the last good state, say so
                    _rollback(run, job, st, unwrapped, optimizer, good)
                    continue
                acc.backward(loss)
                if acc.sync_gradients and cfg.grad_clip:
                    acc.clip_grad_norm_(module.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not acc.sync_gradients:
                continue
            st["step"] += 1
            run.global_step += 1
            run.steps_this_session += 1
            bar.update(loss=float(loss.detach()))

            # log, controller, checkpoint, stop
            if st["step"] % cfg.log_every == 0 or st["step"] == steps:
                vals = {k: float(acc.reduce(v.detach().float(), "mean")) for k, v in terms.items()}
                rec = {**{k: v for k, v in logged.items() if k != "multiplier"}, "lr": scheduler.get_last_lr()[0]}
                rec.update(vals, **{k: v for k, v in logged.items() if k == "multiplier"})
                run.record(event="train", phase=phase, step=st["step"], global_step=run.global_step, **rec)
                postfix = {"T": f"{logged['temperature']:.2f}"} if "temperature" in logged else {}
                bar.bar.set_postfix(loss=f"{vals['loss']:.3f}", **postfix)
            if controller is not None and st["step"] % ctrl.interval == 0 and st["step"] < steps:
                ev = run.evaluate(job.model, limit=ctrl.eval_samples)
                metric = _controller_metric(ev, ctrl)
                reward = metric - st["metric_before"]
                new = controller.update(reward, step=st["step"], metric=metric)
                st["metric_before"] = metric
                run.record(
                    event="eval", phase=phase, step=st["step"], global_step=run.global_step,
                    val_accuracy=ev["accuracy"], val_loss=ev["loss"], reward=reward, multiplier=new,
                )  # fmt: skip
                bar.bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val_acc=f"{ev['accuracy']:.3f}", kd_x=new)
            saved_now = st["step"] % cfg.checkpoint_every == 0 and st["step"] < steps
            if saved_now:
                good = _snapshot(unwrapped, optimizer, st)
                save_phase_checkpoint(run, phase, st, controller, module, optimizer, scheduler)
            if run.stop_after is not None and run.steps_this_session >= run.stop_after:
                if not saved_now:
                    save_phase_checkpoint(run, phase, st, controller, module, optimizer, scheduler)
                bar.close()
                raise StopRun(
                    f"stopped after {run.steps_this_session} steps (in {phase}, step {st['step']} of {steps}); "
                    "run again with --resume to continue."
                )
            if st["step"] >= steps:
                break
        else:
            st["epoch"] += 1
            st["batch_in_epoch"] = 0
            if job.keep_best and st["step"] < steps:
                _consider_best(run, phase, st, job.model)
    bar.close()
    acc.free_memory()

    # the phase's result, measured on the validation split
    summary = {"seconds": round(time.perf_counter() - t0, 2), "rollbacks": st["rollbacks"]}
    ev = run.evaluate(job.model)
    run.record(
        event="eval", phase=phase, step=steps, global_step=run.global_step,
        val_accuracy=ev["accuracy"], val_loss=ev["loss"],
    )  # fmt: skip
    if job.keep_best and st["best"] is not None and st["best"] > ev["accuracy"]:
        load_model(job.model, str(_best_file(run, phase)))
        run.log(
            f"{phase}: kept the best validation checkpoint (step {st['best_step']}, {100 * st['best']:.2f}%) over "
            f"the last ({100 * ev['accuracy']:.2f}%)"
        )
        ev = run.evaluate(job.model)
        summary["best_step"] = st["best_step"]
    summary["val_accuracy"], summary["val_loss"] = ev["accuracy"], ev["loss"]
    run.log(f"{phase}: {steps} steps in {summary['seconds']:.1f}s, validation accuracy {100 * ev['accuracy']:.2f}%")
    return summary


def _best_file(run, phase: str):
    return run.phase_dir(phase) / "best.safetensors"


def _consider_best(run, phase: str, st: dict, student: nn.Module) -> None:
    """Measure validation accuracy; when it beats the phase's best so far, save the weights (safetensors, atomic)
    and record where. Evaluation draws no random numbers, so training continues exactly as without it."""
    ev = run.evaluate(student)
    run.record(
        event="eval", phase=phase, step=st["step"], global_step=run.global_step,
        val_accuracy=ev["accuracy"], val_loss=ev["loss"],
    )  # fmt: skip
    if st["best"] is None or ev["accuracy"] > st["best"]:
        st["best"], st["best_step"] = ev["accuracy"], st["step"]
        if run.is_main:
            path = _best_file(run, phase)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_model(student, str(tmp))
        run.accelerator.wait_for_everyone()


def _stage_subset(train, fraction: float, seed: int, first: int | None = None):
    """A stage's seeded share of the train rows (all of them at 1.0), or the ``first`` rows when given."""
    if first is not None and first < len(train):
        return torch.utils.data.Subset(train, list(range(first)))
    n_use = max(int(len(train) * fraction), 1)
    if n_use >= len(train):
        return train
    g = torch.Generator().manual_seed(seed + 17)
    return torch.utils.data.Subset(train, sorted(torch.randperm(len(train), generator=g)[:n_use].tolist()))


def param_groups(module: nn.Module, weight_decay: float, skip: set[str] = frozenset()) -> list[dict]:
    """Weight decay on matrices, none on vectors (norms, biases) and on the parameters named in ``skip`` (what a
    student declares in ``no_weight_decay()``: position embeddings), as nanoGPT's ``configure_optimizers`` and timm
    models do."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _resume(run, phase: str, st: dict, module, optimizer, scheduler, controller) -> dict:
    """The counters of the phase's latest checkpoint, with module, optimizer, scheduler, RNG and controller
    restored; ``st`` unchanged when the phase has none."""
    ckpt = latest_checkpoint(run.phase_dir(phase))
    if ckpt is None:
        return st
    acc = run.accelerator
    saved = load_checkpoint(ckpt, model=module, optimizer=optimizer, scheduler=scheduler, accelerator=acc)
    st = {k: saved.get(k, v) for k, v in st.items()}
    run.global_step = saved["global_step"]
    if controller is not None and saved.get("controller"):
        controller.load_state_dict(saved["controller"])
    if run.is_main and run.jsonl is not None:  # drop log lines written after the checkpoint: they are redone
        with open(run.jsonl, "r+b") as f:
            f.truncate(saved["jsonl_bytes"])
    run.log(f"{phase}: resumed from {ckpt.name} (epoch {st['epoch']}, batch {st['batch_in_epoch']})")
    return st


def _rollback(run, job: Phase, st: dict, model: nn.Module, optimizer, good: dict) -> None:
    """Return to the last good state after a non-finite loss, log it, and give up after too many."""
    _restore(model, optimizer, good)
    event = {"step": st["step"], "to_step": good["step"], "reason": "non-finite loss"}
    st["rollbacks"].append(event)
    run.log(f"{job.name}: non-finite loss at step {st['step']}: rolled back to step {good['step']}")
    run.record(event="rollback", phase=job.name, global_step=run.global_step, **event)
    if len(st["rollbacks"]) > job.settings.max_rollbacks:
        raise Diverged(
            f"{job.name}: {len(st['rollbacks'])} non-finite losses; lower the learning rate ({job.lr_key}) or the "
            "temperature."
        )


def save_phase_checkpoint(run, phase: str, state: dict, controller, module, optimizer, scheduler) -> None:
    """Module, optimizer, scheduler, RNG (``zoo.checkpoint``: safetensors + JSON, no pickle) and the trainer's
    counters; written atomically by the main process, then the phase's older checkpoints are removed."""
    folder = run.phase_dir(phase) / f"step-{state['step']}"
    jsonl = run.jsonl
    state = {
        **state,
        "global_step": run.global_step,
        "jsonl_bytes": jsonl.stat().st_size if jsonl is not None and jsonl.exists() else 0,
        "controller": controller.state_dict() if controller is not None else None,
    }
    acc = run.accelerator
    save_checkpoint(
        folder, model=module, optimizer=optimizer, scheduler=scheduler, trainer_state=state, accelerator=acc
    )
    if run.is_main:  # only now that the new one is complete
        for old in run.phase_dir(phase).glob("step-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


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
