"""The accuracy guard: a compression stage is kept only when validation accuracy holds, else rolled back."""

from __future__ import annotations

import torch
from torch import nn

from zoo.compress.stages import COMPRESSION_STAGES
from zoo.recipe import Stage
from zoo.train.loop import Diverged, train_phase


def compare_answers(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """Two students' predictions on the same rows: the share answered alike, the rows answered right ``before`` and
    wrong ``after`` (lost), and the reverse (gained)."""
    right_before, right_after = before == labels, after == labels
    lost, gained = int((right_before & ~right_after).sum()), int((~right_before & right_after).sum())
    return float((before == after).float().mean()), lost, gained


def fmt_settings(settings: dict) -> str:
    """A stage attempt's settings for a log line, numbers rounded: "keep=0.7, latency_budget_ms=0.235"."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


def compression_stage(run, name: str, stage: Stage, student: nn.Module) -> tuple[nn.Module, dict]:
    """Run a compression stage (``COMPRESSION_STAGES[name]``) under the accuracy guard: each attempt prepares a
    candidate, recovers it with KD (``zoo.train.loop``), finalizes it and is kept when validation accuracy drops
    by at most the stage's tolerance; else it is rolled back and the next (milder) attempt is tried."""
    summary = {"name": name, "steps": 0, "lr": stage.lr, "rollbacks": [], "status": "skipped"}
    # the recovery's own settings, as a distillation stage records them (the card's lineage table shows them)
    summary.update(weights=stage.weights.as_dict(), temperature=[stage.temperature.at(0.0), stage.temperature.at(1.0)])
    spec = COMPRESSION_STAGES[name]
    start = run.evaluate(student)
    before = start["accuracy"]
    tol = stage.accuracy_tolerance if stage.accuracy_tolerance is not None else run.recipe.train.accuracy_tolerance
    attempts = spec.attempts(stage)
    for i, settings in enumerate(attempts):
        phase = f"{name}-a{i}"
        candidate, result, reference = spec.prepare(run, stage, student, settings, phase)
        if candidate is None:
            run.log(f"{name}: skipped: {result}")
            summary.update(status="skipped", reason=result)
            return student, summary
        if stage.num_steps(len(run.rows["train"]), run.recipe.data.batch_size):
            try:
                candidate, trained = train_phase(run, phase, stage, candidate, reference=reference)
            except Diverged as e:  # the recovery blew up: this attempt is rolled back like one that lost accuracy
                event = {"settings": settings, "reason": f"diverged: {e}"}
                summary["rollbacks"].append(event)
                nxt = f"retrying with {fmt_settings(attempts[i + 1])}" if i + 1 < len(attempts) else "none left"
                run.log(f"{name}: {e}: rolled back to the previous student ({nxt})")
                run.record(event="rollback", phase=name, global_step=run.global_step, **event)
                continue
            summary["steps"] += trained["steps"]
        candidate = spec.finalize(candidate)
        evaluated = run.evaluate(candidate)
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
            run.log(
                f"{name}: {fmt_settings(settings)}: validation accuracy {100 * before:.2f}% -> {100 * after:.2f}% "
                f"({churn}), {100 * agreement:.1f}% of answers unchanged (kept)"
            )
            return candidate, summary
        event = {"settings": settings, "accuracy_before": before, "accuracy_after": after, "drop": drop,
                 "answers_lost": lost, "answers_gained": gained}  # fmt: skip
        summary["rollbacks"].append(event)
        milder = (
            f"; retrying with {fmt_settings(attempts[i + 1])}" if i + 1 < len(attempts) else "; no milder setting left"
        )
        run.log(
            f"{name}: accuracy guard: validation accuracy fell {100 * drop:.2f} points (> {100 * tol:.2f}; "
            f"{churn}) with {fmt_settings(settings)}: rolled back to the previous student{milder}"
        )
        run.record(event="rollback", phase=name, global_step=run.global_step, reason="accuracy guard", **event)
    summary["status"] = "rolled back"
    return student, summary
