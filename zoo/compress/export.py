"""Export to ONNX and run on ONNX Runtime: the float student as is, the int8 student as a QDQ graph.

The ONNX graph takes the flat batch tensors of the student's modalities (``input_ids``, ``attention_mask``,
``text_mask``, ``pixel_values``, ``image_mask``, ``input_features``, ``audio_mask``), with a dynamic batch axis, and
returns the logits (one output per task). Export uses the TorchScript-based ``torch.onnx.export(dynamo=False)``: it
is reliable on this model, honours our DequantizeLinear symbolic for int8 weights, and exports the fake-quantize
ops as QuantizeLinear / DequantizeLinear pairs. Opset 20 by default, so GELU is one ``Gelu`` node (older opsets
spell it with Erf, which ONNX Runtime no longer fuses once QDQ nodes sit around it).

An int8 student exports as: int8 weight initializers -> DequantizeLinear, and QuantizeLinear -> DequantizeLinear on
the activations that the scheme quantizes. ONNX Runtime (graph optimisations on, the default) fuses these into
``MatMulIntegerToFloat`` (linear layers and 1x1 convs, exported as channels-last MatMuls) and ``QLinearConv`` (the
other convolutions): real int8 kernels. Three rewrites keep work out of both graphs: attention is exported with its
1/sqrt(head_dim) as a constant (one Mul on q, which ONNX Runtime folds into the QK^T MatMul) instead of a per-block
shape computation; ``Shape`` nodes read the int8 tensor rather than its dequantized copy; and every ``Reshape`` whose
target is static but for the batch gets a constant shape with -1 for the batch, which drops the Shape/Gather/Concat
arithmetic the tracer records for ``x.reshape(B, ...)`` (a quarter of the nodes; 2-4% of latency).

Two more savings happen in ONNX Runtime, for int8 graphs: ``onnx_session`` folds each linear layer's bias ``Add``
into its ``MatMulIntegerToFloat`` (``_fold_int8_biases``), and a ReLU (the registered students' activation) before
a uint8 quantization of zero point 0 is dropped by ONNX Runtime itself: the quantization clamps at 0 already.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zoo.io import atomic_path, check_finite
from zoo.modalities import MODALITIES, input_keys

ONNX_NAME = "model.onnx"
DEFAULT_OPSET = 20


def input_names(student: nn.Module) -> list[str]:
    """The ONNX graph's inputs, in order: the flat batch keys of the student's modalities."""
    return input_keys(student.config.modalities)


def output_names(student: nn.Module) -> list[str]:
    tasks = list(student.config.tasks)
    return ["logits"] if len(tasks) == 1 else [f"logits_{t}" for t in tasks]


def onnx_metadata(student: nn.Module) -> dict[str, str]:
    """What a caller of the bare ONNX file needs, as its ``metadata_props`` (strings; JSON for structures): the
    labels, modalities, input and output names, and each modality's preprocessing settings from config.json."""
    config = student.config.to_dict()
    modalities = list(config["modalities"])
    return {
        "producer": "distill-zoo",
        "architecture": str(config.get("architecture")),
        "modalities": json.dumps(modalities),
        "input_names": json.dumps(input_names(student)),
        "output_names": json.dumps(output_names(student)),
        "id2label": json.dumps(config.get("id2label") or {}),
        "preprocessing": json.dumps({m: config.get(m) for m in modalities}),
        "preprocessing_note": "inputs are what zoo.load(folder).preprocess(samples) returns (text: the folder's "
        "tokenizer.json); the settings above say how each modality is turned into those tensors",
    }


def example_batch(student: nn.Module, batch_size: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic flat batch for the student, every sample carrying every modality (no labels).

    Images and audio are random pixels and white noise run through the student's own preprocessing; text is random
    token ids filling the whole length (the student needs no tokenizer for this). Good for shapes, export, latency
    and a rough calibration; real data calibrates better.
    """
    rng = np.random.default_rng(seed)
    batch: dict[str, torch.Tensor] = {}
    for m in student.config.modalities:  # in canonical order: the random draws follow it
        batch.update(MODALITIES[m].example(getattr(student.config, m), batch_size, rng))
    return batch


def _sdpa_onnx(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``scaled_dot_product_attention`` as MatMul(q * scale, k^T) [+ mask] -> Softmax -> MatMul(v), scale a constant.

    The stock symbolic recomputes 1/sqrt(head_dim) from the query's runtime shape in every block (Shape, Slice, Cast,
    Sqrt, Div, Sqrt) and scales q and k separately; the head width is static, so one constant Mul on q does. Falls
    back to the stock symbolic for what the students never use (dropout, causal or boolean masks, GQA).
    """
    from torch.onnx import symbolic_helper, symbolic_opset14

    dims = symbolic_helper._get_tensor_sizes(query) or [None]
    masked = not symbolic_helper._is_none(attn_mask)
    if symbolic_helper._is_none(scale):
        factor = dims[-1] ** -0.5 if isinstance(dims[-1], int) else None
    else:
        factor = symbolic_helper._maybe_get_const(scale, "f")
    plain = not (dropout_p or is_causal or enable_gqa or (masked and attn_mask.type().scalarType() == "Bool"))
    if not plain or not isinstance(factor, float):
        args = (attn_mask, dropout_p, is_causal, scale, enable_gqa)
        return symbolic_opset14.scaled_dot_product_attention(g, query, key, value, *args)
    rank = len(dims)
    key_t = g.op("Transpose", key, perm_i=list(range(rank - 2)) + [rank - 1, rank - 2])
    scores = g.op("MatMul", g.op("Mul", query, g.op("Constant", value_t=torch.tensor(factor))), key_t)
    if masked:
        scores = g.op("Add", scores, attn_mask)
    return g.op("MatMul", g.op("Softmax", scores, axis_i=-1), value)


@contextlib.contextmanager
def _custom_symbolics(opset: int):
    """Our export rules for the duration of one export (the registry is global to the process)."""
    from torch.onnx import symbolic_helper

    name = "aten::scaled_dot_product_attention"
    fn = symbolic_helper.parse_args("v", "v", "v", "v", "f", "b", "v", "b")(_sdpa_onnx)
    torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(name, opset)


def _shape_reads_skip_qdq(model) -> int:
    """Point every ``Shape`` that reads a DequantizeLinear output at the DQ's int8 input instead.

    DQ keeps the shape, but ONNX Runtime must still run a DQ (duplicating it when its int8 consumer fuses) just so
    ``Shape`` can read its output: the stems' ``x.shape`` after an int8 conv cost a full dequantization each. Reading
    further up (the float tensor before QuantizeLinear) would give that tensor a second consumer and stop ONNX Runtime
    from fusing its producer into an int8 kernel. Returns the number of rewires.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    changed = 0
    for node in model.graph.node:
        src = producer.get(node.input[0]) if node.op_type == "Shape" else None
        if src is not None and src.op_type == "DequantizeLinear":
            node.input[0] = src.input[0]
            changed += 1
    if changed:
        _drop_dead_nodes(model)  # a DQ that only fed a Shape
    return changed


def _drop_dead_nodes(model) -> None:
    """Remove nodes whose outputs nobody reads (graph outputs count as read), then initializers nobody reads."""
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | graph_outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def _static_reshapes(model) -> int:
    """Give every ``Reshape`` whose target is static but for the batch axis a constant shape, with -1 for the batch.

    The TorchScript exporter spells ``x.reshape(B, N, ...)`` as Shape -> Gather -> Unsqueeze -> Concat -> Reshape,
    recomputed at every call: about 280 of the 1100 nodes of an int8 ``hybrid_small`` graph, each a kernel launch
    in ONNX Runtime. Symbolic shape inference (ONNX Runtime's, the one its transformer tools use) tells which
    Reshape outputs are known up to the batch axis; their shape becomes an initializer and the dead shape arithmetic
    is dropped. -1 is exact there: the element count fixes the one unknown axis. Returns the number of rewrites.
    """
    import numpy as np
    from onnx import numpy_helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception as e:  # an optimisation only: a graph the inference cannot follow is exported as traced
        # logged, not warned: export_onnx silences warnings (the tracer's) around this call
        logging.getLogger(__name__).warning(
            "ONNX export: shape inference failed (%s); Reshapes keep their run-time shapes.", e
        )
        return 0
    shapes = {v.name: v.type.tensor_type.shape for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    constant = {i.name for i in model.graph.initializer}
    constant |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.input[1] in constant or node.output[0] not in shapes:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in shapes[node.output[0]].dim]
        unknown = [i for i, d in enumerate(dims) if d is None]
        if len(unknown) != 1 or 0 in dims:
            continue
        target = np.array([-1 if d is None else d for d in dims], dtype=np.int64)
        name = f"{node.output[0]}/static_shape"
        model.graph.initializer.append(numpy_helper.from_array(target, name))
        node.input[1] = name
        changed += 1
    if changed:
        _drop_dead_nodes(model)
    return changed


class _OnnxWrapper(nn.Module):
    """Positional tensors -> the student's keyword inputs; logits of every task as a tuple."""

    def __init__(self, student: nn.Module, names: list[str]):
        super().__init__()
        self.student, self.names = student, names

    def forward(self, *tensors):
        outs = self.student.forward_all_tasks(**dict(zip(self.names, tensors)))
        return tuple(outs.values())


def export_onnx(
    student: nn.Module,
    path: str | os.PathLike,
    batch: dict[str, torch.Tensor] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the student (float or int8) to ``path`` as ONNX with a dynamic batch axis; returns the path.

    ``batch`` is an example flat batch (default: ``example_batch(student, 2)``); labels are ignored. The file is
    written atomically, carries ``onnx_metadata(student)`` as metadata_props and is checked with ``onnx.checker``.
    """
    import onnx

    check_finite(student.state_dict(), f"export to {path}")
    if opset < 17:
        raise ValueError(f"opset {opset}: export needs opset 17 or later (LayerNormalization).")
    names = input_names(student)
    batch = batch if batch is not None else example_batch(student, batch_size=2)
    missing = [n for n in names if n not in batch]
    if missing:
        raise ValueError(f"the example batch lacks {missing}; build it with student.preprocess or example_batch().")
    args = tuple(batch[n] for n in names)
    outputs = output_names(student)
    dynamic = {n: {0: "batch"} for n in names + outputs}
    wrapper = _OnnxWrapper(student, names).eval()
    was_training = student.training
    student.eval()
    path = Path(path)
    try:
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings(), _custom_symbolics(opset):
            warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer warnings on shape asserts
            torch.onnx.export(
                wrapper,
                args,
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=outputs,
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
            model = onnx.load(str(tmp))
            _shape_reads_skip_qdq(model)
            _static_reshapes(model)
            onnx.helper.set_model_props(model, onnx_metadata(student))
            onnx.save(model, str(tmp))
            onnx.checker.check_model(str(tmp), full_check=True)
    finally:
        student.train(was_training)
    return path


def _fold_int8_biases(model) -> int:
    """Move each bias ``Add`` behind a ``MatMulIntegerToFloat`` into the kernel's own bias input; returns the count.

    ONNX Runtime fuses a QDQ linear layer (DequantizeLinear x2 -> MatMul) into ``MatMulIntegerToFloat`` but leaves
    its bias as a separate ``Add`` over the whole output: one more pass over memory per layer. The kernel takes the
    bias itself (``y = (A - a0) (B - b0) a_s b_s + bias``, in the GEMM's output pass). ONNX Runtime's own
    ``MatMulInteger -> Cast -> Mul -> Add`` fusion fills that input for dynamic quantization only: with static
    scales, constant folding removes the pattern's scale ``Mul`` before the fusion runs. Measured on an int8
    ``hybrid_small`` with ReLU at batch 1: 10.90 ms folded vs 11.61 ms (``benchmarks/compression.py``'s docstring).
    """
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    folded = 0
    for mm in list(model.graph.node):
        if mm.op_type != "MatMulIntegerToFloat" or (len(mm.input) > 6 and mm.input[6]):
            continue
        users = readers.get(mm.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add" or mm.output[0] in graph_outputs:
            continue
        add = users[0]
        bias = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
        weight = inits.get(mm.input[1])
        if bias not in inits or weight is None:
            continue
        b = inits[bias]
        if list(b.dims) != [weight.dims[-1]] or b.data_type != TensorProto.FLOAT:
            continue
        del mm.input[6:]
        mm.input.extend([""] * (6 - len(mm.input)) + [bias])
        mm.output[0] = add.output[0]
        model.graph.node.remove(add)
        folded += 1
    return folded


def onnx_session(path: str | os.PathLike, threads: int = 1):
    """An ONNX Runtime CPU session with all graph optimisations (QDQ fusion into int8 kernels) and ``threads``.

    An int8 (QDQ) graph is first optimised by ONNX Runtime's portable (``extended``) level, which fuses the QDQ
    linear layers into ``MatMulIntegerToFloat``; their bias ``Add``s are then folded into the kernels
    (:func:`_fold_int8_biases`) before the session applies the remaining, hardware-specific optimisations. The file
    on disk stays the portable QDQ graph.
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; export it first with `zoo export DIR --onnx`.")
    fused = ort_int8_graph(path, threads)
    source = str(path) if fused is None else fused.SerializeToString()
    so = _session_options("all", threads)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def _session_options(level: str, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.log_severity_level = 3  # warnings about hardware-specific optimised graphs are noise here
    return so


def ort_int8_graph(path: str | os.PathLike, threads: int = 1):
    """The int8 graph of an ONNX file as ONNX Runtime's portable optimisations leave it, with the linear layers'
    biases folded into their ``MatMulIntegerToFloat`` kernels; ``None`` for a graph with nothing to fold (a float
    export)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return None
    with tempfile.TemporaryDirectory(prefix="zoo-ort-") as tmp:
        so = _session_options("extended", threads)
        so.optimized_model_filepath = os.path.join(tmp, "extended.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        fused = onnx.load(so.optimized_model_filepath)
    return fused if _fold_int8_biases(fused) else None


def onnx_feed(session, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The session's inputs from a flat batch (torch tensors or arrays); a missing input is an error naming it."""
    feed = {}
    for inp in session.get_inputs():
        if inp.name not in batch:
            raise KeyError(f"the ONNX model needs input {inp.name!r}; the batch has {sorted(batch)}.")
        v = batch[inp.name]
        feed[inp.name] = v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
    return feed


def run_onnx(session, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of the first task for a flat batch."""
    return torch.from_numpy(session.run(None, onnx_feed(session, batch))[0])


def onnx_max_abs_diff(student: nn.Module, session, batch: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between the student's logits in torch and in ONNX Runtime on ``batch``."""
    student.eval()
    with torch.no_grad():
        ref = student(**{k: v for k, v in batch.items() if k != "labels"})
    return float((run_onnx(session, batch) - ref).abs().max())


# --------------------------------------------------------------------------------------------------- CLI
