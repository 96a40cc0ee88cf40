"""Synthesise the quickstart dataset's spoken digits with espeak-ng and store them compactly.

Run once by a maintainer (``apt-get install espeak-ng``); the output is committed so that no user needs
espeak-ng: ``zoo/assets/quickstart/digits_audio.flac`` (every clip end to end, 8 kHz mono 16-bit FLAC;
the loader resamples to 16 kHz) and
``zoo/assets/quickstart/digits_audio.json`` (one entry per clip: digit, speaker, voice, speed, pitch, start, length).

A "speaker" is one seeded draw of (language, espeak voice variant, words per minute, pitch); each speaker says
all ten digits, so the data loader can keep whole speakers out of training. Noise, gain and time shifts are
added later, at load time (zoo.data), not here. The output is deterministic for a given espeak-ng build.

    OMP_NUM_THREADS=1 python scripts/make_quickstart_audio.py [--speakers 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

OUT_DIR = Path(__file__).resolve().parent.parent / "zoo" / "assets" / "quickstart"
SAMPLE_RATE = 8000  # telephone band: enough to tell digits apart, half the bytes of 16 kHz
MAX_SECONDS = 0.9  # clips must fit, with room to shift, in the 1 s window the audio students use
# Languages whose espeak-ng voices say a digit character as that language's number word.
LANGUAGES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "de", "fr-fr", "es", "it"]
LANGUAGE_WEIGHTS = [3, 3, 1, 1, 2, 2, 2, 1]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3"]


def synthesise(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Return (mono float32 waveform, sample rate) of espeak-ng saying ``text``."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    array, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return array, rate


def trim(wave: np.ndarray, rate: int, threshold: float = 0.02, pad_seconds: float = 0.02) -> np.ndarray:
    """Cut leading and trailing silence (below ``threshold`` x peak), keeping a short pad either side."""
    loud = np.flatnonzero(np.abs(wave) > threshold * np.abs(wave).max())
    pad = int(pad_seconds * rate)
    return wave[max(loud[0] - pad, 0) : loud[-1] + pad + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install -y espeak-ng")
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    clips, index, start = [], [], 0
    for speaker in range(args.speakers):
        language = rng.choices(LANGUAGES, LANGUAGE_WEIGHTS)[0]
        voice = f"{language}+{rng.choice(VARIANTS)}"
        speed, pitch = rng.randint(120, 230), rng.randint(20, 80)
        for digit in range(10):
            wave, rate = synthesise(str(digit), voice, speed, pitch)
            wave = AF.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
            wave = trim(wave, SAMPLE_RATE)
            if len(wave) > MAX_SECONDS * SAMPLE_RATE:  # a slow voice: say it faster rather than crop it
                wave, rate = synthesise(
                    str(digit), voice, int(speed * len(wave) / (MAX_SECONDS * SAMPLE_RATE)) + 10, pitch
                )
                wave = trim(AF.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy(), SAMPLE_RATE)
                wave = wave[: int(MAX_SECONDS * SAMPLE_RATE)]
            wave = 0.9 * wave / np.abs(wave).max()
            clips.append(wave)
            index.append(
                {
                    "digit": digit,
                    "speaker": speaker,
                    "voice": voice,
                    "speed": speed,
                    "pitch": pitch,
                    "start": start,
                    "length": len(wave),
                }
            )
            start += len(wave)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    flac, meta = args.out_dir / "digits_audio.flac", args.out_dir / "digits_audio.json"
    # Atomic writes: a tmp file in the same folder, then os.replace.
    sf.write(f"{flac}.tmp", np.concatenate(clips), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(f"{flac}.tmp", flac)
    info = {"sample_rate": SAMPLE_RATE, "generator": "espeak-ng", "seed": args.seed, "clips": index}
    Path(f"{meta}.tmp").write_text(json.dumps(info, separators=(",", ":")) + "\n")
    os.replace(f"{meta}.tmp", meta)
    seconds = start / SAMPLE_RATE
    print(
        f"{len(clips)} clips, {seconds:.1f} s: {flac.stat().st_size / 1e6:.2f} MB flac, "
        f"{meta.stat().st_size / 1e3:.0f} kB index"
    )


if __name__ == "__main__":
    main()
