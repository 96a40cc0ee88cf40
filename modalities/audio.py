"""Audio modality: resampling, fixed-length clips, log-mel spectrograms (torchaudio) and the conv stem.

Accepted inputs per sample (``None`` marks a sample without audio):
- ``{"array": waveform, "sampling_rate": sr}`` (the form ``datasets`` and our data loader produce);
- ``(waveform, sr)``.
``waveform`` is a numpy array or tensor shaped (T,), (C, T) or (T, C) with C <= 8 channels; several channels
are averaged to mono (documented and tested conversion). Integer PCM is scaled to -1..1. The clip is resampled to
the student's rate, then cropped (from the start) or zero-padded to ``clip_seconds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zoo.modalities._stem import ConvPatchStem
from zoo.modalities.base import Modality, register_modality

MAX_CHANNELS = 8


@dataclass
class AudioConfig:
    """Audio stem settings.

    Args:
        sample_rate: rate the student works at; inputs are resampled to it.
        clip_seconds: clips are cropped or zero-padded to this length.
        n_mels, n_fft, hop_length: log-mel spectrogram settings.
        patch_size: stride of the conv stem over (mel, frame); must divide n_mels and the frame count.
        stem_channels: width of the stem's intermediate convs.
        log_offset, log_mean, log_std: log(mel + offset), then (x - mean) / std.
    """

    sample_rate: int = 16000
    clip_seconds: float = 1.0
    n_mels: int = 32
    n_fft: int = 400
    hop_length: int = 160
    patch_size: int = 4
    stem_channels: int = 32
    log_offset: float = 1e-6
    log_mean: float = -6.0
    log_std: float = 5.0

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def num_frames(self) -> int:
        return self.clip_samples // self.hop_length

    def __post_init__(self):
        if self.n_mels % self.patch_size or self.num_frames % self.patch_size:
            raise ValueError(
                f"audio patch_size {self.patch_size} must divide n_mels ({self.n_mels}) and the frame count "
                f"({self.num_frames} = clip_seconds * sample_rate // hop_length); change clip_seconds or hop_length."
            )


def to_mono_waveform(sample, index: int) -> tuple[torch.Tensor, int]:
    """One audio sample in any accepted form -> (mono float waveform (T,), sample rate)."""
    if isinstance(sample, dict):
        if "array" not in sample or "sampling_rate" not in sample:
            raise KeyError(
                f"audio of sample {index} is a dict with keys {sorted(sample)}; expected 'array' and 'sampling_rate'."
            )
        wave, sr = sample["array"], sample["sampling_rate"]
    elif isinstance(sample, (tuple, list)) and len(sample) == 2:
        wave, sr = sample
    else:
        raise TypeError(
            f"audio of sample {index} is a {type(sample).__name__}; expected {{'array': waveform, "
            "'sampling_rate': sr}} or (waveform, sr): the sample rate is required."
        )
    if not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"audio of sample {index} has sampling_rate {sr!r}; expected a positive integer in Hz.")
    if isinstance(wave, np.ndarray):
        if np.issubdtype(wave.dtype, np.integer):
            wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max)
        wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    elif isinstance(wave, torch.Tensor):
        wave = wave.float()
    else:
        raise TypeError(
            f"audio of sample {index} has a {type(wave).__name__} waveform; expected a numpy array or tensor."
        )
    if wave.dim() == 2:
        if wave.shape[0] <= MAX_CHANNELS < wave.shape[1] or wave.shape[0] <= wave.shape[1] <= MAX_CHANNELS:
            wave = wave.mean(0)  # (C, T): average channels to mono
        elif wave.shape[1] <= MAX_CHANNELS:
            wave = wave.mean(1)  # (T, C), as soundfile returns
        else:
            raise ValueError(
                f"audio of sample {index} has shape {tuple(wave.shape)}; expected (T,), (C, T) or (T, C) with C <= "
                f"{MAX_CHANNELS} channels."
            )
    elif wave.dim() != 1:
        raise ValueError(f"audio of sample {index} has shape {tuple(wave.shape)}; expected (T,), (C, T) or (T, C).")
    if wave.numel() == 0:
        raise ValueError(f"audio of sample {index} is empty (0 samples).")
    if not torch.isfinite(wave).all():
        raise ValueError(f"audio of sample {index} holds NaN or inf samples.")
    return wave, int(sr)


class AudioPreprocessor:
    """Raw waveforms -> ``input_features`` (B, n_mels, frames) log-mel, and ``audio_mask`` (B,)."""

    def __init__(self, config: AudioConfig):
        import torchaudio

        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels
        )

    def clip(self, sample, index: int = 0) -> torch.Tensor:
        """One sample -> mono waveform at the student's rate, cropped or padded to the clip length."""
        import torchaudio.functional as AF

        wave, sr = to_mono_waveform(sample, index)
        if sr != self.config.sample_rate:
            wave = AF.resample(wave, sr, self.config.sample_rate)
        n = self.config.clip_samples
        if wave.numel() >= n:
            return wave[:n]
        return torch.nn.functional.pad(wave, (0, n - wave.numel()))

    def truncated(self, audios: Sequence) -> int:
        """How many clips are longer than ``clip_seconds`` (their ends are cut)."""
        n = 0
        for i, a in enumerate(audios):
            if a is not None:
                wave, sr = to_mono_waveform(a, i)
                n += wave.numel() / sr > self.config.clip_seconds + 1e-9
        return n

    def __call__(self, audios: Sequence) -> dict[str, torch.Tensor]:
        cfg = self.config
        waves = torch.zeros(len(audios), cfg.clip_samples)
        present = [a is not None for a in audios]
        for i, a in enumerate(audios):
            if a is not None:
                waves[i] = self.clip(a, i)
        mel = self.mel(waves)[..., : cfg.num_frames]  # (B, n_mels, frames)
        feats = (torch.log(mel + cfg.log_offset) - cfg.log_mean) / cfg.log_std
        feats[~torch.tensor(present, dtype=torch.bool)] = 0.0
        return {"input_features": feats, "audio_mask": torch.tensor(present, dtype=torch.bool)}


class AudioStem(ConvPatchStem):
    """``input_features`` (B, n_mels, frames) -> tokens (B, n_mels/p * frames/p, D)."""

    def __init__(self, config: AudioConfig, embed_dim: int, act_layer=nn.GELU):
        p = config.patch_size
        grid = (config.n_mels // p, config.num_frames // p)
        super().__init__(1, config.stem_channels, embed_dim, p, grid, act_layer)
        self.config = config

    def forward(self, input_features: torch.Tensor):
        expected = (self.config.n_mels, self.config.num_frames)
        if input_features.dim() != 3 or tuple(input_features.shape[1:]) != expected:
            raise ValueError(
                f"input_features has shape {tuple(input_features.shape)}; this student expects (batch, {expected[0]}, "
                f"{expected[1]}) log-mel frames. Run the audio through the student's preprocess() first."
            )
        return super().forward(input_features.unsqueeze(1))


def example_audio(config: AudioConfig, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """White noise through the preprocessing (log-mel features)."""
    clip = {"array": None, "sampling_rate": config.sample_rate}
    clips = [
        {**clip, "array": (0.1 * rng.standard_normal(config.clip_samples)).astype(np.float32)}
        for _ in range(batch_size)
    ]
    return AudioPreprocessor(config)(clips)


AUDIO = register_modality(
    Modality(
        name="audio",
        order=2,
        config=AudioConfig,
        preprocessor=AudioPreprocessor,
        stem=AudioStem,
        input_keys=("input_features", "audio_mask"),
        pipeline_tag="audio-classification",
        example=example_audio,
    )
)
