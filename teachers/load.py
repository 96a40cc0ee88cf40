"""``load_teacher``: one entry point that turns a hub id or a local path into a teacher adapter.

A hub id is first resolved to a local snapshot folder (``huggingface_hub.snapshot_download``, safetensors,
JSON and tokenizer files only, never pickles), then loaded by exactly the code that loads a local folder.
Offline (``HF_HUB_OFFLINE=1`` or no network) only snapshots already in the local cache resolve; anything else
fails with a message that says how to pass a local folder instead.

``kind="auto"`` reads the folder: a TorchScript file -> torchscript (silero-vad recognised), a timm
``config.json`` (with ``architecture``) -> timm, a transformers ``config.json``: CLIP-style (text + vision
configs and a projection) -> clip, an ``*For{Sequence,Image,Audio}Classification`` architecture ->
classifier, anything else -> encoder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

from zoo.hub import is_offline, snapshot
from zoo.io import not_local, typo_hint
from zoo.teachers.base import Teacher
from zoo.teachers.crossfit import CROSSFIT_FILE, CrossFitTeacher, is_crossfit_folder
from zoo.teachers.ensemble import is_ensemble_folder, load_ensemble
from zoo.teachers.hf import CLASSIFIER_SUFFIXES, load_clip, load_hf_classifier, load_hf_encoder
from zoo.teachers.tfidf import is_tfidf_folder, load_tfidf
from zoo.teachers.timm_teacher import is_timm_folder, load_timm
from zoo.teachers.torchscript import SILERO_NAMES, find_torchscript, load_torchscript, silero_vad_path

KINDS = ("auto", "classifier", "encoder", "clip", "timm", "torchscript")
TEACHER_MODALITIES = ("text", "image", "audio", "image-text")
# Files a teacher needs from a hub repo; pickled weights (*.bin, *.pth) are never downloaded.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "1_Pooling/*"]


class TeacherOfflineError(OSError):
    """A hub id could not be resolved without the network."""


def _offline_message(repo_id: str, reason: str) -> str:
    return (
        f"{typo_hint(repo_id)}cannot load teacher {repo_id!r} from the Hugging Face Hub: {reason}. "
        "Fix the path if it is a typo, or pass a local folder: on a "
        f"machine with network, save it with `AutoModel...from_pretrained({repo_id!r}).save_pretrained(folder, "
        "safe_serialization=True)` plus its tokenizer / processor `.save_pretrained(folder)` (or "
        f"`hf download {repo_id} --local-dir folder`), copy the folder here and pass its path."
    )


def resolve_hub_id(repo_id: str, revision: str | None = None) -> tuple[str, str | None]:
    """Hub id -> (local snapshot folder, commit hash); a clear ``TeacherOfflineError`` when that needs a network."""
    offline = is_offline()
    try:
        folder = str(snapshot(repo_id, HUB_PATTERNS, revision=revision))
    except HFValidationError as e:
        raise FileNotFoundError(f"teacher {repo_id!r} is neither a local path nor a valid hub id ({e}).") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"teacher {repo_id!r}: no such local path and no such hub repository ({e}).") from e
    except (LocalEntryNotFoundError, ConnectionError, OSError) as e:
        reason = "offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local cache" if offline else str(e)
        raise TeacherOfflineError(_offline_message(repo_id, reason)) from e
    commit = os.path.basename(os.path.normpath(folder))
    return folder, commit if len(commit) == 40 else revision


def detect_kind(path: str) -> tuple[str, str | None]:
    """(kind, modality or None) of a local teacher path, from its files."""
    if find_torchscript(path):
        return "torchscript", None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"teacher path {path!r} is not a folder nor a TorchScript file.")
    if is_timm_folder(path):
        return "timm", "image"
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(
            f"teacher folder {path!r} has no config.json and no TorchScript file; save the model there with "
            "save_pretrained (transformers), timm.models.save_for_hf (timm) or torch.jit.save (TorchScript)."
        )
    with open(cfg_path) as f:
        cfg = json.load(f)
    if "text_config" in cfg and "vision_config" in cfg and "projection_dim" in cfg:
        return "clip", None
    for arch in cfg.get("architectures") or []:
        for suffix, modality in CLASSIFIER_SUFFIXES.items():
            if arch.endswith(suffix):
                return "classifier", modality
    return "encoder", None


def _encoder_modality(path: str) -> str:
    has = {f for f in os.listdir(path)}
    if "preprocessor_config.json" in has:
        with open(os.path.join(path, "preprocessor_config.json")) as f:
            cfg = json.load(f)
        return "audio" if "sampling_rate" in cfg or "feature_extractor_type" in cfg else "image"
    if has & {"tokenizer.json", "tokenizer_config.json", "vocab.txt"}:
        return "text"
    raise ValueError(f"cannot tell the modality of encoder {path!r}; pass modality='text', 'image' or 'audio'.")


def load_teacher(
    path_or_id: str | os.PathLike,
    modality: str | None = None,
    kind: str = "auto",
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    autocast: str | None = None,
    device: str | None = None,
    **options,
) -> Teacher:
    """Load a frozen teacher by local path or hub id.

    Args:
        path_or_id: a local folder (or TorchScript file), a hub id (``"org/name"``), or ``"silero-vad"``
            for the silero-vad model installed from PyPI.
        modality: "text", "image", "audio" or "image-text" (CLIP pairs); inferred when the model says it.
        kind: "auto" or one of "classifier", "encoder", "clip", "timm", "torchscript".
        revision: hub branch, tag or commit.
        trust_remote_code: run code from the model repo (off unless you ask).
        autocast: "bf16" to run the teacher under bf16 autocast (outputs are returned as float32).
        device: where to put the teacher (default CPU).
        options: adapter settings: ``max_length`` (text), ``class_prompts`` (CLIP zero-shot image classifier),
            ``pooling`` / ``normalize`` (encoders), ``clip_seconds`` (silero-vad), ``preprocess`` /
            ``num_classes`` / ``id2label`` / ``feature_layers`` (TorchScript).
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {list(KINDS)}.")
    if modality is not None and modality not in TEACHER_MODALITIES:
        raise ValueError(f"modality {modality!r}: expected one of {list(TEACHER_MODALITIES)}.")
    path, revision_used = os.fspath(path_or_id), revision
    name = path.rstrip("/")
    if path in SILERO_NAMES:
        path, name = silero_vad_path(), "silero-vad"
    elif not os.path.exists(path):
        if path.startswith((".", "/", "~")) or path.count("/") > 1:  # a path, not an "org/name" hub id
            raise FileNotFoundError(f"teacher: {not_local(path)}.")
        path, revision_used = resolve_hub_id(path, revision)
    else:
        name = os.path.basename(os.path.abspath(path))
    if os.path.isdir(path) and is_crossfit_folder(path):  # fold teachers written by zoo distill's teacher training
        return load_crossfit(path, modality=modality, autocast=autocast, device=device, **options)
    if os.path.isdir(path) and is_ensemble_folder(path):  # written by zoo teacher ensemble:A,B
        member = {"modality": modality, "autocast": autocast, "device": device, **options}
        return load_ensemble(path, load_teacher, **member)
    if os.path.isdir(path) and is_tfidf_folder(path):  # written by zoo teacher tfidf
        if modality not in (None, "text"):
            raise ValueError(f"TF-IDF teacher {name!r} takes text; it cannot serve modality {modality!r}.")
        teacher = load_tfidf(path, name=name, autocast=autocast, **options)
        return teacher.to(device) if device else teacher
    detected, detected_modality = detect_kind(path)
    kind = detected if kind == "auto" else kind
    if detected_modality and modality and modality != detected_modality and kind == "classifier":
        raise ValueError(
            f"teacher {name!r} is a {detected_modality} classifier; it cannot serve modality {modality!r}."
        )
    common = {"name": name, "autocast": autocast}
    if kind == "torchscript":
        teacher = load_torchscript(path, modality=modality, **common, **options)
    elif kind == "timm":
        if modality not in (None, "image"):
            raise ValueError(f"timm teacher {name!r} takes images; got modality {modality!r}.")
        teacher = load_timm(path, revision=revision_used, **common, **options)
    else:
        hf = {**common, "revision": revision_used, "trust_remote_code": trust_remote_code}
        if kind == "clip":
            default = "image" if options.get("class_prompts") else "image-text"
            teacher = load_clip(path, modality=modality or default, **hf, **options)
        elif kind == "classifier":
            teacher = load_hf_classifier(path, modality=modality or detected_modality or "text", **hf, **options)
        elif kind == "encoder":
            teacher = load_hf_encoder(path, modality=modality or _encoder_modality(path), **hf, **options)
        else:
            raise ValueError(f"kind {kind!r} does not fit teacher {name!r} (detected: {detected}).")
    return teacher.to(device) if device else teacher


def load_crossfit(folder: str | os.PathLike, modality: str | None = None, **kwargs) -> CrossFitTeacher:
    """Load ``folder/crossfit.json`` and its ``fold-<k>`` teachers (each through ``load_teacher``)."""
    folder = Path(folder)
    try:
        spec = json.loads((folder / CROSSFIT_FILE).read_text(encoding="utf-8"))
        folds, assignment = int(spec["folds"]), spec["assignment"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{folder / CROSSFIT_FILE} is not a valid cross-fit description ({e}).") from e
    missing = [f"fold-{k}" for k in range(folds) if not (folder / f"fold-{k}").is_dir()]
    if missing:
        raise FileNotFoundError(f"cross-fitted teacher {folder} is missing {missing}.")
    teachers = [load_teacher(folder / f"fold-{k}", modality=modality, **kwargs) for k in range(folds)]
    return CrossFitTeacher(teachers, assignment, name=folder.name)
