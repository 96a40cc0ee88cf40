"""Losses: KD matches its definition, masks and ignore_index work, shapes are matched, gradients flow."""

import pytest
import torch
import torch.nn.functional as F

from zoo.losses import (
    DistillationLoss,
    align_to_teacher,
    ce_loss,
    kd_loss,
    logit_gradient_penalty,
    relation_loss,
    tokens_to_map,
)
from zoo.teachers.base import TeacherOutput


def test_kd_matches_definition_and_is_zero_at_match():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    T = 3.0
    p_t = F.softmax(t / T, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    assert kd_loss(s, t, T) == pytest.approx(expected.item(), rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_mask_rows_without_modality():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    mask = torch.tensor([True, False, True, False])
    assert kd_loss(s, t, 2.0, mask) == pytest.approx(kd_loss(s[mask], t[mask], 2.0).item())
    s.requires_grad_(True)
    zero = kd_loss(s, t, 2.0, torch.zeros(4, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad


def test_ce_ignore_index():
    logits = torch.randn(3, 4)
    labels = torch.tensor([1, -100, 2])
    assert ce_loss(logits, labels) == pytest.approx(F.cross_entropy(logits[[0, 2]], labels[[0, 2]]).item())
    assert ce_loss(logits, torch.full((3,), -100)).item() == 0.0


def test_gradient_penalty_is_differentiable():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5)
    kd = kd_loss(s, t, 2.0)
    gp = logit_gradient_penalty(kd, s)
    assert gp.item() > 0
    gp.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_shape_matching():
    tokens = torch.randn(2, 16, 8)  # a 4x4 grid
    assert tokens_to_map(tokens, (4, 4)).shape == (2, 8, 4, 4)
    # ViT-style tokens with a CLS: 1 + 8x8
    s, t = align_to_teacher(tokens, (4, 4), torch.randn(2, 65, 12))
    assert s.shape == (2, 64, 8) and t.shape == (2, 64, 12)
    # a CNN map
    s, t = align_to_teacher(tokens, (4, 4), torch.randn(2, 6, 2, 2))
    assert s.shape == (2, 4, 8) and t.shape == (2, 4, 6)
    # text: a sequence of another length
    s, t = align_to_teacher(torch.randn(2, 16, 8), (1, 16), torch.randn(2, 10, 12))
    assert s.shape == (2, 10, 8)
    # pooled
    s, t = align_to_teacher(tokens, (4, 4), torch.randn(2, 12))
    assert s.shape == (2, 1, 8) and t.shape == (2, 1, 12)


def test_relation_loss_zero_when_equal_and_needs_pairs():
    sim = torch.randn(4, 4)
    assert relation_loss(sim, sim, None).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_loss(sim, torch.randn(4, 4), torch.tensor([True, False, False, False])).item() == 0.0


def test_distillation_loss_module_grads_reach_projectors():
    specs = {
        "image": {"modality": "image", "num_classes": 3, "features": {"layer.1": (5, 12)}, "embeds": 12},
        "image-text": {"modality": "image-text", "num_classes": None, "features": {}, "embeds": 6, "similarity": True},
    }
    crit = DistillationLoss(8, depth=2, specs=specs, modality_weights={"image": 2.0})
    assert crit.intermediate_indices() == [1]
    B = 4
    inter = {1: {"image": torch.randn(B, 4, 8, requires_grad=True), "text": torch.randn(B, 6, 8, requires_grad=True)}}
    mask = torch.tensor([True, True, False, True])
    teachers = {
        "image": TeacherOutput(
            logits=torch.randn(B, 3), features={"layer.1": torch.randn(B, 5, 12)}, embeds=torch.randn(B, 12), mask=mask
        ),
        "image-text": TeacherOutput(logits=torch.randn(B, B), mask=torch.ones(B, dtype=torch.bool)),
    }
    logits = torch.randn(B, 3, requires_grad=True)
    kd = crit.logit_kd(logits, teachers, 2.0)
    parts = crit.alignment(inter, {"image": (2, 2), "text": (1, 6)}, {"image": None, "text": None}, teachers, 2.0)
    assert all(v.item() > 0 for v in parts.values())
    total = crit.distillation_term({"kd": kd, **parts})
    total.backward()
    for name, p in crit.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_unknown_feature_layer_is_an_error():
    specs = {"image": {"modality": "image", "num_classes": 3, "features": {"layer.1": (5, 12)}}}
    with pytest.raises(ValueError, match="layer.9"):
        DistillationLoss(8, depth=2, specs=specs, feature_layers={"image": {0: "layer.9"}})


def test_product_of_experts_fusion_sharpens_and_ignores_uninformative_teachers():
    specs = {m: {"modality": m, "num_classes": 3, "features": {}} for m in ("text", "audio")}
    crit = DistillationLoss(8, depth=1, specs=specs, num_classes=3)
    sure = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    flat = torch.zeros(2, 3)
    both = torch.ones(2, dtype=torch.bool)
    only_first = torch.tensor([True, False])
    teachers = {
        "text": TeacherOutput(logits=sure, mask=both),
        "audio": TeacherOutput(logits=flat, mask=only_first),
    }
    target, rows = crit.teacher_log_probs(teachers, 1.0, 2)
    assert rows.all()
    # a uniform teacher leaves the product unchanged
    assert torch.allclose(target, F.log_softmax(sure, -1), atol=1e-6)
    teachers["audio"] = TeacherOutput(logits=sure, mask=both)  # two agreeing experts: sharper than either
    target, _ = crit.teacher_log_probs(teachers, 1.0, 2)
    assert target.exp()[0, 0] > F.softmax(sure, -1)[0, 0]
    mean = DistillationLoss(8, depth=1, specs=specs, num_classes=3, fusion="mean")
    t_mean, _ = mean.teacher_log_probs(teachers, 1.0, 2)
    assert torch.allclose(t_mean, F.log_softmax(sure, -1), atol=1e-5)


def test_rows_without_teacher_learn_from_labels():
    specs = {"text": {"modality": "text", "num_classes": 3, "features": {}}}
    crit = DistillationLoss(8, depth=1, specs=specs, num_classes=3)
    logits = torch.randn(4, 3)
    t = torch.randn(4, 3)
    mask = torch.tensor([True, True, False, False])
    labels = torch.tensor([0, 1, 2, -100])
    teachers = {"text": TeacherOutput(logits=t, mask=mask)}
    got = crit.logit_kd(logits, teachers, 2.0, labels)
    kd = kd_loss(logits[:2], t[:2], 2.0)
    ce = F.cross_entropy(logits[2:3], labels[2:3])
    assert got.item() == pytest.approx(((2 * kd + ce) / 3).item(), rel=1e-5)
    assert crit.logit_kd(logits, teachers, 2.0).item() == pytest.approx(kd.item(), rel=1e-5)
