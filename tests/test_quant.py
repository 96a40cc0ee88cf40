"""int8 quantization: QAT modules, calibration, conversion, safetensors round trips and error cases."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.compress.export import example_batch
from zoo.compress.quant import (
    Int8Conv2d,
    Int8Linear,
    QATConv2d,
    QATLinear,
    calibrate,
    convert_int8,
    fake_quant_weight,
    prepare_qat,
    quantization_error_loss,
    quantize_weight,
)
from zoo.students import HybridStudent

MODS = ["text", "image", "audio"]


def _student():
    torch.manual_seed(0)
    return zoo.create_student("hybrid_test", modalities=MODS, num_classes=3).eval()


def _calibrated(s, observer="ema"):
    return calibrate(prepare_qat(s, observer=observer), [example_batch(s, 4, seed=i) for i in range(3)])


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch)


def test_weight_quantization_is_per_channel_symmetric():
    w = torch.randn(6, 5) * torch.arange(1, 7)[:, None]
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.shape == (6,)
    assert q.abs().max() == 63 and q.min() >= -63  # 7 bits: no int16 saturation in ONNX Runtime's U8S8 kernels
    torch.testing.assert_close(q.float() * s[:, None], fake_quant_weight(w), rtol=0, atol=0)
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7).all()


def test_prepare_qat_swaps_layers_and_keeps_heads_float():
    s = _student()
    q = prepare_qat(s)
    kinds = q.quant_scheme["modules"]
    assert kinds["stems.text.embed"] == "embedding" and kinds["conv_blocks.0.dw"] == "conv"
    assert kinds["attn_blocks.0.attn.qkv"] == "linear" and not any(k.startswith("heads") for k in kinds)
    assert isinstance(q.conv_blocks[0].dw, QATConv2d) and isinstance(q.attn_blocks[0].mlp.fc1, QATLinear)
    assert type(s.conv_blocks[0].dw) is torch.nn.Conv2d  # original untouched
    # 1x1 convs are quantized like linears: quantized input, float output (no output quantizer to calibrate)
    assert kinds["conv_blocks.0.pw1"] == kinds["conv_blocks.0.pw2"] == "pointwise"
    assert kinds["stems.image.proj"] == "conv"
    assert q.conv_blocks[0].pw1.output_quant is None and q.conv_blocks[0].dw.output_quant is not None


def test_fake_quant_is_close_to_float_and_trains():
    s = _student()
    q = _calibrated(s)
    b = example_batch(s, 4, seed=7)
    ref, out = _logits(s, b), _logits(q, b)
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    assert (out - ref).abs().max() > 0  # it does quantize
    # straight-through gradients reach the float weights; EMA observers move
    q.train()
    loss = quantization_error_loss(q(**b), ref)
    loss.backward()
    assert q.attn_blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert q.conv_blocks[0].dw.weight.grad.abs().sum() > 0


def test_lsq_scales_are_learned():
    s = _student()
    q = _calibrated(s, observer="lsq")
    q.train()
    q(**example_batch(s, 4, seed=3)).logsumexp(-1).mean().backward()
    scale = q.attn_blocks[0].attn.qkv.input_quant.scale
    assert isinstance(scale, torch.nn.Parameter) and scale.grad is not None and scale.grad.abs().sum() > 0


def test_convert_matches_fake_quant_and_round_trips(tmp_path):
    s = _student()
    q = _calibrated(s)
    c = convert_int8(q)
    b = example_batch(s, 3, seed=5)
    # eager int8 multiplies the fake-quantizer's own integers (exactly, in int32): equal up to float summation order
    torch.testing.assert_close(_logits(c, b), _logits(q.eval(), b), rtol=0, atol=1e-6)
    assert isinstance(c.attn_blocks[0].attn.qkv, Int8Linear) and isinstance(c.stems["image"].proj, Int8Conv2d)
    c.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["attn_blocks.0.attn.qkv.weight"].dtype == torch.int8
    assert tensors["stems.text.embed.weight"].dtype == torch.int8
    assert tensors["attn_blocks.0.attn.qkv.weight_scale"].dtype == torch.float32
    assert tensors["heads.label.weight"].dtype == torch.float32
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization"]["weights"]["dtype"] == "int8" and "conv_blocks.0.pw1" in cfg["quantization"]["modules"]
    r = HybridStudent.from_pretrained(tmp_path)
    torch.testing.assert_close(_logits(r, b), _logits(c, b), rtol=0, atol=0)
    assert r.state_dict().keys() == c.state_dict().keys()


def test_quantizing_twice_is_an_error():
    s = _student()
    q = _calibrated(s)
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(q)
    c = convert_int8(q)
    with pytest.raises(ValueError, match="already quantized"):
        prepare_qat(c)
    with pytest.raises(ValueError, match="already converted"):
        convert_int8(c)
    with pytest.raises(ValueError, match="prepare_qat"):
        convert_int8(s)


def test_uncalibrated_student_cannot_convert_or_evaluate():
    s = _student()
    q = prepare_qat(s).eval()
    with pytest.raises(ValueError, match="calibrate"):
        convert_int8(q)
    with pytest.raises(RuntimeError, match="calibrate"):
        q(**example_batch(s, 1))


def test_mismatched_quantized_checkpoints(tmp_path):
    s = _student()
    c = convert_int8(_calibrated(s))
    c.save_pretrained(tmp_path / "int8")
    s.save_pretrained(tmp_path / "float")
    cfg = json.loads((tmp_path / "int8" / "config.json").read_text())

    # int8 weights with the quantization scheme dropped from the config: unexpected scale tensors
    bad = dict(cfg, quantization=None)
    (tmp_path / "int8" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="does not match"):
        HybridStudent.from_pretrained(tmp_path / "int8")

    # a scheme naming a layer the architecture lacks
    bad = json.loads(json.dumps(cfg))
    bad["quantization"]["modules"]["attn_blocks.7.attn.qkv"] = "linear"
    (tmp_path / "int8" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="attn_blocks.7.attn.qkv"):
        HybridStudent.from_pretrained(tmp_path / "int8")

    # float weights under an int8 config: missing scales
    (tmp_path / "float" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):
        HybridStudent.from_pretrained(tmp_path / "float")

    # int8 keys but float values (the scales saved alongside): the dtype is named
    (tmp_path / "int8" / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(tmp_path / "int8" / "model.safetensors")
    tensors["conv_blocks.0.pw1.weight"] = tensors["conv_blocks.0.pw1.weight"].float()
    save_file(tensors, tmp_path / "int8" / "model.safetensors")
    with pytest.raises(ValueError, match="dtype torch.float32"):
        HybridStudent.from_pretrained(tmp_path / "int8")


def test_cli_quantize_synthetic_calibration(tmp_path, capsys):
    from zoo.cli import main

    s = _student()
    s.save_pretrained(tmp_path / "src")
    assert main(["quantize", str(tmp_path / "src"), "--out", str(tmp_path / "q"), "--batches", "2"]) == 0
    assert "synthetic" in capsys.readouterr().out
    r = HybridStudent.from_pretrained(tmp_path / "q")
    assert r.config.quantization is not None
    entry = json.loads((tmp_path / "q" / "metrics.json").read_text())["models"]["int8"]
    assert entry["size_bytes"] < (tmp_path / "src" / "model.safetensors").stat().st_size / 2
    assert entry["accuracy"] is None
    assert main(["quantize", str(tmp_path / "q"), "--out", str(tmp_path / "qq")]) == 1  # already int8


def test_version_1_checkpoints_still_load(tmp_path, monkeypatch):
    """Version 1 quantized every conv output, 1x1 convs included, and called them all "conv"."""
    import zoo.compress.quant as zq

    s = _student()
    kind_of = zq._kind_of
    monkeypatch.setattr(zq, "_kind_of", lambda m: "conv" if type(m) is torch.nn.Conv2d else kind_of(m))
    c = convert_int8(_calibrated(s))
    monkeypatch.undo()
    assert "conv_blocks.0.pw1.output_scale" in c.state_dict()
    c.config.quantization["version"] = 1
    c.save_pretrained(tmp_path)
    r = HybridStudent.from_pretrained(tmp_path)
    assert not r.conv_blocks[0].pw1.pointwise
    b = example_batch(s, 2, seed=1)
    torch.testing.assert_close(_logits(r, b), _logits(c, b), rtol=0, atol=0)

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization"]["version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="version 99.*Upgrade"):
        HybridStudent.from_pretrained(tmp_path)
    cfg["quantization"]["version"] = 2
    cfg["quantization"]["modules"]["stems.image.proj"] = "pointwise"  # a 3x3 stride-2 conv
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="non-pointwise Conv2d"):
        HybridStudent.from_pretrained(tmp_path)


def test_eager_int8_inference_runs_int8_gemms_and_matches_the_fake_quant_arithmetic(monkeypatch):
    s = _student()
    c = convert_int8(_calibrated(s))
    b = example_batch(s, 3, seed=6)
    with torch.enable_grad():  # autograd on: the fake-quantized float arithmetic (what fine-tuning differentiates)
        ref = c(**b).detach()
    calls = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, w: calls.append(a.dtype) or int_mm(a, w))
    out = _logits(c, b)
    int8_layers = [m for m in c.modules() if isinstance(m, Int8Linear) or getattr(m, "pointwise", False)]
    assert len(calls) >= len(int8_layers) and set(calls) == {torch.int8}
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # the cached GEMM weights follow the module's weights: an in-place edit is seen by the next call
    layer = c.attn_blocks[0].attn.qkv
    with torch.no_grad():
        layer.weight.neg_()
    assert not torch.allclose(_logits(c, b), out)


def test_int8_student_built_under_inference_mode_runs():
    s = _student()
    with torch.inference_mode():  # inference tensors carry no version counter: the eager caches must not need one
        c = convert_int8(_calibrated(s))
        assert c(**example_batch(s, 2, seed=1)).shape == (2, 3)
