"""int8 inference: the layers a converted student holds (int8 weights and float scales as plain tensors), the
conversion from a calibrated fake-quantized student (``convert_int8``) and the loader's rebuild of that structure
from ``config.quantization`` (``apply_quantization_scheme``). See ``zoo.compress.quant`` for the scheme.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from zoo.compress.qat import (
    _KINDS,
    QUANT_FORMAT,
    READABLE_VERSIONS,
    _set_module,
    act_quantizers,
    dequantize,
    fake_quant_act,
    is_pointwise,
    is_qat,
)


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


def is_quantized(model: nn.Module) -> bool:
    """True for an int8 student (converted or loaded from an int8 checkpoint)."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "quantization", None)) or any(isinstance(m, _Int8Module) for m in model.modules())


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
