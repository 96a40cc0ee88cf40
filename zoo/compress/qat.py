"""Fake quantization for quantization-aware training: the int8 scheme's primitives, the fake-quantized layers
(``QATLinear``, ``QATConv2d``, ``QATEmbedding``, ``ActQuant`` for activations) and their calibration.

``zoo.compress.quant`` describes the scheme and is the public entry point (``prepare_qat`` swaps these layers in);
``zoo.compress.int8`` holds what a trained fake-quantized student converts to.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

QUANT_FORMAT = "distill-zoo-int8"
QUANT_VERSION = 2  # 2 added the "pointwise" kind; version 1 schemes (every conv "conv") still load
READABLE_VERSIONS = (1, 2)
W_QMIN, W_QMAX = -63, 63  # GEMM weights: 7-bit, narrow symmetric (no -64, so w and -w quantize alike); see quant.py
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


# --------------------------------------------------------------------------------------------- public API
def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def is_qat(model: nn.Module) -> bool:
    """True for a student prepared with ``prepare_qat`` (fake-quantized, not yet converted)."""
    return any(isinstance(m, (QATLinear, QATConv2d, QATEmbedding)) for m in model.modules())


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
