"""8-bit quantization: quantization-aware training (fake quantization) and conversion to plain int8 tensors.

Scheme (the same in training, in the saved checkpoint and in the ONNX graph):
- weights of Conv2d (depthwise included), Linear and Embedding layers: int8, symmetric, per output channel (per row
  for embeddings), scale = max|w| / qmax of the channel (min-max, recomputed every step). qmax is 63 for the layers
  that run as integer GEMMs (conv, linear: 7-bit values in an int8 tensor, ONNX Runtime's ``reduce_range``) and 127
  for embedding rows (a lookup, no GEMM). Why 7 bits: on x86 without VNNI (AVX2, or AVX-512 without VNNI; the
  machine this was built on has AVX2) ONNX Runtime's U8S8 kernels add pairs of u8 x s8 products in int16
  (``vpmaddubsw``), which saturates once a pair's sum exceeds 32767 (255 * 127 * 2 does); with |w| <= 63 it cannot
  (255 * 63 * 2 = 32130). Measured on a fashion-mnist int8 student (2000 test images): 8-bit weights 83.15% in torch
  eager, 81.15% in ONNX Runtime; the same weights rounded to 7 bits 83.10% and 83.05%. Trained at 7 bits, the next
  fashion-mnist student gave 87.15% eager and 87.05% in ONNX Runtime, and the debian-sections one the same accuracy
  as at 8 bits (77.31%);
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

The fake-quantized layers and their calibration live in ``zoo.compress.qat``, the int8 layers, the conversion and the
loader's rebuild in ``zoo.compress.int8``; this module prepares a student for QAT and re-exports both halves.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.compress.int8 import (
    Int8Conv2d,
    Int8Embedding,
    Int8Linear,
    apply_quantization_scheme,
    convert_int8,
    is_quantized,
)
from zoo.compress.qat import (
    _QAT,
    A_QMAX,
    A_QMIN,
    EMBED_QMAX,
    OBSERVERS,
    QUANT_FORMAT,
    QUANT_VERSION,
    W_QMAX,
    W_QMIN,
    ActQuant,
    QATConv2d,
    QATEmbedding,
    QATLinear,
    _kind_of,
    _set_module,
    act_quantizers,
    calibrate,
    fake_quant_weight,
    is_qat,
    quantize_weight,
)
from zoo.io import check_finite

__all__ = [  # the public API, from the two halves and from here
    "ActQuant", "Int8Conv2d", "Int8Embedding", "Int8Linear", "QATConv2d", "QATEmbedding", "QATLinear",
    "act_quantizers", "apply_quantization_scheme", "calibrate", "convert_int8", "fake_quant_weight", "is_qat",
    "is_quantized", "prepare_qat", "quantization_error_loss", "quantize_student", "quantize_weight",
]  # fmt: skip


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
