"""Structured pruning: remove whole conv channels, attention heads and MLP neurons, and shrink the student to match.

Prunable widths of the hybrid student (``HybridConfig``; the residual width ``embed_dim`` is kept):

- ``conv``: hidden channels of each conv block (pw1 rows, depthwise filters, pw2 columns);
- ``heads``: attention heads of each attention block (q, k and v rows of ``qkv``, columns of ``proj``);
- ``mlp``: hidden neurons of each attention block's MLP (fc1 rows, fc2 columns);
- ``stem``: the intermediate channels of the image / audio conv stems (one width per stem, every stem layer keeps
  its own best channels). Their GroupNorm normalises over all channels, so removing channels changes its statistics
  a little: pruning the stem is never exactly function-preserving, even for all-zero channels.

Importance of a unit (channel, head or neuron) is summed over every weight it owns: ``l1`` sums |w| (Li et al.,
"Pruning Filters for Efficient ConvNets", 2017); ``taylor`` sums |w * dL/dw| accumulated over a few batches, the
first-order estimate of the loss change when the unit is removed (Molchanov et al., "Importance Estimation for
Neural Network Pruning", 2019). With ``scope="layer"`` every layer keeps ``keep`` of its units; with
``scope="global"`` each kind of unit is ranked across all layers (scores divided by their layer's mean, so layers
compare), which lets sensitive layers stay wider. Widths are rounded to a multiple of ``round_to`` channels (heads:
to a whole head, at least one) so kernels stay fast.

The pruned student is a new ``HybridStudent`` built from a config that lists its new widths, with its weights sliced
from the original: it saves and reloads with save_pretrained / from_pretrained, without pickle. Models we did not
write go through Torch-Pruning's dependency graph (``prune_foreign_model``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.compress.quant import is_qat, is_quantized
from zoo.students.base import PruneGroup

CRITERIA = ("l1", "taylor")
SCOPES = ("global", "layer")
TARGETS = ("conv", "heads", "mlp", "stem")


def _unit_scores(group: PruneGroup, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of ``tensors`` (|w| or |w * g|) over everything each unit of the group owns -> (units,)."""
    score = torch.zeros(group.units, dtype=torch.float64)
    for s in group.slices:
        t = tensors[s.key].detach().abs().double().movedim(s.dim, 0)
        t = t.reshape(s.chunks, group.units, s.unit_size, -1)
        score += t.sum(dim=(0, 2, 3)).cpu()
    return score


def _as_inputs(student: nn.Module, batch) -> dict:
    if isinstance(batch, (list, tuple)):  # raw samples
        batch = student.preprocess(list(batch))
    return dict(batch)


def default_importance_loss(student: nn.Module, batch: dict) -> torch.Tensor:
    """Cross-entropy on the batch's labels; unlabelled rows use the student's own predictions as targets."""
    labels = batch.get("labels")
    logits = student(**{k: v for k, v in batch.items() if k != "labels"})
    target = logits.detach().argmax(-1)
    if labels is not None:
        labels = labels.to(logits.device)
        target = torch.where(labels >= 0, labels, target)
    return F.cross_entropy(logits, target)


def taylor_scores(
    student: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """|w * dL/dw| per weight, summed over ``batches`` (flat batches or lists of raw samples), on a copy."""
    loss_fn = loss_fn or default_importance_loss
    tokenizer, student.tokenizer = getattr(student, "tokenizer", None), None
    try:
        model = copy.deepcopy(student)  # gradients and mode changes stay off the caller's student
    finally:
        student.tokenizer = tokenizer
    model.tokenizer = tokenizer
    model.eval()  # no dropout / drop-path: score the network that will be kept
    params = dict(model.named_parameters())
    acc = {k: torch.zeros_like(p) for k, p in params.items()}
    device = next(model.parameters()).device
    n = 0
    for batch in batches:
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in _as_inputs(model, batch).items()}
        model.zero_grad(set_to_none=True)
        loss_fn(model, inputs).backward()
        with torch.no_grad():
            for k, p in params.items():
                if p.grad is not None:
                    acc[k] += (p * p.grad).abs()
        n += 1
        if max_batches is not None and n >= max_batches:
            break
    if n == 0:
        raise ValueError("taylor importance needs batches: pass importance_batches (a few batches of training data).")
    return acc


def round_width(width: float, total: int, multiple: int) -> int:
    """``width`` rounded to the nearest multiple of ``multiple``, at least one multiple, at most ``total``."""
    multiple = max(int(multiple), 1)
    if total <= multiple:
        return total
    return int(min(total, max(multiple, math.floor(width / multiple + 0.5) * multiple)))


def _kept_counts(groups: list[PruneGroup], scores: dict[str, torch.Tensor], keep: float, scope: str, round_to: int):
    """Units to keep per group: ``keep`` per layer, or by global rank within each kind; then rounded."""
    counts: dict[str, float] = {}
    if scope == "layer":
        counts = {g.name: keep * g.units for g in groups}
    else:
        by_kind: dict[str, list[PruneGroup]] = {}
        for g in groups:
            # one width per stem: its layers rank among themselves, the stems do not share a budget
            by_kind.setdefault(g.name.rsplit(".", 1)[0] if g.kind == "stem" else g.kind, []).append(g)
        for members in by_kind.values():
            if members[0].kind == "stem":
                counts.update({g.name: keep * g.units for g in members})
                continue
            normed = [scores[g.name] / scores[g.name].mean().clamp(min=1e-30) for g in members]
            flat = torch.cat(normed)
            n_keep = max(1, int(round(keep * flat.numel())))
            threshold = flat.sort(descending=True).values[n_keep - 1]
            counts.update({g.name: float((s >= threshold).sum()) for g, s in zip(members, normed)})
    out = {}
    for g in groups:
        multiple = 1 if g.kind == "heads" else round_to
        out[g.name] = max(1, round_width(counts[g.name], g.units, multiple))
    stems: dict[str, int] = {}  # every layer of a stem shares the config's single stem_channels
    for g in groups:
        if g.kind == "stem":
            stem = g.name.rsplit(".", 1)[0]
            stems[stem] = max(stems.get(stem, 0), out[g.name])
    for g in groups:
        if g.kind == "stem":
            out[g.name] = stems[g.name.rsplit(".", 1)[0]]
    return out


def prune_student(
    student: nn.Module,
    keep: float = 0.65,
    criterion: str = "l1",
    scope: str = "global",
    round_to: int = 8,
    importance_batches: Iterable | None = None,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
    targets: Sequence[str] = TARGETS,
    max_batches: int | None = None,
) -> nn.Module:
    """A new, smaller student keeping the most important ``keep`` share of each prunable width (original untouched).

    Args:
        student: a float hybrid student (prune before quantizing).
        keep: share of units kept, in (0, 1]; the recipe's ``s1`` keeps 0.6-0.7.
        criterion: ``l1`` (weight magnitude) or ``taylor`` (|w * grad| over ``importance_batches``).
        scope: ``global`` (rank each kind of unit across layers) or ``layer`` (every layer keeps ``keep``).
        round_to: channel widths become multiples of this (heads are whole heads); never below one multiple.
        importance_batches: batches (dicts from ``student.preprocess``, or lists of raw samples) for ``taylor``.
        loss_fn: ``loss_fn(student, batch) -> loss`` for ``taylor``; default cross-entropy on the labels, with the
            student's own predictions for unlabelled rows (pass a KD loss to score against the teacher).
        targets: which widths to prune, among ``conv``, ``heads``, ``mlp``, ``stem``.
        max_batches: cap on the batches used for ``taylor``.

    Returns a student of the same class whose config lists the new widths and records the pruning in
    ``config.pruning``; recover its accuracy with KD (the recipe's prune stage).
    """
    if not (isinstance(keep, (int, float)) and 0.0 < float(keep) <= 1.0):
        raise ValueError(f"keep ratio {keep!r} is out of range: pass the share of units to keep, in (0, 1].")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion {criterion!r}: choose one of {list(CRITERIA)}.")
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: choose one of {list(SCOPES)}.")
    bad = sorted(set(targets) - set(TARGETS))
    if bad or not targets:
        raise ValueError(f"targets {list(targets)!r}: choose among {list(TARGETS)}.")
    if int(round_to) < 1:
        raise ValueError(f"round_to {round_to!r} must be a positive number of channels (8 or 16 suit CPU kernels).")
    if is_quantized(student) or is_qat(student):
        raise ValueError("prune the float student, then quantize: this one is quantized or prepared for QAT.")
    if not getattr(student, "prunable_groups", lambda: [])():
        raise TypeError(
            f"prune_student takes a student that declares prunable_groups(); for a {type(student).__name__} use "
            "prune_foreign_model()."
        )
    weights = None
    if criterion == "taylor":
        if importance_batches is None:
            raise ValueError("criterion 'taylor' needs importance_batches (a few batches of training data).")
        weights = taylor_scores(student, importance_batches, loss_fn, max_batches)
    return _prune(student, float(keep), weights, criterion, scope, int(round_to), targets)


def _prune(student, keep, weights, criterion, scope, round_to, targets) -> nn.Module:
    """The pruning itself, given per-weight importances (None: L1 of the weights). Inputs are validated."""
    groups = [g for g in student.prunable_groups() if g.kind in targets]
    state = student.state_dict()
    scores = {g.name: _unit_scores(g, weights if weights is not None else state) for g in groups}
    counts = _kept_counts(groups, scores, keep, scope, round_to)

    # kept units: the highest-scoring ones, in their original order (so keep=1 reproduces the student exactly)
    kept = {g.name: scores[g.name].topk(counts[g.name]).indices.sort().values for g in groups}
    new_state = dict(state)
    for g in groups:
        for s in g.slices:
            # cumulative: a stem conv loses output channels (its group) and input channels (the previous group)
            t = new_state[s.key]
            new_state[s.key] = t.index_select(s.dim, g.indices(kept[g.name], s).to(t.device))

    cfg = student.config
    record = {
        "criterion": criterion,
        "scope": scope,
        "keep": keep,
        "round_to": round_to,
        "targets": list(targets),
        "before": pruned_widths(student),
    }
    if cfg.pruning:
        record["previous"] = cfg.pruning
    new_cfg = dataclasses.replace(student.pruned_config(counts), pruning=record)
    pruned = type(student)(new_cfg)
    pruned.load_state_dict(new_state, strict=True)
    if getattr(student, "tokenizer", None) is not None:
        pruned.tokenizer = student.tokenizer
    device = next(student.parameters()).device
    return pruned.to(device).train(student.training)


def pruned_widths(student: nn.Module) -> dict:
    """The student's prunable widths, as its config lists them."""
    cfg = student.config
    out = {"conv_hidden": list(cfg.conv_hidden), "attn_heads": list(cfg.attn_heads), "mlp_hidden": list(cfg.mlp_hidden)}
    out["stem_channels"] = {m: getattr(cfg, m).stem_channels for m in ("image", "audio") if getattr(cfg, m)}
    return out


# ------------------------------------------------------------------------------------------ foreign models
def prune_foreign_model(
    model: nn.Module,
    example_inputs,
    keep: float,
    round_to: int | None = 8,
    importance=None,
    ignored_layers: Sequence[nn.Module] | None = None,
    global_pruning: bool = False,
) -> nn.Module:
    """Prune a model we did not write (timm, transformers) through Torch-Pruning's dependency graph.

    Channels are removed in place on a deep copy (the original is untouched) by ``tp.pruner.MetaPruner`` with
    L1-magnitude importance by default; the classifier (``get_classifier()`` when the model has one) is never
    pruned. The result is a plain ``nn.Module`` with non-uniform widths: Torch-Pruning itself can only save it as a
    whole pickled module (``torch.save(model)``), which distill-zoo never loads. Distil it into a hybrid student, or
    export it with ``torch.onnx.export``, to ship it.
    """
    import torch_pruning as tp

    if not (isinstance(keep, (int, float)) and 0.0 < float(keep) <= 1.0):
        raise ValueError(f"keep ratio {keep!r} is out of range: pass the share of channels to keep, in (0, 1].")
    pruned = copy.deepcopy(model).eval()
    if float(keep) == 1.0:
        return pruned
    ignored = list(ignored_layers or [])
    if not ignored and hasattr(pruned, "get_classifier"):
        head = pruned.get_classifier()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            ignored.append(head)
    pruner = tp.pruner.MetaPruner(
        pruned,
        example_inputs,
        importance=importance or tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=1.0 - float(keep),
        global_pruning=global_pruning,
        ignored_layers=ignored,
        round_to=round_to,
    )
    pruner.step()
    return pruned


# --------------------------------------------------------------------------------------------------- CLI
