"""ONNX export (float and int8 QDQ), ONNX Runtime parity and int8 kernels, runtimes and the latency-budget search."""

import collections
import json

import onnx
import pytest
import torch

import zoo
from zoo.compress.export import (
    example_batch,
    export_onnx,
    input_names,
    onnx_max_abs_diff,
    onnx_session,
    ort_int8_graph,
    run_onnx,
)
from zoo.compress.quant import calibrate, convert_int8, prepare_qat

MODS = ["text", "image", "audio"]
# Stated tolerances (max |logit difference|, torch eager vs ONNX Runtime, relative to the largest logit):
FLOAT_RTOL = 1e-4  # same float math, different kernels
INT8_RTOL = 0.02  # int8 kernels round differently (integer accumulation, requantisation): a few activations
# land one quantization step apart, the logits stay within 2% of their scale


def _student():
    torch.manual_seed(0)
    return zoo.create_student("hybrid_test", modalities=MODS, num_classes=3).eval()


def _int8(s):
    return convert_int8(calibrate(prepare_qat(s), [example_batch(s, 4, seed=i) for i in range(3)]))


def test_float_export_parity_and_dynamic_batch(tmp_path):
    s = _student()
    path = export_onnx(s, tmp_path / "m.onnx", example_batch(s, 2))
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == input_names(s)
    assert model.opset_import[0].version >= 17
    session = onnx_session(path)
    b = example_batch(s, 3, seed=4)  # another batch size than the export's
    with torch.no_grad():
        ref = s(**b)
    assert onnx_max_abs_diff(s, session, b) <= FLOAT_RTOL * ref.abs().max()
    assert run_onnx(session, b).shape == (3, 3)


def test_reshapes_get_constant_shapes_and_batch_stays_dynamic(tmp_path):
    s = _student()
    path = export_onnx(s, tmp_path / "m.onnx", example_batch(s, 2))
    model = onnx.load(path)
    inits = {i.name for i in model.graph.initializer}
    inits |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert reshapes and all(n.input[1] in inits for n in reshapes)  # no Shape -> Gather -> Concat chain feeds them
    assert sum(n.op_type == "Shape" for n in model.graph.node) < len(reshapes)
    session = onnx_session(path)
    for batch_size in (1, 5):  # -1 stands for the batch axis: other sizes than the export's still run and match
        b = example_batch(s, batch_size, seed=batch_size)
        with torch.no_grad():
            ref = s(**b)
        assert run_onnx(session, b).shape == (batch_size, 3)
        assert onnx_max_abs_diff(s, session, b) <= FLOAT_RTOL * ref.abs().max()


def test_attention_exports_with_constant_scale_and_masks_padding(tmp_path):
    s = _student()
    path = export_onnx(s, tmp_path / "m.onnx", example_batch(s, 2))
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert ops["Softmax"] == len(s.attn_blocks) and ops["Sqrt"] == 0, ops  # 1/sqrt(head_dim) is a constant
    b = example_batch(s, 3, seed=2)
    b["attention_mask"][0, 5:] = 0  # padded text: those keys must be masked out
    b["image_mask"][1] = False  # a sample without its image: its image tokens too
    b["audio_mask"][2] = False
    with torch.no_grad():
        ref = s(**b)
    assert onnx_max_abs_diff(s, onnx_session(path), b) <= FLOAT_RTOL * ref.abs().max()


def _has_vnni() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags


def test_int8_export_uses_int8_kernels_and_matches(tmp_path):
    import onnxruntime as ort

    s = _student()
    c = _int8(s)
    path = export_onnx(c, tmp_path / "q.onnx", example_batch(s, 2))
    model = onnx.load(path)
    int8_inits = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_inits) >= 10  # weights stay int8 in the file
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node)
    # 4 linears of the attention block; the conv block's two 1x1 convs, run once per modality, as int8 MatMuls too
    assert ops["MatMulIntegerToFloat"] == 4 + 2 * len(MODS) and ops["QLinearConv"] > 0 and ops["Conv"] == 0, ops
    # no Shape reads a dequantized tensor (it would cost a DequantizeLinear just for the shape)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    assert not [n for n in model.graph.node if n.op_type == "Shape" and producer.get(n.input[0]) == "DequantizeLinear"]
    session = onnx_session(path)
    b = example_batch(s, 4, seed=9)
    with torch.no_grad():
        ref = c(**b)
    diff = onnx_max_abs_diff(c, session, b)
    # without VNNI (AVX2 only, e.g. this project's AMD EPYC machines) ONNX Runtime's u8s8 GEMM sums pairs of
    # products in int16 (vpmaddubsw), which saturates on some activations: the gap to torch's kernels is larger
    rtol = INT8_RTOL if _has_vnni() else 7.5 * INT8_RTOL
    assert diff <= rtol * ref.abs().max(), diff
    assert (run_onnx(session, b).argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75


def test_int8_session_folds_biases_into_the_int8_kernels_and_drops_relus(tmp_path):
    import numpy as np
    import onnxruntime as ort

    s = _student()
    c = _int8(s)
    path = export_onnx(c, tmp_path / "q.onnx", example_batch(s, 2))
    assert ort_int8_graph(export_onnx(s, tmp_path / "f.onnx")) is None  # a float graph has nothing to fold
    fused = ort_int8_graph(path)
    mm = [n for n in fused.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(mm) == 4 + 2 * len(MODS)
    assert all(len(n.input) == 7 and n.input[6] for n in mm)  # every linear and 1x1 conv has its bias in the kernel
    # the student's ReLUs (conv blocks, MLP, stems) all sit before a quantization of uint8 zero point 0: ONNX Runtime
    # drops them, the clamp at 0 is the quantization's own
    assert sum(n.op_type == "Relu" for n in onnx.load(path).graph.node) == 3 * 2 + 1 + 2
    assert not [n for n in fused.graph.node if n.op_type in ("Relu", "Gelu", "BiasGelu")]
    biases = {n.input[6] for n in mm if len(n.input) == 7}
    assert not [n for n in fused.graph.node if n.op_type == "Add" and biases & set(n.input)]  # added once, not twice
    # the folded session computes what ONNX Runtime computes on the file as exported (same kernels, bias in the GEMM)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    plain = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    b = example_batch(s, 3, seed=5)
    feed = {i.name: b[i.name].numpy() for i in plain.get_inputs()}
    np.testing.assert_allclose(onnx_session(path).run(None, feed)[0], plain.run(None, feed)[0], atol=1e-5, rtol=1e-5)


def test_export_cli_writes_onnx_and_metrics(tmp_path):
    from zoo.cli import main

    s = _student()
    _int8(s).save_pretrained(tmp_path)
    assert main(["export", str(tmp_path), "--onnx"]) == 0
    assert (tmp_path / "model.onnx").exists()
    entry = json.loads((tmp_path / "metrics.json").read_text())["models"]["onnx_int8"]
    assert entry["runtime"] == "onnxruntime" and entry["latency_ms"] > 0 and entry["size_bytes"] > 0
    assert main(["export", str(tmp_path)]) == 1  # no format asked for


def test_onnx_file_carries_what_a_plain_session_needs(tmp_path):
    """metadata_props read through a plain onnxruntime.InferenceSession: labels, modalities, inputs, preprocessing."""
    import onnxruntime as ort

    s = _student()
    s.config.id2label = {"0": "cat", "1": "dog", "2": "bird"}
    path = export_onnx(s, tmp_path / "m.onnx", example_batch(s, 2))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["id2label"]) == {"0": "cat", "1": "dog", "2": "bird"}
    assert json.loads(meta["modalities"]) == MODS and meta["producer"] == "distill-zoo"
    assert json.loads(meta["input_names"]) == [i.name for i in session.get_inputs()] == input_names(s)
    pre = json.loads(meta["preprocessing"])
    assert pre["image"]["image_size"] == s.config.image.image_size and "sample_rate" in pre["audio"]
    b = example_batch(s, 2)
    out = session.run(None, {k: b[k].numpy() for k in json.loads(meta["input_names"])})[0]
    assert out.shape == (2, 3)


def test_export_without_data_records_no_accuracy(tmp_path):
    from zoo.bench import update_metrics
    from zoo.cli import main

    _student().save_pretrained(tmp_path)
    update_metrics(tmp_path, {"distilled": {"accuracy": 0.9}, "pruned": {"accuracy": 0.8}})
    assert main(["export", str(tmp_path), "--onnx"]) == 0
    entry = json.loads((tmp_path / "metrics.json").read_text())["models"]["onnx_fp32"]
    assert entry["accuracy"] is None and "--data" in entry["note"]  # not the pruned student's 0.8


def test_files_are_written_with_the_users_umask(tmp_path):
    import os
    import stat

    from safetensors import safe_open

    from zoo.bench import update_metrics
    from zoo.cards import write_card

    old = os.umask(0o022)
    try:
        s = _student()
        s.save_pretrained(tmp_path)
        update_metrics(tmp_path, {"distilled": {"accuracy": 0.9}})
        write_card(tmp_path)
        export_onnx(s, tmp_path / "model.onnx", example_batch(s, 2))
    finally:
        os.umask(old)
    for name in ("README.md", "metrics.json", "model.safetensors", "model.onnx", "config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:  # still a plain safetensors file
        assert len(list(f.keys())) > 0


def test_runtime_check_on_onnxruntime():
    from zoo.compress.hardware import count_macs, runtime_latency_ms

    s = _student()
    b = example_batch(s, 1)
    ms, diff = runtime_latency_ms(s, b, "onnxruntime", repeats=3)
    assert ms > 0 and diff < 1e-4
    with pytest.raises(ValueError, match="runtime"):
        runtime_latency_ms(s, b, "tensorrt")
    assert count_macs(s, b) > 0


def test_fit_latency_budget_bisects_on_measured_latency(monkeypatch):
    import zoo.compress.hardware as hw

    s = _student()
    calls = []

    def fake_latency(model, batch, runtime, repeats=20, check=True):  # deterministic: latency follows params
        calls.append(model.num_params())
        return model.num_params() / 1000.0, 0.0

    monkeypatch.setattr(hw, "runtime_latency_ms", fake_latency)
    full = s.num_params() / 1000.0
    out, report = hw.fit_latency_budget(s, full * 2, "torch", example_batch(s, 1))
    assert out is s and report["keep"] == 1.0 and report["met"]
    out, report = hw.fit_latency_budget(s, full * 0.85, "torch", example_batch(s, 1), steps=5)
    assert report["latency_ms"] <= full * 0.85 and 0.1 < report["keep"] < 1.0
    assert out.num_params() / 1000.0 == pytest.approx(report["latency_ms"])
    assert out.config.pruning["keep"] == pytest.approx(report["keep"], abs=1e-4)
    assert report["runtime"] == "torch" and report["budget_ms"] == full * 0.85 and len(report["trials"]) == 7
    with pytest.raises(ValueError, match="out of reach"):
        hw.fit_latency_budget(s, 1e-6, "torch", example_batch(s, 1))
    # a ratio of the student's own latency, from the fit's own first measurement
    out, report = hw.fit_latency_budget(s, None, "torch", example_batch(s, 1), steps=5, budget_ratio=0.85)
    assert report["budget_ms"] == pytest.approx(0.85 * report["full_latency_ms"]) and 0.1 < report["keep"] < 1.0
    with pytest.raises(ValueError, match="one latency budget"):
        hw.fit_latency_budget(s, 1.0, "torch", example_batch(s, 1), budget_ratio=0.5)
