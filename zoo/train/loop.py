"""The training loop: one function, ``train_phase``, that every training phase of a run goes through.

It reads top to bottom like nanoGPT's ``train.py``: data and optimizer, resume, then per step: learning rate and
temperature, micro-steps (``accelerator.accumulate``), non-finite rollback, clip and step, log, controller
evaluation, checkpoint, stop; with ``train.keep_best`` the validation accuracy at each epoch's end picks the weights
the phase returns (the best, or the last when nothing beat it). The loop is plain ``accelerate`` (``accumulate``,
``backward``, ``skip_first_batches``); checkpoints go through ``zoo.checkpoint`` (safetensors + JSON) rather than
accelerate's pickled ``save_state``.
"""

from __future__ import annotations

import copy
import shutil
import time

import torch
from accelerate.utils import set_seed
from torch import nn

from zoo.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from zoo.console import Progress
from zoo.recipe import Stage
from zoo.runs import JSONL_NAME
from zoo.train.objective import DistillModule, uses_teacher
from zoo.train.rows import collate_rows, split_inputs
from zoo.train.schedule import phase_lr


class Diverged(ValueError):
    """Training gave non-finite losses more often than ``train.max_rollbacks``: a setting to change (one line)."""


class StopRun(Exception):
    """Raised when a run stops on purpose (``stop_after_steps``); the last checkpoint lets ``--resume`` go on."""


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
    optimizer = torch.optim.AdamW(_param_groups(module, r.train.weight_decay), lr=stage.lr)
    offset, total = schedule or (0, steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, phase_lr(stage.warmup, stage.min_lr_ratio, offset, total))
    module, optimizer, loader, scheduler = acc.prepare(module, optimizer, loader, scheduler)
    if reference is not None:
        reference = reference.to(acc.device).eval()

    # resume: counters, weights, optimizer and RNG from the phase's last checkpoint
    st = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "rollbacks": [], "metric_before": None}
    st.update(best=None, best_step=None)
    if run.resume:
        st = _resume(run, phase, st, module, optimizer, scheduler, controller)
    unwrapped = acc.unwrap_model(module)
    keep_best = r.train.keep_best and len(run.rows.get("validation") or []) > 0
    good = _snapshot(unwrapped, optimizer, st)  # the state a non-finite loss rolls back to
    ctrl = r.controller
    if controller is not None:
        if not controller.started:
            controller.start(st["step"])
        if st["metric_before"] is None:  # the reference the first reward is measured against
            st["metric_before"] = _controller_metric(run.evaluate(unwrapped.student, limit=ctrl.eval_samples), ctrl)
    teacher = uses_teacher(weights)
    gp = r.losses.gradient_penalty if teacher else 0.0
    # a bar on a terminal; off one (a log file), a line every train.progress_every steps with loss, rate and ETA
    bar = Progress(steps, st["step"], phase, run.log, None if run.is_main and run.progress else False,
                   every=r.train.progress_every)  # fmt: skip
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
            inputs, labels, ids = split_inputs(batch)
            temperature = stage.temperature.at(st["step"] / max(steps - 1, 1))
            multiplier = controller.multiplier if controller is not None else 1.0
            teachers = run.teachers_for(ids) if teacher else {}
            ref_logits = None
            if reference is not None:
                with torch.no_grad():
                    ref_logits = reference(**inputs)
            scales = run.loss_scales(labels, teachers) if acc.num_processes > 1 else None

            # forward, backward, clip and step (a micro-step when accumulating)
            with acc.accumulate(module):
                with acc.autocast():
                    terms = module(inputs, labels, teachers, temperature, weights, multiplier, gp, ref_logits, scales)
                loss = terms["loss"]
                if not bool(acc.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0):
                    optimizer.zero_grad()  # a NaN / inf loss: no step, back to the last good state, say so
                    _rollback(run, phase, st, unwrapped, optimizer, good)
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
            run.global_step += 1
            run.steps_this_session += 1
            bar.update(loss=float(loss.detach()))

            # log, controller, checkpoint, stop
            if st["step"] % r.train.log_every == 0 or st["step"] == steps:
                vals = {k: float(acc.reduce(v.detach().float(), "mean")) for k, v in terms.items()}
                rec = {"temperature": round(temperature, 4), "lr": scheduler.get_last_lr()[0], **vals}
                if controller is not None:
                    rec["multiplier"] = multiplier
                run.record(event="train", phase=phase, step=st["step"], global_step=run.global_step, **rec)
                bar.bar.set_postfix(loss=f"{vals['loss']:.3f}", T=f"{temperature:.2f}")
            if controller is not None and st["step"] % ctrl.interval == 0 and st["step"] < steps:
                ev = run.evaluate(unwrapped.student, limit=ctrl.eval_samples)
                metric = _controller_metric(ev, ctrl)
                reward = metric - st["metric_before"]
                new = controller.update(reward, step=st["step"], metric=metric)
                st["metric_before"] = metric
                run.record(
                    event="eval", phase=phase, step=st["step"], global_step=run.global_step,
                    val_accuracy=ev["accuracy"], val_loss=ev["loss"], reward=reward, multiplier=new,
                )  # fmt: skip
                bar.bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val_acc=f"{ev['accuracy']:.3f}", kd_x=new)
            saved_now = st["step"] % r.train.checkpoint_every == 0 and st["step"] < steps
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
            if keep_best and st["step"] < steps:
                _consider_best(run, phase, st, unwrapped.student)
    bar.close()

    # the phase's result, measured on the validation split
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["rollbacks"] = st["rollbacks"]
    student = acc.unwrap_model(module).student
    acc.free_memory()
    ev = run.evaluate(student)
    run.record(
        event="eval", phase=phase, step=steps, global_step=run.global_step,
        val_accuracy=ev["accuracy"], val_loss=ev["loss"],
    )  # fmt: skip
    if keep_best and st["best"] is not None and st["best"] > ev["accuracy"]:
        from safetensors.torch import load_model

        load_model(student, str(_best_file(run, phase)))
        run.log(
            f"{phase}: kept the best validation checkpoint (step {st['best_step']}, {100 * st['best']:.2f}%) over "
            f"the last ({100 * ev['accuracy']:.2f}%)"
        )
        ev = run.evaluate(student)
        summary["best_step"] = st["best_step"]
    summary["val_accuracy"], summary["val_loss"] = ev["accuracy"], ev["loss"]
    run.log(f"{phase}: {steps} steps in {summary['seconds']:.1f}s, validation accuracy {100 * ev['accuracy']:.2f}%")
    return student, summary


def _best_file(run, phase: str):
    return run.phase_dir(phase) / "best.safetensors"


def _consider_best(run, phase: str, st: dict, student: nn.Module) -> None:
    """Measure validation accuracy; when it beats the phase's best so far, save the weights (safetensors, atomic)
    and record where. Evaluation draws no random numbers, so training continues exactly as without it."""
    from safetensors.torch import save_model

    from zoo.io import atomic_path

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


def _param_groups(module: DistillModule, weight_decay: float) -> list[dict]:
    """Weight decay on matrices, none on vectors (norms, biases) and on what the student declares
    (``no_weight_decay()``: position embeddings), as nanoGPT's ``configure_optimizers`` and timm models do."""
    skip = {f"student.{n}" for n in module.student.no_weight_decay()}
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
    if run.is_main:  # drop log lines written after the checkpoint: they are about to be redone
        with open(run.out / JSONL_NAME, "r+b") as f:
            f.truncate(saved["jsonl_bytes"])
    run.log(f"{phase}: resumed from {ckpt.name} (epoch {st['epoch']}, batch {st['batch_in_epoch']})")
    return st


def _rollback(run, phase: str, st: dict, model: nn.Module, optimizer, good: dict) -> None:
    """Return to the last good state after a non-finite loss, log it, and give up after too many."""
    _restore(model, optimizer, good)
    event = {"step": st["step"], "to_step": good["step"], "reason": "non-finite loss"}
    st["rollbacks"].append(event)
    run.log(f"{phase}: non-finite loss at step {st['step']}: rolled back to step {good['step']}")
    run.record(event="rollback", phase=phase, global_step=run.global_step, **event)
    if len(st["rollbacks"]) > run.recipe.train.max_rollbacks:
        key = getattr(run, "lr_keys", {}).get(phase, f"stages.{phase.split('-')[0]}.lr")
        raise Diverged(
            f"{phase}: {len(st['rollbacks'])} non-finite losses; lower the learning rate ({key}) or the temperature."
        )


def save_phase_checkpoint(run, phase: str, state: dict, controller, module, optimizer, scheduler) -> None:
    """Module, optimizer, scheduler, RNG (``zoo.checkpoint``: safetensors + JSON, no pickle) and the trainer's
    counters; written atomically by the main process, then the phase's older checkpoints are removed."""
    folder = run.phase_dir(phase) / f"step-{state['step']}"
    jsonl = run.out / JSONL_NAME
    state = {
        **state,
        "global_step": run.global_step,
        "jsonl_bytes": jsonl.stat().st_size if jsonl.exists() else 0,
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
