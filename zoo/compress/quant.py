"""8-bit quantization: quantization-aware training (fake quantization) and conversion to plain int8 tensors.

Scheme (the same in training, in the saved checkpoint and in the ONNX graph):
- weights of Conv2d (depthwise included), Linear and Embedding layers: int8, symmetric, per output channel (per row
  for embeddings), scale = max|w| / qmax of the channel (min-max, recomputed every step). qmax is 63 for the layers
  that run as integer GEMMs (conv, linear: 7-bit values in an int8 tensor, ONNX Runtime's ``reduce_range``) and 127
  for embedding rows (a lookup, no GEMM). Why 7 bits: on x86 without VNNI (AVX2, AVX-512 without VNNI: this machine
  is one) ONNX Runtime's U8S8 kernels add pairs of u8 x s8 products in int16 (``vpmaddubsw``), which saturates once
  two of them exceed 32767 (255 * 127 * 2 does); with |w| <= 63 it cannot (255 * 63 * 2 = 32130). Measured on the
  fashion-mnist int8 student (2000 test images): 8-bit weights 83.15% in torch eager, 81.15% in
  ONNX Runtime; the same weights rounded to 7 bits 83.10% eager, 83.05% in ONNX Runtime;
- activations: uint8, asymmetric, per tensor, at the input of every quantized Conv2d / Linear and at the output of
  every Conv2d but the pointwise (1x1) ones. Their range is calibrated on a few batches (min-max), then either observed
  during training (``ema``: exponential moving min / max) or learned (``lsq``: LSQ+, Bhalgat et al. 2020, on top of
  Esser et al. 2020's LSQ). The conv outputs are quantized because ONNX Runtime only fuses Q -> Conv -> Q into its
  int8 ``QLinearConv``; a Linear with a quantized input becomes ``MatMulIntegerToFloat``, which returns float. A
  pointwise conv is a Linear over channels: it is quantized like one and exported as a channels-last MatMul, which
  saves a quantize / dequantize pair per layer. uint8 activations with int8 weights (U8S8) are ONNX Runtime's fast
  path on x86.
Straight-through gradients come from torch's fake-quantize ops (``torch.fake_quantize_per_channel_affine``, and
``torch._fake_quantize_learnable_per_tensor_affine`` for LSQ).

``convert_int8`` turns a trained fake-quantized student into a student whose quantized layers hold int8 weight
tensors and float scales as plain buffers, saved as such in model.safetensors; ``config.quantization`` lists the
scheme and every quantized layer, so ``from_pretrained`` rebuilds exactly that module structure. In torch eager
inference (no autograd, CPU) the linear layers and pointwise convs quantize their input and run an int8 GEMM
(``torch._int_mm``: the fake-quantized model's integers, accumulated exactly), and the other convs use weights
dequantized once; with autograd on they run the fake-quantized float arithmetic. Exported to ONNX they become
DequantizeLinear(int8) / QuantizeLinear nodes that ONNX Runtime runs with int8 kernels, the fastest path.
Typical use (the trainer's quant_finetune stage)::

    qat = prepare_qat(student)                  # a copy with fake quantization
    calibrate(qat, batches)                     # activation ranges from a few batches
    ... train qat with KD from the float student (quantization_error_loss) ...
    int8_student = convert_int8(qat)            # int8 tensors + scales; save_pretrained as usual
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.io import check_finite

QUANT_FORMAT = "distill-zoo-int8"
QUANT_VERSION = 2  # 2 added the "pointwise" kind; version 1 schemes (every conv "conv") still load
READABLE_VERSIONS = (1, 2)
W_QMIN, W_QMAX = -63, 63  # GEMM weights: 7-bit, narrow symmetric (no -64, so w and -w quantize alike)
EMBED_QMAX = 127  # embedding rows: full narrow int8
A_QMIN, A_QMAX = 0, 255
OBSERVERS = ("ema", "lsq")
_KINDS = {"linear": nn.Linear, "conv": nn.Conv2d, "pointwise": nn.Conv2d, "embedding": nn.Embedding}


def is_pointwise(conv: nn.Conv2d) -> bool:
    """A 1x1, stride-1, ungrouped, unpadded conv: a Linear applied at every position."""
    return (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def _kind_of(m: nn.Module) -> str | None:
    if type(m) is nn.Conv2d:
        return "pointwise" if is_pointwise(m) else "conv"
    return next((k for k, cls in _KINDS.items() if type(m) is cls), None)


# ------------------------------------------------------------------------------------------------ primitives
def weight_scale(weight: torch.Tensor, qmax: int = W_QMAX) -> torch.Tensor:
    """Per-output-channel symmetric scale: max|w| over each row / filter, divided by ``qmax``."""
    amax = weight.detach().abs().flatten(1).amax(dim=1)
    return (amax / qmax).clamp(min=1e-12).float()


def fake_quant_weight(weight: torch.Tensor, qmax: int = W_QMAX) -> torch.Tensor:
    """Round weights to their grid of [-qmax, qmax] (per output channel) with a straight-through gradient."""
    scale = weight_scale(weight, qmax)
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)


def quantize_weight(weight: torch.Tensor, qmax: int = W_QMAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights -> (int8 tensor, float scale per output channel); ``q * scale`` equals ``fake_quant_weight(w)``."""
    scale = weight_scale(weight, qmax)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    q = torch.round(fake_quant_weight(weight.detach(), qmax) / scale.view(shape)).clamp(-qmax, qmax)
    return q.to(torch.int8), scale


def fake_quant_act(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """uint8 per-tensor quantize-dequantize; exports to ONNX as QuantizeLinear -> DequantizeLinear."""
    return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()).float(), zero_point.reshape(()).int(), 0, 255)


class _Dequantize(torch.autograd.Function):
    """``q * scale`` along ``axis``; exported as one ONNX DequantizeLinear over the int8 initializer."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
        shape = [1] * q.dim()
        shape[axis] = -1
        return q.float() * scale.view(shape)

    @staticmethod
    def symbolic(g, q, scale, axis):
        from torch.onnx import symbolic_helper

        n = symbolic_helper._get_tensor_sizes(scale)[0]
        zero = g.op("Constant", value_t=torch.zeros(n, dtype=torch.int8))
        return g.op("DequantizeLinear", q, scale, zero, axis_i=axis)


def dequantize(q: torch.Tensor, scale: torch.Tensor, axis: int = 0) -> torch.Tensor:
    return _Dequantize.apply(q, scale, axis)


# ---------------------------------------------------------------------------------- fake quantization (QAT)
class ActQuant(nn.Module):
    """Per-tensor uint8 fake quantization of an activation, with an observed (EMA) or learned (LSQ+) range.

    Modes: ``observing`` (set by ``calibrate``) records the min / max of every batch and passes inputs through;
    otherwise the input is fake-quantized. The first training batch initialises an uncalibrated quantizer; an
    uncalibrated quantizer in eval mode is an error, since its range would be arbitrary.
    """

    def __init__(self, observer: str = "ema", momentum: float = 0.01):
        super().__init__()
        if observer not in OBSERVERS:
            raise ValueError(f"activation observer {observer!r}: choose one of {list(OBSERVERS)}.")
        self.observer, self.momentum, self.observing = observer, momentum, False
        if observer == "lsq":  # learned: trained by the optimizer like any parameter
            self.scale = nn.Parameter(torch.ones(1))
            self.zero_point = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("scale", torch.ones(1))
            self.register_buffer("zero_point", torch.zeros(1))
        self.register_buffer("min_val", torch.zeros(1))
        self.register_buffer("max_val", torch.zeros(1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))  # saw data while observing

    def extra_repr(self) -> str:
        return f"observer={self.observer}"

    @torch.no_grad()
    def _observe(self, x: torch.Tensor, ema: bool) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if ema:
            self.min_val.lerp_(lo.view(1), self.momentum)
            self.max_val.lerp_(hi.view(1), self.momentum)
        elif self.seen:
            self.min_val.copy_(torch.minimum(self.min_val, lo.view(1)))
            self.max_val.copy_(torch.maximum(self.max_val, hi.view(1)))
        else:
            self.min_val.fill_(lo)
            self.max_val.fill_(hi)
        self.seen.fill_(True)

    @torch.no_grad()
    def set_range_from_observed(self) -> None:
        """Scale and zero point covering [min, max] (and 0, so zero padding stays exact)."""
        lo = float(min(self.min_val.item(), 0.0))
        hi = float(max(self.max_val.item(), 0.0))
        scale = max((hi - lo) / (A_QMAX - A_QMIN), 1e-8)
        self.scale.data.fill_(scale)
        self.zero_point.data.fill_(min(max(round(A_QMIN - lo / scale), A_QMIN), A_QMAX))
        self.initialized.fill_(True)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, integer zero point) as used at inference and stored in the int8 checkpoint."""
        scale = self.scale.detach().abs().clamp(min=1e-8).reshape(())
        zero_point = self.zero_point.detach().round().clamp(A_QMIN, A_QMAX).to(torch.int32).reshape(())
        return scale.float(), zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x, ema=False)
            return x
        if not self.initialized:
            if not self.training:
                raise RuntimeError(
                    "an activation quantizer has no range yet: run zoo.compress.quant.calibrate(student, batches) on "
                    "a few batches (or train a step) before evaluating the fake-quantized student."
                )
            self._observe(x, ema=False)
            self.set_range_from_observed()
        elif self.training and self.observer == "ema":
            self._observe(x, ema=True)
            self.set_range_from_observed()
        if self.training and self.observer == "lsq":
            # out-of-place clamps: a shared block runs once per modality, so the parameters must stay unmodified
            scale, zero_point = self.scale.clamp(min=1e-8), self.zero_point.clamp(A_QMIN, A_QMAX)
            grad_factor = 1.0 / math.sqrt(x.numel() * A_QMAX)  # LSQ's gradient scale
            return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, A_QMIN, A_QMAX, grad_factor)
        return fake_quant_act(x, *self.qparams())


class QATLinear(nn.Module):
    """A Linear with fake-quantized input and weights; holds the float layer's own parameters."""

    kind = "linear"

    def __init__(self, linear: nn.Linear, observer: str):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.input_quant = ActQuant(observer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), fake_quant_weight(self.weight), self.bias)

    def int8_state(self) -> dict[str, torch.Tensor]:
        q, s = quantize_weight(self.weight)
        state = {"weight": q, "weight_scale": s}
        state["input_scale"], state["input_zero_point"] = self.input_quant.qparams()
        if self.bias is not None:
            state["bias"] = self.bias.detach().clone()
        return state


class QATConv2d(nn.Module):
    """A Conv2d with fake-quantized input, weights and output (float output for a pointwise conv)."""

    def __init__(self, conv: nn.Conv2d, observer: str, pointwise: bool = False):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"cannot quantize {conv}: only zero padding is supported.")
        self.kind = "pointwise" if pointwise else "conv"
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.weight, self.bias = conv.weight, conv.bias
        self.input_quant = ActQuant(observer)
        self.output_quant = None if pointwise else ActQuant(observer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(
            self.input_quant(x), fake_quant_weight(self.weight), self.bias, self.stride, self.padding, self.dilation,
            self.groups,
        )  # fmt: skip
        return y if self.output_quant is None else self.output_quant(y)

    def int8_state(self) -> dict[str, torch.Tensor]:
        q, s = quantize_weight(self.weight)
        state = {"weight": q, "weight_scale": s}
        state["input_scale"], state["input_zero_point"] = self.input_quant.qparams()
        if self.output_quant is not None:
            state["output_scale"], state["output_zero_point"] = self.output_quant.qparams()
        if self.bias is not None:
            state["bias"] = self.bias.detach().clone()
        return state


class QATEmbedding(nn.Module):
    """An Embedding whose table is fake-quantized per row (weight-only: its input is token ids)."""

    kind = "embedding"

    def __init__(self, embedding: nn.Embedding, observer: str):
        super().__init__()
        if embedding.max_norm is not None or embedding.sparse:
            raise ValueError(f"cannot quantize {embedding}: max_norm and sparse embeddings are not supported.")
        self.padding_idx, self.weight = embedding.padding_idx, embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, fake_quant_weight(self.weight, EMBED_QMAX), self.padding_idx)

    def int8_state(self) -> dict[str, torch.Tensor]:
        q, s = quantize_weight(self.weight, EMBED_QMAX)
        return {"weight": q, "weight_scale": s}


_QAT = {
    "linear": QATLinear,
    "conv": QATConv2d,
    "pointwise": lambda conv, observer: QATConv2d(conv, observer, pointwise=True),
    "embedding": QATEmbedding,
}


# ----------------------------------------------------------------------------------------- int8 inference
def _eager_int8(x: torch.Tensor) -> bool:
    """Whether a call runs the int8 kernels of torch eager: CPU inference, outside ONNX export (which needs the QDQ
    spelling) and outside autograd (the rounding has no gradient; fine-tuning keeps the fake-quantized arithmetic)."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export()


def _tensor_stamp(t: torch.Tensor) -> tuple:
    """Storage and in-place version of a tensor; tensors made under ``torch.inference_mode`` have no version counter
    (and cannot be edited in place outside it), so their storage stands for them."""
    return (t.data_ptr(), None if t.is_inference() else t._version)


class _Int8Module(nn.Module):
    """Shared checks: a checkpoint must hand us int8 weights, or it was saved from a different scheme.

    Also the eager inference caches: the weight as the int8 GEMM wants it (transposed, with its column sums for the
    input zero point), or dequantized once for the convolutions torch has no int8 kernel for. They are rebuilt when
    the weight tensor changes (a new load, an in-place edit) and are never saved.
    """

    def _cached(self, key: str, build):
        stamp = tuple(_tensor_stamp(t) for t in (self.weight, self.weight_scale))
        cache = self.__dict__.setdefault("_eager_cache", {})
        if key not in cache or cache[key][0] != stamp:
            cache[key] = (stamp, build())
        return cache[key][1]

    def _int8_linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., K)`` -> ``(..., N)`` through ``torch._int_mm`` (int8 x int8 -> int32): the same integers the
        fake-quantized arithmetic multiplies, accumulated exactly, then scaled once per output column."""
        w = self.weight.flatten(1)
        wt, wsum = self._cached("gemm", lambda: (w.t().contiguous(), w.sum(dim=1, dtype=torch.int32)))
        scale, zero = self.input_scale.reshape(()).float(), int(self.input_zero_point)
        # the uint8 codes of fake quantization (round half to even of x * (1 / scale), plus the zero point), shifted
        # by -128 into int8: int8 codes with zero point z - 128
        q = (x.float() * (1.0 / scale)).round_().add_(zero - 128).clamp_(-128, 127).to(torch.int8)
        acc = torch._int_mm(q.reshape(-1, q.shape[-1]), wt)
        acc -= (zero - 128) * wsum  # sum_k (q_k - z') w_k = sum_k q_k w_k - z' sum_k w_k
        y = acc.float() * (scale * self.weight_scale)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        w = state_dict.get(prefix + "weight")
        if w is not None and w.dtype != torch.int8:
            raise ValueError(
                f"tensor {prefix}weight has dtype {w.dtype} but config.quantization declares {prefix[:-1]!r} int8: "
                "the weights are a float checkpoint. Remove 'quantization' from config.json to load them as float, "
                "or quantize with `zoo quantize`."
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _act_buffers(module: nn.Module, name: str) -> None:
    module.register_buffer(f"{name}_scale", torch.ones(()))
    module.register_buffer(f"{name}_zero_point", torch.zeros((), dtype=torch.int32))


class Int8Linear(_Int8Module):
    """Linear with int8 weights (per output channel scales) and a uint8-quantized input."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        _act_buffers(self, "input")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _eager_int8(x):
            return self._int8_linear(x)
        x = fake_quant_act(x, self.input_scale, self.input_zero_point)
        if torch.onnx.is_in_onnx_export():
            # DequantizeLinear(int8 (in, out)) -> MatMul: the pattern ONNX Runtime fuses into MatMulIntegerToFloat
            y = x @ dequantize(self.weight.t(), self.weight_scale, axis=1)
            return y + self.bias if self.bias is not None else y
        return F.linear(x, dequantize(self.weight, self.weight_scale, 0), self.bias)


class Int8Conv2d(_Int8Module):
    """Conv2d with int8 weights (per output channel scales), a uint8-quantized input and, unless pointwise, output."""

    def __init__(self, conv: nn.Conv2d, pointwise: bool = False):
        super().__init__()
        self.pointwise = pointwise
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.register_buffer("weight", torch.zeros(conv.weight.shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(conv.out_channels))
        self.bias = nn.Parameter(torch.zeros(conv.out_channels)) if conv.bias is not None else None
        _act_buffers(self, "input")
        if not pointwise:
            _act_buffers(self, "output")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if _eager_int8(x):
            if self.pointwise:  # a Linear over channels: the int8 GEMM, channels-last
                return self._int8_linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            # torch eager has no int8 (depthwise) conv: the float weights are dequantized once, not on every call
            w = self._cached("float", lambda: dequantize(self.weight, self.weight_scale, 0))
            x = fake_quant_act(x, self.input_scale, self.input_zero_point)
            y = F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
            return fake_quant_act(y, self.output_scale, self.output_zero_point)
        x = fake_quant_act(x, self.input_scale, self.input_zero_point)
        if self.pointwise and torch.onnx.is_in_onnx_export():
            # channels-last MatMul on DequantizeLinear(int8 (C_in, C_out)): ONNX Runtime's MatMulIntegerToFloat, which
            # needs no output quantization (QLinearConv does); its optimizer cancels the permutes against neighbours
            w = dequantize(self.weight.flatten(1).t(), self.weight_scale, axis=1)
            y = x.permute(0, 2, 3, 1) @ w
            y = y + self.bias if self.bias is not None else y
            return y.permute(0, 3, 1, 2)
        y = F.conv2d(x, dequantize(self.weight, self.weight_scale, 0), self.bias, self.stride, self.padding,
                     self.dilation, self.groups)  # fmt: skip
        return y if self.pointwise else fake_quant_act(y, self.output_scale, self.output_zero_point)


class Int8Embedding(_Int8Module):
    """Embedding table stored as int8 rows with one float scale per row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.padding_idx = padding_idx
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # gather int8 rows and their scales, then scale: only the looked-up rows are dequantized
        return F.embedding(ids, self.weight).float() * F.embedding(ids, self.weight_scale[:, None])


def _int8_from_float(kind: str, m: nn.Module) -> nn.Module:
    if kind == "linear":
        return Int8Linear(m.in_features, m.out_features, m.bias is not None)
    if kind in ("conv", "pointwise"):
        return Int8Conv2d(m, pointwise=kind == "pointwise")
    return Int8Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx)


# --------------------------------------------------------------------------------------------- public API
def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def is_quantized(model: nn.Module) -> bool:
    """True for an int8 student (converted or loaded from an int8 checkpoint)."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "quantization", None)) or any(isinstance(m, _Int8Module) for m in model.modules())


def is_qat(model: nn.Module) -> bool:
    """True for a student prepared with ``prepare_qat`` (fake-quantized, not yet converted)."""
    return any(isinstance(m, (QATLinear, QATConv2d, QATEmbedding)) for m in model.modules())


def _exclude_match(name: str, exclude: Sequence[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def prepare_qat(student: nn.Module, observer: str = "ema", exclude: Sequence[str] = ("heads",)) -> nn.Module:
    """A copy of ``student`` with every Conv2d, Linear and Embedding fake-quantized (the original is untouched).

    Args:
        student: a float student.
        observer: how activation ranges follow training after calibration: ``ema`` (moving min / max) or ``lsq``
            (scale and zero point are learned parameters; keep them out of weight decay).
        exclude: module names (and their children) left in float; by default the task heads, the layer most
            sensitive to quantization and a negligible share of the weights.

    Calibrate the result with ``calibrate`` before evaluating it; ``convert_int8`` turns it into int8.
    """
    if is_quantized(student):
        raise ValueError(
            "this student is already quantized to int8 (config.quantization is set); quantize its float version."
        )
    if is_qat(student):
        raise ValueError("this student is already prepared for quantization-aware training (prepare_qat ran on it).")
    if observer not in OBSERVERS:
        raise ValueError(f"observer {observer!r}: choose one of {list(OBSERVERS)}.")
    tokenizer = getattr(student, "tokenizer", None)
    if tokenizer is not None:  # tokenizers are immutable here; share rather than deep-copy the Rust object
        student.tokenizer = None
    try:
        qat = copy.deepcopy(student)
    finally:
        if tokenizer is not None:
            student.tokenizer = tokenizer
    if tokenizer is not None:
        qat.tokenizer = tokenizer
    modules: dict[str, str] = {}
    for name, m in list(qat.named_modules()):
        if not name or _exclude_match(name, exclude):
            continue
        kind = _kind_of(m)
        if kind is None:
            continue
        _set_module(qat, name, _QAT[kind](m, observer))
        modules[name] = kind
    if not modules:
        raise ValueError(f"nothing to quantize in {type(student).__name__}: no Conv2d, Linear or Embedding layer.")
    qat.quant_scheme = {
        "format": QUANT_FORMAT,
        "version": QUANT_VERSION,
        "weights": {
            "dtype": "int8",
            "granularity": "per_channel",
            "symmetric": True,
            "range": [W_QMIN, W_QMAX],
            "embedding_range": [-EMBED_QMAX, EMBED_QMAX],
        },
        "activations": {
            "dtype": "uint8",
            "granularity": "per_tensor",
            "symmetric": False,
            "range": [A_QMIN, A_QMAX],
            "observer": observer,
            "where": "inputs of conv and linear layers, outputs of conv layers other than pointwise (1x1) ones",
        },
        "exclude": list(exclude),
        "modules": modules,
    }
    return qat


def act_quantizers(model: nn.Module) -> dict[str, ActQuant]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ActQuant)}


def _as_model_inputs(model: nn.Module, batch) -> dict:
    if isinstance(batch, (list, tuple)):  # raw samples
        batch = model.preprocess(list(batch))
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, max_batches: int | None = None) -> nn.Module:
    """Set every activation range of a fake-quantized student from the min / max over ``batches``.

    ``batches`` yields flat batches (dicts from ``student.preprocess``) or lists of raw samples. Ranges already set
    (a second calibration) are replaced. Returns the model, in eval mode.
    """
    quantizers = act_quantizers(model)
    if not quantizers:
        raise ValueError("calibrate: this model has no activation quantizer; run prepare_qat(student) first.")
    device = next(model.parameters()).device
    model.eval()
    for q in quantizers.values():
        q.observing = True
        q.seen.fill_(False)
    n = 0
    try:
        for batch in batches:
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in _as_model_inputs(model, batch).items()}
            model(**inputs)
            n += 1
            if max_batches is not None and n >= max_batches:
                break
    finally:
        for q in quantizers.values():
            q.observing = False
    if n == 0:
        raise ValueError("calibrate: no batch to calibrate on; pass a few batches of training data.")
    unseen = [name for name, q in quantizers.items() if not q.seen]
    for q in quantizers.values():
        if q.seen:
            q.set_range_from_observed()
    if unseen:
        warnings.warn(
            f"calibrate: {len(unseen)} activation quantizers saw no data (e.g. {unseen[:3]}): the calibration batches "
            "lack the modality they belong to. Calibrate on batches that carry every modality.",
            stacklevel=2,
        )
    return model


def convert_int8(model: nn.Module) -> nn.Module:
    """A new student with int8 weights and float scales as plain tensors, from a calibrated fake-quantized one.

    Its ``config.quantization`` records the scheme and the quantized layers, so ``save_pretrained`` /
    ``from_pretrained`` round-trip it; its eager outputs equal the fake-quantized model's in eval mode.
    """
    if is_quantized(model):
        raise ValueError("this student is already converted to int8.")
    scheme = getattr(model, "quant_scheme", None)
    if not is_qat(model) or scheme is None:
        raise ValueError("convert_int8 takes a student from prepare_qat (then calibrate / train it); got a float one.")
    missing = [name for name, q in act_quantizers(model).items() if not q.initialized]
    if missing:
        raise ValueError(
            f"activation quantizers {missing[:4]} have no range: calibrate(student, batches) on batches that carry "
            "every modality of the student before converting."
        )
    config = copy.deepcopy(model.config)
    config.quantization = copy.deepcopy(scheme)
    state = {}
    qat_modules = {name: m for name, m in model.named_modules() if name in scheme["modules"]}
    for key, value in model.state_dict().items():
        if not any(key.startswith(name + ".") for name in qat_modules):
            state[key] = value
    for name, m in qat_modules.items():
        state.update({f"{name}.{k}": v for k, v in m.int8_state().items()})
    device = next(model.parameters()).device
    converted = apply_quantization_scheme(type(model)(config), scheme)
    converted.load_state_dict(state, strict=True)
    if getattr(model, "tokenizer", None) is not None:
        converted.tokenizer = model.tokenizer
    return converted.to(device).eval()


def apply_quantization_scheme(model: nn.Module, scheme: dict) -> nn.Module:
    """Swap the layers ``scheme["modules"]`` names for empty int8 layers, in place (called by the student loader).

    The result has exactly the module structure and state_dict keys of a converted student, ready for
    ``load_state_dict``. A scheme of another format, or naming a layer the model lacks or of another type, is an
    error: the config and the weights belong to different students.
    """
    if not isinstance(scheme, dict) or scheme.get("format") != QUANT_FORMAT:
        found = scheme.get("format") if isinstance(scheme, dict) else type(scheme).__name__
        raise ValueError(f"config.quantization has format {found!r}; this version reads {QUANT_FORMAT!r}.")
    if scheme.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"config.quantization version {scheme.get('version')!r}; this version of distill-zoo reads versions "
            f"{list(READABLE_VERSIONS)}. Upgrade distill-zoo to load it."
        )
    modules = scheme.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise ValueError(
            "config.quantization has no 'modules' mapping (layer name -> linear / conv / pointwise / embedding)."
        )
    for name, kind in modules.items():
        if kind not in _KINDS:
            raise ValueError(f"config.quantization.modules[{name!r}] = {kind!r}; expected one of {list(_KINDS)}.")
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"config.quantization lists layer {name!r}, which this architecture does not have: the config was "
                "edited or belongs to another student."
            ) from None
        if type(m) is not _KINDS[kind] or (kind == "pointwise" and not is_pointwise(m)):
            found = "non-pointwise Conv2d" if type(m) is nn.Conv2d else type(m).__name__
            raise ValueError(f"config.quantization says {name!r} is a {kind} layer, but it is a {found}.")
        _set_module(model, name, _int8_from_float(kind, m))
    return model


def quantization_error_loss(
    quant_logits: torch.Tensor, float_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(float || fake-quantized) of the logits, times T^2: distils the float student into its quantized copy."""
    t = float(temperature)
    log_q = F.log_softmax(quant_logits / t, dim=-1)
    log_p = F.log_softmax(float_logits.detach() / t, dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * t * t


def quantize_student(student: nn.Module, batches: Iterable, observer: str = "ema", max_batches: int | None = None):
    """Post-training quantization in one call: prepare_qat -> calibrate on ``batches`` -> convert_int8.

    NaN or infinite weights are refused first (their scales would poison every int8 layer)."""
    check_finite(student.state_dict(), "quantize")
    return convert_int8(calibrate(prepare_qat(student, observer=observer), batches, max_batches=max_batches))


# --------------------------------------------------------------------------------------------------- CLI
