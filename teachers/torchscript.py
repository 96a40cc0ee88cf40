"""Teacher adapters over TorchScript modules, including the real silero-vad voice-activity model.

``torch.jit.load`` reads TorchScript's own format (code + tensors), not pickled Python objects, so it is safe
to load. A TorchScript teacher is a ``*.pt`` / ``*.jit`` / ``*.ts`` file, or a folder holding one such file
and an optional ``teacher.json``::

    {"modality": "image", "num_classes": 10, "id2label": {"0": "zero", ...},
     "preprocess": {"image_size": 32, "mean": [...], "std": [...]}}

The module takes the preprocessed batch tensor (``pixel_values`` (B, 3, S, S) normalised, or a waveform
(B, T) at ``sample_rate`` cropped / zero-padded to ``clip_seconds``) and returns logits (B, C), a tuple
``(logits, embeds)``, or a dict with optional ``"logits"``, ``"embeds"`` and named features.

silero-vad (``load_teacher("silero-vad", modality="audio")``) runs chunk by chunk: 512 samples at 16 kHz
per step, with its recurrent state reset for every batch. It yields a speech probability per chunk; the
adapter turns that into clip logits over (non_speech, speech) from the mean speech probability, per-frame
logits as feature ``frame_logits`` (B, F, 2) and the decoder's LSTM state per frame as feature ``lstm``
(B, F, 128), whose mean over frames is ``embeds``.
"""

from __future__ import annotations

import glob
import json
import math
import os
import warnings

import torch
from torch import Tensor

from zoo.modalities.audio import AudioConfig, AudioPreprocessor
from zoo.modalities.image import ImageConfig, ImagePreprocessor
from zoo.teachers.base import Teacher, TeacherOutput, hash_files

TORCHSCRIPT_SUFFIXES = (".pt", ".jit", ".ts", ".torchscript")
SILERO_NAMES = ("silero-vad", "silero_vad")


def find_torchscript(path: str) -> str | None:
    """The TorchScript file at ``path`` (a file, or a folder holding exactly one), else None."""
    if os.path.isfile(path) and path.endswith(TORCHSCRIPT_SUFFIXES):
        return path
    if os.path.isdir(path):
        files = sorted(f for s in TORCHSCRIPT_SUFFIXES for f in glob.glob(os.path.join(path, "*" + s)))
        if len(files) > 1:
            raise ValueError(f"teacher folder {path!r} holds several TorchScript files {files}; keep one.")
        return files[0] if files else None
    return None


def silero_vad_path() -> str:
    """Path of the silero-vad TorchScript file shipped in the ``silero-vad`` PyPI package."""
    try:
        import importlib.resources

        path = str(importlib.resources.files("silero_vad.data").joinpath("silero_vad.jit"))
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            "silero-vad is not installed; pip install silero-vad (it ships the TorchScript model)."
        ) from e
    return path


def _jit_load(path: str):
    with warnings.catch_warnings():  # torch >= 2.9 deprecates jit in favour of export; the format still loads
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return torch.jit.load(path, map_location="cpu")
        except RuntimeError as e:
            raise ValueError(f"{path!r} is not a TorchScript file torch.jit.load can read: {e}") from e


def _image_preprocessor(pre: dict):
    cfg = ImageConfig(
        image_size=int(pre.get("image_size", 224)),
        patch_size=1,
        mean=list(pre.get("mean", (0.485, 0.456, 0.406))),
        std=list(pre.get("std", (0.229, 0.224, 0.225))),
    )
    return ImagePreprocessor(cfg), {"image_size": cfg.image_size, "mean": cfg.mean, "std": cfg.std}


def _audio_clipper(pre: dict):
    sr, seconds = int(pre.get("sample_rate", 16000)), float(pre.get("clip_seconds", 1.0))
    # patch_size=1: only the resample + crop/pad part of the preprocessor is used here.
    cfg = AudioConfig(sample_rate=sr, clip_seconds=seconds, patch_size=1)
    return AudioPreprocessor(cfg), {"sample_rate": sr, "clip_seconds": seconds}


class TorchScriptTeacher(Teacher):
    """A TorchScript module over one modality, with tensor preprocessing described by ``preprocess``.

    Args:
        module: the loaded ``torch.jit.ScriptModule``.
        modality: "image" or "audio" ("text" needs a tokenizer: use a transformers teacher).
        preprocess: image: ``image_size``, ``mean``, ``std``; audio: ``sample_rate``, ``clip_seconds``.
        num_classes, id2label: the classes of the logits, when the module returns logits.
        feature_layers: names of the extra tensors the module returns in its output dict.
    """

    def __init__(
        self,
        module,
        *,
        modality: str,
        name: str,
        identity: dict,
        preprocess: dict | None = None,
        num_classes: int | None = None,
        id2label: dict | None = None,
        feature_layers: list[str] | None = None,
        autocast=None,
    ):
        pre = dict(preprocess or {})
        if modality == "image":
            self.pre, pre_cfg = _image_preprocessor(pre)
        elif modality == "audio":
            self.pre, pre_cfg = _audio_clipper(pre)
        else:
            raise ValueError(
                f"TorchScript teachers take modality 'image' or 'audio'; got {modality!r}. For text, load a "
                "transformers teacher (it carries its tokenizer)."
            )
        super().__init__(
            module,
            modality=modality,
            name=name,
            num_classes=num_classes,
            id2label={int(k): str(v) for k, v in id2label.items()} if id2label else None,
            feature_layers=feature_layers or [],
            preprocess_config={"modality": modality, **pre_cfg},
            identity=identity,
            autocast=autocast,
        )

    def _preprocess(self, values, ids):
        if self.modality == "image":
            return {"pixel_values": self.pre(values)["pixel_values"]}
        return {"waveform": torch.stack([self.pre.clip(v, i) for v, i in zip(values, ids)])}

    def _forward(self, inputs, layers, pool):
        (x,) = inputs.values()
        out = self.model(x)
        logits = embeds = None
        features: dict[str, Tensor] = {}
        if isinstance(out, Tensor):
            logits = out
        elif isinstance(out, (tuple, list)):
            logits, embeds = out[0], out[1] if len(out) > 1 else None
        elif isinstance(out, dict):
            logits, embeds = out.get("logits"), out.get("embeds")
            features = {k: v for k, v in out.items() if k in layers}
        else:
            raise TypeError(
                f"TorchScript teacher {self.name!r} returned a {type(out).__name__}; expected a tensor, "
                "a tuple (logits, embeds) or a dict."
            )
        if logits is not None and self.num_classes is None:
            self.num_classes = int(logits.shape[-1])
        if pool:
            features = {k: self._pool(k, v, inputs) for k, v in features.items()}
        return TeacherOutput(logits=logits, features=features, embeds=embeds)


class SileroVADTeacher(Teacher):
    """silero-vad as an audio teacher: speech / non-speech logits per clip and per 32 ms frame.

    Clip logits are ``[log(1 - p), log(p)]`` with ``p`` the mean speech probability over the frames (the
    expected fraction of speech, a soft label); ``frame_logits`` (B, F, 2) are the same per frame and ``lstm``
    (B, F, 128) the decoder state after each frame. Audio is resampled to 16 kHz and cropped or zero-padded to
    ``clip_seconds`` rounded up to whole 512-sample frames.
    """

    SAMPLE_RATE = 16000
    FRAME = 512

    def __init__(self, module, *, name: str, identity: dict, clip_seconds: float = 1.0, autocast=None):
        frames = math.ceil(clip_seconds * self.SAMPLE_RATE / self.FRAME)
        self.pre, pre_cfg = _audio_clipper(
            {"sample_rate": self.SAMPLE_RATE, "clip_seconds": frames * self.FRAME / self.SAMPLE_RATE}
        )
        super().__init__(
            module,
            modality="audio",
            name=name,
            num_classes=2,
            id2label={0: "non_speech", 1: "speech"},
            feature_layers=["frame_logits", "lstm"],
            preprocess_config={"modality": "audio", "frame": self.FRAME, **pre_cfg},
            identity=identity,
            autocast=autocast,
        )
        self.frames = frames

    def _preprocess(self, values, ids):
        return {"waveform": torch.stack([self.pre.clip(v, i) for v, i in zip(values, ids)])}

    def _forward(self, inputs, layers, pool):
        wave = inputs["waveform"].float()  # (B, T); the LSTM state is fp32, so no autocast inside
        batch = wave.shape[0]
        self.model.reset_states()  # fresh state per batch (it re-creates zeros for this batch size)
        probs, states = [], []
        with torch.autocast(wave.device.type, enabled=False):
            for chunk in wave.view(batch, self.frames, self.FRAME).unbind(1):
                probs.append(self.model(chunk, self.SAMPLE_RATE)[:, 0])  # (B,)
                states.append(self.model._state[0].clone())  # (B, 128): LSTM h after this frame
        p = torch.stack(probs, 1).clamp(1e-6, 1 - 1e-6)  # (B, F)
        frame_logits = torch.stack([torch.log1p(-p), torch.log(p)], -1)  # (B, F, 2)
        clip_p = p.mean(1)
        logits = torch.stack([torch.log1p(-clip_p), torch.log(clip_p)], -1)  # (B, 2)
        lstm = torch.stack(states, 1)  # (B, F, 128)
        features = {"frame_logits": frame_logits, "lstm": lstm}
        features = {k: (v.mean(1) if pool else v) for k, v in features.items() if k in layers}
        return TeacherOutput(logits=logits, features=features, embeds=lstm.mean(1))


def _teacher_json(folder: str) -> dict:
    path = os.path.join(folder, "teacher.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e}).") from e


def load_torchscript(
    path: str, *, modality: str | None, name: str, autocast=None, **options
) -> TorchScriptTeacher | SileroVADTeacher:
    """A TorchScript teacher from a file or folder; silero-vad is recognised and wrapped as ``SileroVADTeacher``.

    ``options`` override ``teacher.json``: ``preprocess`` (dict), ``num_classes``, ``id2label``,
    ``feature_layers``; for silero-vad only ``clip_seconds``.
    """
    file = find_torchscript(path)
    if file is None:
        raise FileNotFoundError(f"{path!r} is not a TorchScript file nor a folder holding one (*.pt, *.jit, *.ts).")
    module = _jit_load(file)
    identity = {"model_id": name, "weights_sha256": hash_files([file])}
    if hasattr(module, "reset_states") and hasattr(module, "_model"):  # silero-vad's streaming wrapper
        if modality not in (None, "audio"):
            raise ValueError(f"silero-vad is an audio teacher; got modality {modality!r}.")
        unknown = set(options) - {"clip_seconds"}
        if unknown:
            raise TypeError(f"silero-vad teacher: unknown options {sorted(unknown)}; only clip_seconds is accepted.")
        return SileroVADTeacher(module, name=name, identity=identity, autocast=autocast, **options)
    spec = _teacher_json(os.path.dirname(file)) if os.path.isfile(path) else _teacher_json(path)
    spec.update(options)
    modality = modality or spec.pop("modality", None)
    spec.pop("modality", None)
    if modality is None:
        raise ValueError(
            f"TorchScript teacher {path!r}: pass modality= ('image' or 'audio') or put it in teacher.json."
        )
    unknown = set(spec) - {"preprocess", "num_classes", "id2label", "feature_layers"}
    if unknown:
        raise TypeError(f"TorchScript teacher {path!r}: unknown options {sorted(unknown)}.")
    return TorchScriptTeacher(module, modality=modality, name=name, identity=identity, autocast=autocast, **spec)
