"""Structured pruning: exactness on dead units, widths and rounding, round trips, criteria, foreign models, CLI."""

import json

import pytest
import torch

import zoo
from zoo.compress.export import example_batch
from zoo.compress.prune import prune_foreign_model, prune_student, pruned_widths, round_width
from zoo.students import HybridStudent

MODS = ["text", "image", "audio"]


def _student(**kw):
    torch.manual_seed(0)
    return zoo.create_student("hybrid_test", modalities=MODS, num_classes=3, **kw).eval()


def _two_block_student():
    # two blocks of each kind, so global ranking has layers to choose between
    return _student(conv_hidden=[64, 64], attn_heads=[2, 2], mlp_hidden=[64, 64])


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch)


def test_keep_one_reproduces_the_student():
    s = _student()
    b = example_batch(s, 3)
    p = prune_student(s, keep=1.0)
    assert pruned_widths(p) == pruned_widths(s)
    torch.testing.assert_close(_logits(p, b), _logits(s, b), rtol=0, atol=0)


@pytest.mark.parametrize("round_to", [8, 16])
def test_pruned_widths_are_rounded_and_round_trip(tmp_path, round_to):
    s = _two_block_student()
    p = prune_student(s, keep=0.65, round_to=round_to)
    w = pruned_widths(p)
    for width in w["conv_hidden"] + w["mlp_hidden"] + list(w["stem_channels"].values()):
        assert width % round_to == 0 and width >= round_to
    assert all(1 <= h <= 2 for h in w["attn_heads"])
    assert p.num_params() < s.num_params()
    assert p.config.pruning["keep"] == 0.65 and p.config.pruning["round_to"] == round_to
    assert p.config.pruning["before"]["conv_hidden"] == [64, 64]
    # physically smaller modules, not masks
    assert p.conv_blocks[0].pw1.weight.shape[0] == w["conv_hidden"][0]
    assert p.attn_blocks[0].attn.qkv.weight.shape[0] == 3 * w["attn_heads"][0] * 16
    p.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["conv_hidden"] == w["conv_hidden"] and cfg["pruning"]["criterion"] == "l1"
    r = HybridStudent.from_pretrained(tmp_path)
    b = example_batch(s, 2)
    torch.testing.assert_close(_logits(r, b), _logits(p, b), rtol=0, atol=0)


def test_deep_stems_prune_consistently():
    # patch 8 -> two stem convs: the first loses output channels, the second input and output channels
    s = _student(image={"patch_size": 8}, audio={"patch_size": 8})
    p = prune_student(s, keep=0.5)
    assert pruned_widths(p)["stem_channels"] == {"image": 8, "audio": 8}
    assert p.stems["image"].convs[1].conv.weight.shape == (8, 8, 3, 3)
    assert p.stems["image"].proj.weight.shape[1] == 8
    b = example_batch(s, 2)
    assert _logits(p, b).shape == (2, 3)


def test_round_width():
    assert round_width(41.6, 64, 8) == 40
    assert round_width(44.0, 64, 8) == 48  # half rounds up
    assert round_width(2.0, 64, 8) == 8  # never below one multiple
    assert round_width(70.0, 64, 8) == 64  # never above the original
    assert round_width(3.0, 6, 8) == 6  # a layer narrower than the multiple is left as is


def _kill_units(s):
    """Zero whole units: they contribute nothing, so pruning exactly them must not change the outputs."""
    with torch.no_grad():
        for blk in s.conv_blocks:
            dead = torch.arange(0, 64, 2)[:24]  # 24 of 64 channels
            for t in (blk.pw1.weight, blk.pw1.bias, blk.dw.weight, blk.dw.bias):
                t[dead] = 0
            blk.pw2.weight[:, dead] = 0
        for a in s.attn_blocks:
            a.mlp.fc1.weight[40:] = 0
            a.mlp.fc1.bias[40:] = 0
            a.mlp.fc2.weight[:, 40:] = 0
            a.attn.qkv.weight.view(3, 2, 16, -1)[:, 0] = 0  # head 0 of q, k and v
            a.attn.qkv.bias.view(3, 2, 16)[:, 0] = 0
            a.attn.proj.weight[:, :16] = 0


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_dead_units_are_the_ones_removed(scope):
    s = _two_block_student()
    _kill_units(s)
    b = example_batch(s, 3)
    p = prune_student(s, keep=0.6, scope=scope, targets=("conv", "heads", "mlp"))
    w = pruned_widths(p)
    assert w["conv_hidden"] == [40, 40] and w["mlp_hidden"] == [40, 40] and w["attn_heads"] == [1, 1]
    torch.testing.assert_close(_logits(p, b), _logits(s, b), rtol=1e-5, atol=1e-6)
    # a pruning that removes live units does change the outputs (the check above can fail)
    p2 = prune_student(s, keep=0.3, scope=scope, targets=("conv", "heads", "mlp"))
    assert (_logits(p2, b) - _logits(s, b)).abs().max() > 1e-4


def test_global_scope_keeps_important_layers_wider():
    s = _two_block_student()
    with torch.no_grad():
        for name in ("pw1", "dw", "pw2"):
            getattr(s.conv_blocks[1], name).weight.mul_(0.01)  # block 1 matters far less
    g = pruned_widths(prune_student(s, keep=0.5, scope="global", targets=("conv",)))
    layer = pruned_widths(prune_student(s, keep=0.5, scope="layer", targets=("conv",)))
    assert layer["conv_hidden"] == [32, 32]
    assert g["conv_hidden"][0] > g["conv_hidden"][1] and sum(g["conv_hidden"]) <= 64 + 8


def test_taylor_criterion_and_original_untouched():
    s = _two_block_student()
    before = {k: v.clone() for k, v in s.state_dict().items()}
    batches = [example_batch(s, 4, seed=i) for i in range(2)]
    p = prune_student(s, keep=0.5, criterion="taylor", importance_batches=batches)
    assert all(w % 8 == 0 for w in pruned_widths(p)["conv_hidden"])
    assert p.config.pruning["criterion"] == "taylor"
    assert all(torch.equal(before[k], v) for k, v in s.state_dict().items())
    assert all(q.grad is None for q in s.parameters())
    with pytest.raises(ValueError, match="importance_batches"):
        prune_student(s, keep=0.5, criterion="taylor")


@pytest.mark.parametrize("keep", [0.0, -0.2, 1.5, "0.5"])
def test_keep_ratio_out_of_range(keep):
    with pytest.raises(ValueError, match="keep ratio"):
        prune_student(_student(), keep=keep)


def test_bad_arguments_and_quantized_student():
    s = _student()
    with pytest.raises(ValueError, match="criterion"):
        prune_student(s, keep=0.5, criterion="l2")
    with pytest.raises(ValueError, match="targets"):
        prune_student(s, keep=0.5, targets=("embed",))
    from zoo.compress.quant import calibrate, convert_int8, prepare_qat

    q = calibrate(prepare_qat(s), [example_batch(s, 2)])
    with pytest.raises(ValueError, match="prune the float student"):
        prune_student(q, keep=0.5)
    with pytest.raises(ValueError, match="prune the float student"):
        prune_student(convert_int8(q), keep=0.5)


def test_prune_foreign_timm_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    n0 = sum(p.numel() for p in m.parameters())
    p = prune_foreign_model(m, x[:1], keep=0.5)
    assert sum(q.numel() for q in p.parameters()) < 0.5 * n0
    assert sum(q.numel() for q in m.parameters()) == n0  # original untouched
    assert p(x).shape == (2, 5) and p.get_classifier().out_features == 5
    convs = [mod for mod in p.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    with pytest.raises(ValueError, match="keep ratio"):
        prune_foreign_model(m, x[:1], keep=0.0)


def test_cli_prune(tmp_path):
    from zoo.bench import update_metrics
    from zoo.cli import main

    s = _student()
    src, dst = tmp_path / "src", tmp_path / "dst"
    s.save_pretrained(src)
    update_metrics(src, {"distilled": {"accuracy": 0.9, "params": 1, "size_bytes": 1, "latency_ms": 1.0}})
    assert main(["prune", str(src), "--keep", "0.6", "--out", str(dst)]) == 0
    r = HybridStudent.from_pretrained(dst)
    assert r.config.pruning["keep"] == 0.6
    metrics = json.loads((dst / "metrics.json").read_text())["models"]
    assert metrics["distilled"]["accuracy"] == 0.9  # lineage copied
    assert metrics["pruned"]["params"] == r.num_params() and metrics["pruned"]["accuracy"] is None
    assert main(["prune", str(src), "--keep", "1.7", "--out", str(tmp_path / "bad")]) == 1
