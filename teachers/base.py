"""The teacher interface every adapter implements, and the output it returns.

A teacher is called on a list of raw samples (the batch contract of ``zoo.modalities``)::

    out = teacher(samples)                       # = teacher.forward_inputs(teacher.preprocess(samples))
    out.logits    # (B, C) or None
    out.features  # {"layer.3": (B, N, D), "stage.2": (B, C, H, W), ...}
    out.embeds    # (B, D) or None
    out.mask      # (B,) bool: which samples carry this teacher's modality

The adapter runs the model only on the samples that carry its modality and scatters the results back into
``B`` rows; rows of the other samples are zeros and ``mask`` is False there. Teachers are frozen, stay in eval
mode (``train()`` is a no-op) and run under ``torch.no_grad`` (not ``inference_mode``: inference tensors cannot
be saved for the student's backward pass, which a KD loss does with its target).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.modalities.audio import to_mono_waveform
from zoo.modalities.image import match_channels, to_chw_float


@dataclass
class TeacherOutput:
    """What a teacher returns for a batch; every tensor has the batch as its first dimension.

    Args:
        logits: (B, C) classification logits, or similarity logits for CLIP-style pairs.
        features: layer name -> (B, N, D) tokens, (B, C, H, W) maps or (B, D) pooled features.
        embeds: (B, D) pooled embedding (sentence / image / audio embedding).
        mask: (B,) bool, True where the sample carries this teacher's modality.
    """

    logits: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    embeds: Tensor | None = None
    mask: Tensor | None = None

    def to(self, device: torch.device | str) -> TeacherOutput:
        """The same output with every tensor moved to ``device``."""

        def mv(t):
            return None if t is None else t.to(device, non_blocking=True)

        return TeacherOutput(
            mv(self.logits), {k: mv(v) for k, v in self.features.items()}, mv(self.embeds), mv(self.mask)
        )


def hash_json(obj: Any) -> str:
    """sha256 hex digest of ``obj`` as canonical JSON (sorted keys; non-JSON values by their repr)."""
    text = json.dumps(obj, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


_FILE_HASHES: dict[tuple, str] = {}


def hash_files(paths: Sequence[str | os.PathLike]) -> str:
    """sha256 over the contents of ``paths`` (in sorted order), memoised on (path, size, mtime).

    A file in the Hugging Face cache is a symlink to a blob named by its sha256 (for LFS files), so its
    content hash is read from the name instead of re-reading gigabytes.
    """
    digest = hashlib.sha256()
    for path in sorted(os.fspath(p) for p in paths):
        real = os.path.realpath(path)
        stat = os.stat(real)
        key = (real, stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_HASHES:
            blob = os.path.basename(real)
            if os.path.basename(os.path.dirname(real)) == "blobs" and len(blob) == 64:
                _FILE_HASHES[key] = blob
            else:
                with open(real, "rb") as f:
                    _FILE_HASHES[key] = hashlib.file_digest(f, "sha256").hexdigest()
        digest.update(_FILE_HASHES[key].encode())
    return digest.hexdigest()


def to_pil_rgb(image, sample_id: Any):
    """One image in any form ``zoo.modalities.image`` accepts -> RGB ``PIL.Image`` for a teacher's processor.

    Float arrays and tensors (0-1) are rounded to uint8, which is what the teachers' processors were built for.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    try:
        t = match_channels(to_chw_float(image, sample_id), 3)
    except (TypeError, ValueError) as e:
        raise type(e)(f"teacher input: {e}") from e
    arr = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def waveform_at(audio, sample_rate: int, sample_id: Any) -> np.ndarray:
    """One audio sample ``{"array", "sampling_rate"}`` -> mono float32 waveform resampled to ``sample_rate``."""
    import torchaudio.functional as AF

    wave, sr = to_mono_waveform(audio, sample_id)
    if sr != sample_rate:
        wave = AF.resample(wave, sr, sample_rate)
    return wave.numpy()


def masked_mean(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of (B, N, D) tokens, counting only positions where ``mask`` (B, N) is nonzero."""
    if mask is None:
        return tokens.mean(1)
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)


def _autocast_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    if value in (None, "none", "fp32", "float32"):
        return None
    if value in (torch.bfloat16, "bf16", "bfloat16"):
        return torch.bfloat16
    if value in (torch.float16, "fp16", "float16"):
        return torch.float16
    raise ValueError(f"autocast {value!r}: expected None, 'bf16' or 'fp16'.")


class Teacher(nn.Module):
    """Base of every teacher adapter: frozen model + its own preprocessing + identity.

    Subclasses implement ``_preprocess(values, ids) -> dict of tensors`` for the samples that carry the
    modality and ``_forward(inputs, layers, pool) -> TeacherOutput`` for those rows; this class handles
    masks, devices, no_grad, autocast and the fingerprint.

    Attributes:
        modality: "text", "image", "audio" or "image-text" (CLIP pairs).
        name: model id (hub id or folder name).
        num_classes, id2label: the classifier's classes, or None for encoders.
        feature_layers: names accepted by ``layers=`` ("layer.3", "stage.2", ...).
        preprocess_hash: sha256 of the preprocessing settings (processor config, lengths, sizes).
        fingerprint: sha256 of the adapter, the model id, its revision / weights hash, its config and
            ``preprocess_hash``; equal fingerprints mean equal outputs for equal inputs.
        similarity_scale: for CLIP pairs, logits = scale * image_embeds @ text_embeds.T (else None).
    """

    similarity_scale: float | None = None

    def __init__(
        self,
        model: nn.Module,
        *,
        modality: str,
        name: str,
        num_classes: int | None,
        id2label: dict[int, str] | None,
        feature_layers: Sequence[str],
        preprocess_config: dict,
        identity: dict,
        autocast: torch.dtype | str | None = None,
    ):
        super().__init__()
        self.model = model
        self.modality = modality
        self.name = name
        self.num_classes = num_classes
        self.id2label = id2label
        self.feature_layers = list(feature_layers)
        self.autocast_dtype = _autocast_dtype(autocast)
        self.preprocess_config = preprocess_config
        self.preprocess_hash = hash_json(preprocess_config)
        # What the fingerprint covers, kept readable for the cache manifest.
        self.identity = {
            "adapter": type(self).__name__,
            **identity,
            "autocast": str(self.autocast_dtype),
            "preprocess_hash": self.preprocess_hash,
        }
        self.fingerprint = hash_json(self.identity)
        self.label_order: list[int] | None = None  # data class i is the teacher's class label_order[i]
        for p in self.model.parameters():  # (ScriptModules lack requires_grad_)
            p.requires_grad_(False)
        super().train(False)

    def relabel(self, order: list[int]) -> None:
        """Reorder the logits so column i is the teacher's class ``order[i]`` (the data's label order)."""
        self.label_order = list(order)
        if self.id2label:
            names = {int(k): v for k, v in self.id2label.items()}
            self.id2label = {i: names[j] for i, j in enumerate(order)}
        self.identity = {**self.identity, "label_order": self.label_order}
        self.fingerprint = hash_json(self.identity)  # reordered outputs are other outputs for the cache

    def train(self, mode: bool = True) -> Teacher:
        """Teachers always stay in eval mode (dropout off, batch-norm statistics frozen)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.model.parameters():
            return t.device
        for t in self.model.buffers():
            return t.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, modality={self.modality!r}, num_classes={self.num_classes}"

    # -- to implement -------------------------------------------------------------------------------------
    def _values(self, sample: dict) -> Any:
        """This teacher's input in one raw sample, or None when the sample lacks the modality."""
        return sample.get(self.modality)

    def _preprocess(self, values: list, ids: list) -> dict[str, Tensor]:
        raise NotImplementedError

    def _forward(self, inputs: dict[str, Tensor], layers: list[str], pool: bool) -> TeacherOutput:
        raise NotImplementedError

    def _pool(self, name: str, value: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """(B, N, D) tokens or (B, C, H, W) maps -> (B, D); subclasses mask padding tokens."""
        if value.dim() == 4:
            return value.mean((2, 3))
        if value.dim() == 3:
            return value.mean(1)
        return value

    # -- the interface --------------------------------------------------------------------------------------
    def carries(self, sample: dict) -> bool:
        """Whether ``sample`` carries this teacher's modality."""
        return self._values(sample) is not None

    def truncated(self, samples: Sequence[dict]) -> int:
        """How many of ``samples`` this teacher's preprocessing cuts (text past its ``max_length``); 0 when it cuts
        nothing (images are resized, not cut)."""
        return 0

    def preprocess(self, samples: Sequence[dict]) -> dict[str, Tensor]:
        """Raw samples -> model inputs for the samples that carry the modality, plus ``mask`` (B,) bool."""
        if isinstance(samples, dict):
            raise TypeError("teacher inputs: pass a list of raw sample dicts, not one dict.")
        values = [self._values(s) for s in samples]
        present = [v is not None for v in values]
        idx = [i for i, p in enumerate(present) if p]
        inputs = self._preprocess([values[i] for i in idx], [samples[i].get("id", i) for i in idx]) if idx else {}
        inputs["mask"] = torch.tensor(present, dtype=torch.bool)
        return inputs

    def _check_layers(self, layers: Sequence[str] | None) -> list[str]:
        if layers is None:
            return list(self.feature_layers)
        if isinstance(layers, str):
            layers = [layers]
        unknown = [n for n in layers if n not in self.feature_layers]
        if unknown:
            raise ValueError(f"teacher {self.name!r} has no feature layer {unknown}; available: {self.feature_layers}.")
        return list(layers)

    def forward_inputs(
        self, inputs: dict[str, Tensor], layers: Sequence[str] | None = None, pool: bool = False
    ) -> TeacherOutput:
        """Model inputs from ``preprocess`` -> ``TeacherOutput`` for the whole batch.

        Args:
            inputs: the dict ``preprocess`` returned.
            layers: feature layers to return (default: all of ``feature_layers``; ``[]`` for none).
            pool: pool each feature to (B, D) with the teacher's pooling (masked mean over tokens).
        """
        layers = self._check_layers(layers)
        mask = inputs["mask"]
        device = self.device
        model_inputs = {k: v.to(device) for k, v in inputs.items() if k != "mask"}
        if not bool(mask.any()):
            raise ValueError(f"teacher {self.name!r}: no sample of the batch carries modality {self.modality!r}.")
        autocast = (
            torch.autocast(device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            out = self._forward(model_inputs, layers, pool)
        if self.label_order is not None and out.logits is not None and self.similarity_scale is None:
            out.logits = out.logits[:, self.label_order]
        return _scatter(out, mask.to(device), pairwise=self.similarity_scale is not None)

    def forward(self, samples: Sequence[dict], layers: Sequence[str] | None = None, pool: bool = False):
        """``forward_inputs(preprocess(samples))``."""
        return self.forward_inputs(self.preprocess(samples), layers=layers, pool=pool)


class ComposedTeacher(nn.Module):
    """Base of a teacher made of several teachers of one modality (``parts``): cross-fitted folds, an ensemble.

    It has the teacher interface the trainer and the teacher cache use, with logits only (the parts' features live
    in different spaces); subclasses set ``parts`` and the identity, and implement ``forward``.
    """

    similarity_scale = None
    kind = "composed teacher"  # how errors name it
    logits_only_because = ""  # appended to the error when features are asked for

    @property
    def parts(self) -> Sequence[Teacher]:
        raise NotImplementedError

    def train(self, mode: bool = True):
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def carries(self, sample: dict) -> bool:
        return any(t.carries(sample) for t in self.parts)

    def truncated(self, samples: Sequence[dict]) -> int:
        """The most rows any part's preprocessing cuts (parts may carry their own tokenizers)."""
        return max(t.truncated(samples) for t in self.parts)

    def _check_layers(self, layers: Sequence[str] | None) -> list[str]:
        if layers:
            raise ValueError(
                f"{self.kind} {self.name!r} offers logits only{self.logits_only_because}; asked for "
                f"layers {list(layers)}."
            )
        return []


def _scatter(out: TeacherOutput, mask: Tensor, pairwise: bool = False) -> TeacherOutput:
    """Outputs for the present rows -> B rows (zeros where mask is False), as float32.

    With ``pairwise`` the logits are (P, P) similarities among the P present samples and become (B, B), zero in
    the rows and columns of absent samples (use ``logits[mask][:, mask]``).
    """
    batch = mask.shape[0]
    full = bool(mask.all())

    def place(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        t = t.float()
        if full:
            return t
        z = t.new_zeros((batch, *t.shape[1:]))
        z[mask] = t
        return z

    logits = out.logits
    if logits is not None and pairwise and not full:
        rows = mask.nonzero()[:, 0]
        z = logits.new_zeros((batch, batch)).float()
        z[rows[:, None], rows] = logits.float()
        logits = z
    else:
        logits = place(logits)
    return TeacherOutput(
        logits=logits, features={k: place(v) for k, v in out.features.items()}, embeds=place(out.embeds), mask=mask
    )
