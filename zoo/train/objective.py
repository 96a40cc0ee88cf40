"""The training objective: loss terms as a registry of small classes, summed by their stage weights.

A term is one class with a ``key`` (its weight's name in a stage's ``weights:``) and a ``__call__`` that returns
its value for a step; ``@register_loss_term`` adds it to ``zoo.registry.LOSS_TERMS``, which the recipe reads to
accept the key. ``DistillModule`` loops over the registered terms in registration order (the torchdistill
``WeightedSumLoss`` pattern), so a new term is one class and one recipe key::

    @register_loss_term
    class LogitNorm(LossTerm):
        key = "logit_norm"
        def __call__(self, step): return step.logits.pow(2).mean()

The built-in terms read the teacher-term module (``zoo.losses.DistillationLoss``: projectors, teacher fusion).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from zoo import losses
from zoo.registry import LOSS_TERMS, register_loss_term  # noqa: F401  (re-exported for term authors)


@dataclass
class Step:
    """What the terms of one training step see: the student's outputs, the batch and the stage's settings."""

    student: nn.Module
    criterion: nn.Module
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    logits: torch.Tensor
    weights: dict[str, float]
    teachers: dict
    temperature: float = 1.0
    multiplier: float = 1.0  # the adaptive controller's scale of the distillation term
    scales: dict[str, float] = field(default_factory=dict)  # per-process reweighting of row means (see Run)
    reference_logits: torch.Tensor | None = None  # the stage's starting student on the same batch
    intermediates: dict[int, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # computed so far, logged under these names

    def weight(self, key: str) -> float:
        return float(self.weights.get(key, 0.0))


class LossTerm:
    """One term of the objective. ``active`` says whether it takes part in this step; the loss adds
    ``weight(step) * term(step)`` and logs the value under ``name`` (default: ``key``)."""

    key: str = ""
    name: str | None = None
    wants_intermediates = False  # needs the student's intermediate tokens (``forward_intermediates``)
    needs_teacher = False  # reads the teachers' outputs: a stage weighting it looks them up
    stage_weight = True  # weighted by ``stages.<stage>.weights.<key>`` (else by a setting of its own)

    def active(self, step: Step) -> bool:
        return step.weight(self.key) > 0

    def weight(self, step: Step) -> float:
        return step.weight(self.key)

    def __call__(self, step: Step) -> torch.Tensor:
        raise NotImplementedError


@register_loss_term
class CrossEntropy(LossTerm):
    """CE on the labels (rows labelled -100 are skipped)."""

    key = "ce"

    def __call__(self, step: Step) -> torch.Tensor:
        return losses.ce_loss(step.logits, step.labels) * step.scales.get("ce", 1.0)


@register_loss_term
class LogitKD(LossTerm):
    """KL(student/T || fused teachers/T) * T^2; computed whenever a teacher term is weighted (``adaptive`` uses it)."""

    key, name = "kl", "kd"
    needs_teacher = True

    def active(self, step: Step) -> bool:
        return bool(step.teachers) and (step.weight("kl") > 0 or step.weight("adaptive") > 0)

    def __call__(self, step: Step) -> torch.Tensor:
        kd = step.criterion.logit_kd(step.logits, step.teachers, step.temperature, step.labels)
        return kd * step.scales.get("kd", 1.0)


@register_loss_term
class Adaptive(LossTerm):
    """The full distillation term (logit KD + feature, embedding and relation alignment), times the controller's
    multiplier."""

    key, name = "adaptive", "distill"
    wants_intermediates = needs_teacher = True

    def active(self, step: Step) -> bool:
        return step.weight(self.key) > 0 and bool(step.teachers)

    def weight(self, step: Step) -> float:
        return step.weight(self.key) * step.multiplier

    def __call__(self, step: Step) -> torch.Tensor:
        zero = step.logits.sum() * 0.0
        parts = {}
        if step.intermediates:
            mods = list(step.student.config.modalities)
            grids = {m: step.student.token_grid(m) for m in mods}
            valid = losses.token_validity(step.inputs, mods)
            parts = step.criterion.alignment(step.intermediates, grids, valid, step.teachers, step.temperature)
        parts = {k: parts.get(k, zero) for k in losses.ALIGNMENT_PARTS}
        step.terms.update(parts)
        return step.criterion.distillation_term({"kd": step.terms.get("kd"), **parts})


class _FromReference(LossTerm):
    """KD from the stage's starting student (float, unpruned); ``quant`` and ``reference`` share one value."""

    def active(self, step: Step) -> bool:
        return step.weight(self.key) > 0 and step.reference_logits is not None

    def __call__(self, step: Step) -> torch.Tensor:
        for key in ("quant", "reference"):  # computed once, logged under each name it has
            if key in step.terms:
                return step.terms[key]
        return losses.kd_loss(step.logits, step.reference_logits, step.temperature)


@register_loss_term
class Quant(_FromReference):
    key = "quant"


@register_loss_term
class Reference(_FromReference):
    key = "reference"


@register_loss_term
class GradientPenalty(LossTerm):
    """The squared gradient of the KD term with respect to the logits (``losses.gradient_penalty``)."""

    key, name = "gradient_penalty", "grad_penalty"
    stage_weight = False  # losses.gradient_penalty, applied in the stages that distill from teachers

    def active(self, step: Step) -> bool:
        return step.weight(self.key) > 0 and "kd" in step.terms and torch.is_grad_enabled()

    def __call__(self, step: Step) -> torch.Tensor:
        return losses.logit_gradient_penalty(step.terms["kd"], step.logits)


def uses_teacher(weights: dict[str, float]) -> bool:
    """Whether a stage with these weights reads the teachers' outputs."""
    return any(cls.needs_teacher and weights.get(key, 0) > 0 for key, cls in LOSS_TERMS.items())


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
        gradients, each term is the mean over the rows of the whole global batch (see ``Run.loss_scales``)."""
        weights = {**(weights or {}), "gradient_penalty": gradient_penalty}
        terms = [cls() for cls in LOSS_TERMS.values()]
        teachers = teachers or {}
        probe = Step(self.student, self.criterion, inputs, labels, None, weights, teachers)
        indices = []
        if any(t.wants_intermediates and t.active(probe) for t in terms):
            indices = self.criterion.intermediate_indices()
        if indices:
            pooled, inter = self.student.forward_intermediates(indices, **inputs)
            logits = self.student.forward_head(pooled)
            inter = dict(zip(indices, inter))
        else:
            logits, inter = self.student(**inputs), {}
        step = Step(
            self.student, self.criterion, inputs, labels, logits, weights, teachers, temperature, multiplier,
            scales or {}, reference_logits, inter,
        )  # fmt: skip
        loss = logits.sum() * 0.0
        for term in terms:
            if term.active(step):
                value = step.terms[term.name or term.key] = term(step)
                loss = loss + term.weight(step) * value
        step.terms["loss"] = loss
        return step.terms
