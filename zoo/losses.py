"""Distillation losses: logit KD, cross-entropy, feature / embedding alignment, cross-modal relations, guards.

Every teacher term is computed only on the rows that carry the teacher's modality (``TeacherOutput.mask``) and
weighted per modality. Shapes follow the batch contract: student logits (B, C); student intermediates are
``{modality: tokens (B, N, D)}`` with ``student.token_grid(modality) -> (h, w)``; teacher features are tokens
(B, N, D), maps (B, C, H, W) or pooled (B, D).

- ``kd_loss``: Hinton et al. (2015), KL between the softened distributions, times T^2 so gradients keep their
  scale as T changes.
- ``FeatureAlignment``: FitNets-style hints (Romero et al., 2015) through learned linear projectors, with the
  student's token grid resized to the teacher's token count or map size.
- ``relation_loss``: the student's image-text similarity matrix against a CLIP-style teacher's, row- and
  column-wise (as in CLIP-KD, Yang et al., 2024).
- ``logit_gradient_penalty``: squared norm of d(KD)/d(student logits), keeping the distillation signal smooth.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.modalities import IGNORE_INDEX

IMAGE_TEXT = "image-text"
ALIGNMENT_PARTS = ("feature", "embedding", "relation")  # the alignment terms inside the distillation term


def _zero(like: Tensor) -> Tensor:
    """A zero that stays in the graph of ``like`` (so DDP and autograd see every term)."""
    return like.sum() * 0.0


def kd_loss_from_log_probs(
    student_logits: Tensor, target_log_probs: Tensor, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """KL(target || student/T) * T^2, averaged over the rows where ``mask`` is True.

    ``target_log_probs`` (B, C) is the teacher's log-softmax at ``temperature`` (from full logits, or rebuilt from a
    cached top-k + log-sum-exp).
    """
    if student_logits.shape != target_log_probs.shape:
        raise ValueError(
            f"KD: student logits {tuple(student_logits.shape)} and teacher targets {tuple(target_log_probs.shape)} "
            "differ; the teacher must predict the student's classes in the same order."
        )
    if mask is not None:
        mask = mask.to(torch.bool)
        if not bool(mask.any()):
            return _zero(student_logits)
        student_logits, target_log_probs = student_logits[mask], target_log_probs[mask]
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p, target_log_probs.float(), log_target=True, reduction="batchmean")
    return kl * temperature**2


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """Logit KD: KL(teacher/T || student/T) * T^2 over the rows where ``mask`` (B,) is True (0 when none is)."""
    target = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return kd_loss_from_log_probs(student_logits, target, temperature, mask)


def ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on labels; rows labelled -100 are ignored (0 when no row has a label)."""
    if not bool((labels != IGNORE_INDEX).any()):
        return _zero(logits)
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def logit_gradient_penalty(kd: Tensor, logits: Tensor) -> Tensor:
    """Mean over rows of the squared norm of d(kd)/d(logits) per sample, differentiable (``create_graph``).

    The gradient of a batch-mean loss scales with 1/B; it is multiplied back by B so lambda does not depend on the
    batch size. Cheap: autograd only walks the loss head, not the network.
    """
    if not kd.requires_grad:
        return _zero(logits)
    (grad,) = torch.autograd.grad(kd, logits, create_graph=True)
    return (grad * logits.shape[0]).pow(2).sum(-1).mean()


# ------------------------------------------------------------------------------------------- shape matching
def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, N, D) tokens -> (B, D, h, w) feature map, N = h * w."""
    B, N, D = tokens.shape
    h, w = grid
    if h * w != N:
        raise ValueError(f"tokens {tuple(tokens.shape)} do not fill a {h}x{w} grid.")
    return tokens.transpose(1, 2).reshape(B, D, h, w)


def _teacher_grid(n: int) -> tuple[int, int] | None:
    """(H, W, extra leading tokens) of a square ViT-style token sequence (with or without a [CLS]), else None."""
    for extra in (0, 1, 2):
        side = math.isqrt(n - extra) if n > extra else 0
        if side > 1 and side * side == n - extra:
            return side, extra
    return None


def masked_pool(tokens: Tensor, valid: Tensor | None) -> Tensor:
    """Mean over the valid tokens: (B, N, D) -> (B, D)."""
    if valid is None:
        return tokens.mean(1)
    v = valid.to(tokens.dtype).unsqueeze(-1)
    return (tokens * v).sum(1) / v.sum(1).clamp(min=1.0)


def align_to_teacher(
    student_tokens: Tensor, grid: tuple[int, int], teacher: Tensor, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Resize student tokens (B, N, D) to the teacher feature's positions; returns both as (B, K, D_*).

    - teacher (B, D): the student tokens are pooled (masked mean).
    - teacher (B, C, H, W): the student's (h, w) map is interpolated (bilinear) to (H, W).
    - teacher (B, N_t, D): a square token grid (after up to two leading [CLS]-like tokens, which are dropped) is
      matched as a map when the student's grid is 2-D; otherwise the token sequence is interpolated (linear) to N_t.
    """
    if teacher.dim() == 2:
        return masked_pool(student_tokens, valid).unsqueeze(1), teacher.unsqueeze(1)
    if teacher.dim() == 4:
        H, W = teacher.shape[-2:]
        smap = F.interpolate(tokens_to_map(student_tokens, grid), size=(H, W), mode="bilinear", align_corners=False)
        return smap.flatten(2).transpose(1, 2), teacher.flatten(2).transpose(1, 2)
    if teacher.dim() != 3:
        raise ValueError(f"teacher feature {tuple(teacher.shape)}: expected (B, D), (B, N, D) or (B, C, H, W).")
    n_t = teacher.shape[1]
    square = _teacher_grid(n_t)
    if square is not None and grid[0] > 1:
        side, extra = square
        smap = F.interpolate(tokens_to_map(student_tokens, grid), size=(side, side), mode="bilinear")
        return smap.flatten(2).transpose(1, 2), teacher[:, extra:]
    seq = student_tokens.transpose(1, 2)  # (B, D, N)
    if seq.shape[-1] != n_t:
        seq = F.interpolate(seq, size=n_t, mode="linear", align_corners=False)
    return seq.transpose(1, 2), teacher


def alignment_loss(student: Tensor, teacher: Tensor, kind: str = "mse") -> Tensor:
    """MSE against the layer-normalised teacher, or 1 - cosine per position; (B, K, D) inputs, mean over all."""
    teacher = teacher.float()
    student = student.float()
    if kind == "mse":
        # Teachers' activations differ in scale by orders of magnitude between layers; normalising the target
        # keeps one weight meaningful for every layer (as in MaskedKD / DeiT-style feature distillation).
        return F.mse_loss(student, F.layer_norm(teacher, teacher.shape[-1:]))
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"alignment loss {kind!r}: expected 'mse' or 'cosine'.")


def relation_loss(student_sim: Tensor, teacher_sim: Tensor, mask: Tensor | None, temperature: float = 1.0) -> Tensor:
    """KD between similarity matrices (image rows x text columns) over the pairs ``mask`` keeps, both directions.

    Needs at least two pairs (one pair has no relation to learn); otherwise 0.
    """
    if mask is not None:
        idx = mask.to(torch.bool).nonzero()[:, 0]
        student_sim, teacher_sim = student_sim[idx][:, idx], teacher_sim[idx][:, idx]
    if student_sim.shape[0] < 2:
        return _zero(student_sim)
    rows = kd_loss(student_sim, teacher_sim, temperature)
    cols = kd_loss(student_sim.t(), teacher_sim.t(), temperature)
    return 0.5 * (rows + cols)


def _key(*parts) -> str:
    """A ModuleDict key from parts (dots are not allowed in module names)."""
    return "__".join(re.sub(r"[^0-9A-Za-z_]", "_", str(p)) for p in parts)


# ----------------------------------------------------------------------------------------------- modules
class DistillationLoss(nn.Module):
    """The teacher terms of one student: logit KD, feature alignment, embedding and relation distillation.

    Built once per run from the shapes of one batch of teacher outputs (``specs``), so every projector exists
    before the optimizer does.

    Args:
        student_dim: the student's embed dim D.
        depth: the student's number of blocks (to resolve negative block indices).
        specs: teacher name -> {"modality", "num_classes", "features": {layer: shape without batch},
            "embeds": dim or None, "similarity": bool}.
        feature_layers: modality -> {student block: teacher layer}; missing modalities align the student's last
            block with the teacher's last feature layer.
        feature_loss, embedding_loss: "mse" or "cosine".
        weights: inner weights {"feature", "embedding", "relation"} of the full distillation term.
        modality_weights: teacher modality -> weight (default 1).
        num_classes: the student's class count (classifier teachers must match it).
        fusion: how the classifier teachers' predictions of one sample become its KD target: "product" or "mean".
    """

    def __init__(
        self,
        student_dim: int,
        depth: int,
        specs: dict[str, dict],
        feature_layers: dict[str, dict[int, str]] | None = None,
        feature_loss: str = "mse",
        embedding_loss: str = "cosine",
        weights: dict[str, float] | None = None,
        modality_weights: dict[str, float] | None = None,
        num_classes: int | None = None,
        fusion: str = "product",
    ):
        super().__init__()
        if fusion not in ("product", "mean"):
            raise ValueError(f"teacher fusion {fusion!r}: expected 'product' or 'mean'.")
        self.fusion = fusion
        self.specs = specs
        self.depth = depth
        self.feature_loss, self.embedding_loss = feature_loss, embedding_loss
        self.weights = {"feature": 1.0, "embedding": 1.0, "relation": 1.0, **(weights or {})}
        self.modality_weights = dict(modality_weights or {})
        self.num_classes = num_classes
        self.feature_map: dict[str, list[tuple[int, str]]] = {}
        self.feature_proj = nn.ModuleDict()
        self.embed_proj = nn.ModuleDict()
        self.relation_proj = nn.ModuleDict()
        feature_layers = feature_layers or {}
        for name, spec in specs.items():
            mod = spec["modality"]
            feats = spec.get("features") or {}
            if self.weights["feature"] > 0 and feats and mod != IMAGE_TEXT:
                pairs = feature_layers.get(mod)
                pairs = {-1: list(feats)[-1]} if pairs is None else pairs
                resolved = []
                for s_idx, layer in pairs.items():
                    if layer not in feats:
                        raise ValueError(
                            f"losses.feature_layers.{mod}: teacher {name!r} has no cached feature {layer!r}; "
                            f"it has {list(feats)}."
                        )
                    s = int(s_idx) % depth if -depth <= int(s_idx) < depth else int(s_idx)
                    if not 0 <= s < depth:
                        raise ValueError(f"losses.feature_layers.{mod}: student block {s_idx} out of 0..{depth - 1}.")
                    shape = feats[layer]
                    t_dim = shape[0] if len(shape) == 3 else shape[-1]
                    self.feature_proj[_key(name, s, layer)] = nn.Linear(student_dim, t_dim)
                    resolved.append((s, layer))
                self.feature_map[name] = resolved
            if self.weights["embedding"] > 0 and spec.get("embeds") and mod != IMAGE_TEXT:
                self.embed_proj[_key(name)] = nn.Linear(student_dim, spec["embeds"])
            if self.weights["relation"] > 0 and mod == IMAGE_TEXT and spec.get("similarity"):
                dim = spec.get("embeds") or student_dim
                self.relation_proj[_key(name, "image")] = nn.Linear(student_dim, dim)
                self.relation_proj[_key(name, "text")] = nn.Linear(student_dim, dim)
                self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def intermediate_indices(self) -> list[int]:
        """Student blocks the alignment terms read (the last block always, for the per-modality pooled features)."""
        idx = {s for pairs in self.feature_map.values() for s, _ in pairs}
        if len(self.embed_proj) or len(self.relation_proj):
            idx.add(self.depth - 1)
        return sorted(idx)

    def _weight(self, name: str) -> float:
        return float(self.modality_weights.get(self.specs[name]["modality"], 1.0))

    def _classifiers(self, teachers: dict, num_classes: int):
        for name, out in teachers.items():
            spec = self.specs[name]
            if spec["modality"] == IMAGE_TEXT or out.logits is None or spec.get("num_classes") != num_classes:
                continue
            if self._weight(name) > 0:
                yield name, out

    def teacher_log_probs(self, teachers: dict, temperature: float, batch: int) -> tuple[Tensor, Tensor]:
        """The fused KD target: (log-probabilities (B, C) at ``temperature``, rows that have one (B,)).

        ``product`` (default): a product of experts, log p(y | x) = sum over the teachers carrying the sample of
        w_m log p_m(y | x_m), renormalised; the Bayes fusion of modality experts that see independent evidence,
        so an uninformative teacher (near-uniform) barely moves the target. ``mean``: the weighted mean of the
        teachers' probabilities at T.
        """
        num_classes = self.num_classes
        total, norm, rows = None, None, None
        for name, out in self._classifiers(teachers, num_classes or next(iter(teachers.values())).logits.shape[-1]):
            w = self._weight(name)
            m = out.mask.to(torch.bool) if out.mask is not None else torch.ones(batch, dtype=torch.bool)
            mf = m.to(torch.float32).unsqueeze(-1)
            if self.fusion == "product":
                term = w * F.log_softmax(out.logits.float(), -1) * mf
            else:
                term = w * F.softmax(out.logits.float() / temperature, -1) * mf
            total = term if total is None else total + term
            norm = w * mf if norm is None else norm + w * mf
            rows = m if rows is None else rows | m
        if total is None:
            return None, None
        if self.fusion == "product":
            return F.log_softmax(total / temperature, -1), rows
        return (total / norm.clamp(min=1e-12)).clamp(min=1e-12).log(), rows

    def logit_kd(self, logits: Tensor, teachers: dict, temperature: float, labels: Tensor | None = None) -> Tensor:
        """KD against the fused target of the classifier teachers, on the rows that at least one of them carries.

        With ``labels``, the labelled rows that no teacher carries (a modality without a teacher) take CE on their
        label in the KD term's place, averaged over all rows, so they are not under-weighted in a KD-heavy stage.
        """
        target, rows = self.teacher_log_probs(teachers, temperature, logits.shape[0])
        kd = _zero(logits) if target is None else kd_loss_from_log_probs(logits, target, temperature, rows)
        if labels is None:
            return kd
        n_kd = int(rows.sum()) if rows is not None else 0
        orphans = (labels != IGNORE_INDEX) & (~rows if rows is not None else torch.ones_like(labels, dtype=torch.bool))
        n_ce = int(orphans.sum())
        if n_ce == 0:
            return kd
        ce = F.cross_entropy(logits[orphans].float(), labels[orphans])
        return (kd * n_kd + ce * n_ce) / (n_kd + n_ce)

    def alignment(
        self, intermediates: dict[int, dict[str, Tensor]], grids: dict, valid: dict, teachers: dict, temperature: float
    ) -> dict[str, Tensor]:
        """Feature, embedding and relation terms (each a weighted mean over teachers), as a dict of scalars."""
        any_t = next(t for d in intermediates.values() for t in d.values())
        terms = {"feature": _zero(any_t), "embedding": _zero(any_t), "relation": _zero(any_t)}
        norms = dict.fromkeys(terms, 0.0)
        last = intermediates.get(self.depth - 1, {})
        for name, out in teachers.items():
            spec, w = self.specs[name], self._weight(name)
            mod = spec["modality"]
            rows = out.mask.to(torch.bool) if out.mask is not None else None
            if w <= 0 or (rows is not None and not bool(rows.any())):
                continue
            for s, layer in self.feature_map.get(name, []):
                tokens = intermediates[s].get(mod)
                if tokens is None:
                    continue
                v = None if valid.get(mod) is None else valid[mod][rows]
                student, target = align_to_teacher(tokens[rows], grids[mod], out.features[layer][rows], v)
                student = self.feature_proj[_key(name, s, layer)](student)
                terms["feature"] = terms["feature"] + w * alignment_loss(student, target, self.feature_loss)
                norms["feature"] += w
            if _key(name) in self.embed_proj and out.embeds is not None and mod in last:
                pooled = masked_pool(F.layer_norm(last[mod], last[mod].shape[-1:]), valid.get(mod))
                student = self.embed_proj[_key(name)](pooled[rows]).unsqueeze(1)
                target = out.embeds[rows].unsqueeze(1)
                terms["embedding"] = terms["embedding"] + w * alignment_loss(student, target, self.embedding_loss)
                norms["embedding"] += w
            if _key(name, "image") in self.relation_proj and "image" in last and "text" in last:
                e = {}
                for m in ("image", "text"):
                    pooled = masked_pool(F.layer_norm(last[m], last[m].shape[-1:]), valid.get(m))
                    e[m] = F.normalize(self.relation_proj[_key(name, m)](pooled), dim=-1)
                sim = self.logit_scale.exp() * e["image"] @ e["text"].t()  # (B, B)
                terms["relation"] = terms["relation"] + w * relation_loss(sim, out.logits, rows, temperature)
                norms["relation"] += w
        return {k: v / norms[k] if norms[k] else v for k, v in terms.items()}

    def distillation_term(self, parts: dict[str, Tensor]) -> Tensor:
        """The full distillation term: logit KD + weighted feature, embedding and relation alignment."""
        return parts["kd"] + sum(self.weights[k] * parts[k] for k in ALIGNMENT_PARTS)


def token_validity(inputs: dict[str, Tensor], modalities) -> dict[str, Tensor | None]:
    """Which student tokens are real, per modality: text padding is not; image and audio tokens all are."""
    out = {}
    for m in modalities:
        if m == "text" and inputs.get("attention_mask") is not None:
            out[m] = inputs["attention_mask"].to(torch.bool)
        else:
            out[m] = None
    return out
