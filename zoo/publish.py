"""Publishing students: ``zoo push DIR REPO_ID`` checks a student folder and uploads it with huggingface_hub.

Before anything goes up, ``validate_folder_for_push`` proves the folder is complete and loads back: config.json
and model.safetensors rebuild the student strictly, the card parses and names the library, metrics.json is
valid, and no pickled file (.bin, .pt, .pkl, ...) is present. Only the files it lists are uploaded: the student,
the run's other students in subfolders (raw_student/, pruned/, int8/), its card, metrics and plots; resume
checkpoints, the teacher cache and teachers trained for the run stay local. Loading
from the hub is ``zoo.load(hub_id)`` (see ``zoo.hub.resolve_model_folder``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from zoo.bench import read_metrics
from zoo.cards import CARD_MARKER, CARD_NAME, student_subfolders, write_card
from zoo.students import load_student

UPLOAD_PATTERNS = ("*.json", "*.jsonl", "*.safetensors", "*.md", "*.png", "*.txt", "*.model", "*.onnx")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz")


def validate_folder_for_push(folder: str | os.PathLike) -> list[str]:
    """Check that ``folder`` is a complete student that loads back; return the files (relative paths) to upload.

    Raises ValueError / FileNotFoundError naming the file at fault and how to fix it.
    """
    from fnmatch import fnmatch

    from huggingface_hub import ModelCard

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass a student folder written by save_pretrained.")
    # the student's own files and the run's other students; checkpoints, caches and teachers stay local
    students = [folder, *student_subfolders(folder)]
    files = [p.name for p in folder.iterdir() if p.is_file()]
    files += [p.relative_to(folder).as_posix() for d in students[1:] for p in d.rglob("*") if p.is_file()]
    files = sorted(f for f in files if not any(part.startswith(".") for part in f.split("/")))  # tmp files
    pickled = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise ValueError(
            f"{folder} holds pickled or raw-array files {pickled}; only safetensors weights are published. "
            "Remove them (a student is config.json + model.safetensors)."
        )
    for d in students:
        load_student(d)  # strict: missing, extra or mis-shaped tensors are errors naming the file
    card_path = folder / CARD_NAME
    if not card_path.exists():
        raise FileNotFoundError(f"{card_path} is missing; write the model card with `zoo card {folder}`.")
    try:
        card = ModelCard.load(card_path)
    except Exception as e:  # huggingface_hub raises ValueError or yaml errors for a broken header
        raise ValueError(f"{card_path} is not a valid model card ({e}); regenerate it with `zoo card {folder}`.") from e
    if CARD_MARKER not in card.text or card.data.library_name != "distill-zoo":
        raise ValueError(
            f"{card_path} is not a distill-zoo model card (no results from metrics.json); "
            f"write it with `zoo card {folder}` (it needs the run's metrics.json)."
        )
    read_metrics(folder)  # invalid JSON is an error naming the file
    for f in files:
        if f.endswith(".json"):
            try:
                json.loads((folder / f).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{folder / f} is not valid JSON ({e}); re-save the student.") from e
    return [f for f in files if any(fnmatch(Path(f).name, p) for p in UPLOAD_PATTERNS)]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload a student folder to the hub repo ``repo_id`` (created if needed); returns the commit URL.

    When the folder holds a metrics.json, its card is regenerated first so its usage code loads ``repo_id``.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = Path(folder)
    if (folder / "metrics.json").exists():
        write_card(folder, repo_id=repo_id)
    files = validate_folder_for_push(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=message or f"Upload {repo_id} with distill-zoo",
            allow_patterns=files,
        )
    except OfflineModeIsEnabled as e:
        raise ConnectionError(
            f"cannot push to {repo_id!r}: HF_HUB_OFFLINE is set. Unset it on a machine with network and log in "
            "(`hf auth login` or HF_TOKEN)."
        ) from e
    except HfHubHTTPError as e:
        raise ConnectionError(f"cannot push to {repo_id!r}: {e}. Check the repo id, your token and its rights.") from e
    except OSError as e:  # connection errors surface as OSError subclasses
        raise ConnectionError(f"cannot push to {repo_id!r}: {e}.") from e
    return getattr(commit, "commit_url", None) or str(commit)
