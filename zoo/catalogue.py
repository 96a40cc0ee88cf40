"""The zoo's catalogue of published students: ``model_cards/catalogue.json`` and a card per student.

Each entry names a student (``hybrid-tiny-text``), its hub id, what it takes and predicts, and headline metrics
copied from the run's metrics.json. ``zoo.load(name)`` and ``HybridStudent.from_pretrained(name)`` accept a catalogue
name (``zoo.hub.resolve_model_folder``).

An entry with ``"folder": "<name>"`` ships its weights: ``model_cards/<name>/`` holds config.json, model.safetensors
and the tokenizer files, installed with the package (package data), so the name loads offline with an empty HF
cache. Online, the hub id is tried first and the shipped folder is the fallback (``shipped_folder``).

Add a student from a finished run (the card is regenerated to load the hub id and copied with its plots;
``--ship`` copies the weights in too)::

    zoo catalogue add RUN_DIR --name distill-zoo/hybrid-tiny-text --ship
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from zoo.bench import read_metrics
from zoo.cards import (
    CARD_NAME,
    MODEL_CARDS_DIR,
    NA,
    build_card,
    final_model_key,
    fmt_ms,
    fmt_params,
    fmt_pct,
    safetensors_params,
)
from zoo.io import atomic_path, atomic_write_json, atomic_write_text
from zoo.pretrained_card import EVALUATION_NAME, PRETRAINING_NAME, build_pretrained_card
from zoo.runs import METRICS_NAME

CATALOGUE_PATH = MODEL_CARDS_DIR / "catalogue.json"
DEFAULT_ORG = "distill-zoo"
HEADLINE_KEYS = ("accuracy", "latency_ms", "size_bytes", "params")
SHIPPED_FILES = ("config.json", "model.safetensors")
# what a shipped folder holds besides SHIPPED_FILES (the tokenizer); package data must include these patterns
SHIPPED_EXTRA = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def load_catalogue(path: str | os.PathLike | None = None) -> list[dict]:
    """The catalogue's entries (an empty list when the file does not exist)."""
    path = Path(path or CATALOGUE_PATH)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from git.") from e
    students = data.get("students") if isinstance(data, dict) else None
    if not isinstance(students, list) or not all(
        isinstance(s, dict) and "name" in s and "hub_id" in s for s in students
    ):
        raise ValueError(f"{path} must hold {{'students': [{{'name': ..., 'hub_id': ..., ...}}]}}.")
    return students


def find(name: str, path: str | os.PathLike | None = None) -> dict | None:
    """The catalogue entry whose name or hub id is ``name`` (case-insensitive), or None."""
    key = str(name).strip().lower()
    for entry in load_catalogue(path):
        if key in (entry["name"].lower(), entry["hub_id"].lower()):
            return entry
    return None


def hub_id_for(name: str) -> str:
    """The hub id of a catalogue name; any other string is returned unchanged (a hub id or a path)."""
    entry = find(name) if isinstance(name, str) and "\n" not in name else None
    return entry["hub_id"] if entry else name


def shipped_folder(entry: dict, path: str | os.PathLike | None = None) -> Path | None:
    """The folder of weights shipped with an entry (``"folder"``, relative to the catalogue file), or None when the
    entry ships none. A shipped folder without config.json and model.safetensors is an error: the package is broken."""
    if not entry.get("folder"):
        return None
    folder = Path(path or CATALOGUE_PATH).parent / entry["folder"]
    missing = [f for f in SHIPPED_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the catalogue entry {entry['name']!r} ships its weights in {folder}, which is missing {missing}; "
            "reinstall distill-zoo (or restore model_cards/ from git)."
        )
    return folder


def _split_name(name: str, hub_id: str | None) -> tuple[str, str]:
    if "/" in name:
        org, short = name.split("/", 1)
        return short, hub_id or f"{org}/{short}"
    return name, hub_id or f"{DEFAULT_ORG}/{name}"


def add_from_run(
    run_dir: str | os.PathLike,
    name: str,
    hub_id: str | None = None,
    *,
    ship: bool = False,
    catalogue_path: str | os.PathLike | None = None,
    cards_dir: str | os.PathLike | None = None,
) -> dict:
    """Record a finished run as a published student: its card (loading ``hub_id``) and headline metrics.

    ``name`` is ``org/short-name`` or ``short-name`` (org defaults to distill-zoo). Writes
    ``<cards_dir>/<short-name>/README.md`` with the run's plots beside it and replaces the entry of the same
    name in the catalogue JSON. ``ship`` copies the weights (config.json, model.safetensors, tokenizer files,
    pretraining.json) into that folder too, so the name loads offline from the installed package; a folder without
    metrics.json (a pretraining output) can only be shipped; its card comes from pretraining.json and, when there,
    evaluation.json (``zoo.pretrained_card.build_pretrained_card``). Returns the entry.
    """

    run_dir = Path(run_dir)
    has_metrics = (run_dir / METRICS_NAME).exists()
    if not (run_dir / "config.json").exists() or not (has_metrics or ship):
        raise FileNotFoundError(
            f"{run_dir} needs config.json and metrics.json; pass the output folder of `zoo distill` or `zoo finetune` "
            "(or a pretrained folder with --ship)."
        )
    short, hub_id = _split_name(name, hub_id)
    cards_dir = Path(cards_dir or MODEL_CARDS_DIR)
    catalogue_path = Path(catalogue_path or cards_dir / CATALOGUE_PATH.name)
    dst = cards_dir / short
    dst.mkdir(parents=True, exist_ok=True)
    pretrained = not has_metrics and (run_dir / PRETRAINING_NAME).is_file()
    if has_metrics:
        card = build_card(run_dir, repo_id=hub_id)  # usage code loads the hub id; draws plots
    else:
        card = build_pretrained_card(run_dir, repo_id=hub_id, name=short) if pretrained else None
    copies = list(run_dir.glob("*.png"))
    if ship:
        names = (*SHIPPED_FILES, *SHIPPED_EXTRA, METRICS_NAME, PRETRAINING_NAME, EVALUATION_NAME)
        copies += [run_dir / n for n in names if (run_dir / n).exists()]
    for src in copies if run_dir.resolve() != dst.resolve() else []:  # pretrain_text.py may write into dst itself
        with atomic_path(dst / src.name) as tmp:
            shutil.copyfile(src, tmp)
    if card is not None:
        atomic_write_text(dst / CARD_NAME, str(card))

    metrics = read_metrics(run_dir) if has_metrics else {}
    if pretrained and (run_dir / EVALUATION_NAME).is_file():  # a pretrained student's numbers on a real task
        evaluation = json.loads((run_dir / EVALUATION_NAME).read_text(encoding="utf-8"))
        if "evaluations" in evaluation:  # a multimodal student: one evaluation per task, keys "<task>/<model>"
            models = {f"{e.get('task')}/{k}": v for e in evaluation["evaluations"] for k, v in e["results"].items()}
        else:
            models = evaluation.get("results") or {}
        metrics = {"models": models}
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    tasks = config.get("tasks") or {}
    rel = (lambda p: str(p.relative_to(cards_dir.parent))) if cards_dir.parent in dst.parents else str
    entry = {
        "name": short,
        "hub_id": hub_id,
        "architecture": config.get("architecture"),
        "modalities": config.get("modalities") or [],
        "task": next(iter(tasks), None),
        "num_classes": next(iter(tasks.values()), None),
        "final_model": final_model_key(metrics, config) if has_metrics else _pretrained_final(metrics),
        "dataset": card.data.datasets[0] if card is not None and card.data.datasets else None,
        "base_model": card.data.base_model if card is not None else None,
        "metrics": {
            k: {m: e[m] for m in HEADLINE_KEYS if m in e}
            for k, e in metrics.get("models", {}).items()
            if isinstance(e, dict)
        },
        "card": rel(dst / CARD_NAME) if card is not None else None,
    }
    if ship:
        entry["folder"] = os.path.relpath(dst, catalogue_path.parent)
    students = [s for s in load_catalogue(catalogue_path) if s["name"] != short]
    students.append(entry)
    atomic_write_json(catalogue_path, {"students": sorted(students, key=lambda s: s["name"])})
    return entry


def _pretrained_final(metrics: dict) -> str | None:
    """A pretrained student's headline model: its labels-only fine-tune (the first task's, for a multimodal one)."""
    keys = [k for k in metrics.get("models", {}) if k == "finetuned" or k.endswith("/finetuned")]
    return keys[0] if keys else None


def pretrained_for(architecture: str, modalities, path: str | os.PathLike | None = None) -> str | None:
    """The name of a shipped pretrained student (an ``embedding`` head, weights in the package) of ``architecture``
    over exactly ``modalities``, or None: what ``student_init: auto`` starts a run's student from."""
    for entry in load_catalogue(path):
        if (
            entry.get("folder")
            and entry.get("architecture") == architecture
            and sorted(entry.get("modalities") or []) == sorted(modalities)
            and str(entry.get("task") or "").startswith("embedding")  # a pretrained head, not a task's
            and shipped_folder(entry, path) is not None
        ):
            return entry["name"]
    return None


def weights_size(entry: dict, path: str | os.PathLike | None = None) -> tuple[int | None, int | None]:
    """(parameters, bytes) of an entry's shipped model.safetensors (read from its header), else of its final model's
    headline metrics."""
    folder = shipped_folder(entry, path)
    if folder is None:
        final = (entry.get("metrics") or {}).get(entry.get("final_model")) or {}
        return final.get("params"), final.get("size_bytes")
    return safetensors_params(folder / SHIPPED_FILES[1]), (folder / SHIPPED_FILES[1]).stat().st_size


def format_catalogue(students: list[dict] | None = None) -> str:
    """The published students as a table: name, modalities, task, params, size, accuracy, latency, where the
    weights come from (shipped with the package, or the hub only) and the hub id."""
    students = load_catalogue() if students is None else students
    if not students:
        return "published students: none yet (add one with `zoo catalogue add RUN_DIR --name NAME`)."
    header = ("name", "modalities", "task", "params", "size", "accuracy (teacher -> student)", "latency ms")
    header += ("weights", "hub id")
    rows = [header]
    for s in students:
        m = s.get("metrics") or {}
        final = m.get(s.get("final_model")) or {}
        teacher = m.get("teacher") or {}
        acc = f"{fmt_pct(teacher.get('accuracy'))} -> {fmt_pct(final.get('accuracy'))}" if final else NA
        unit = "classes" if s.get("task") == "label" else "outputs"
        task = f"{s.get('task') or NA} ({s.get('num_classes') or NA} {unit})"
        params, size = weights_size(s)
        rows.append(
            (
                s["name"],
                "+".join(s.get("modalities") or []) or NA,
                task,
                fmt_params(params),
                f"{size / 1e6:.1f} MB" if size else NA,
                acc,
                fmt_ms(final.get("latency_ms")),
                "shipped" if s.get("folder") else "hub",
                s["hub_id"],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "published students:\n" + "\n".join(lines)


def print_catalogue(file=None) -> None:
    """Print the published students (``zoo list`` calls this after the architectures)."""
    print("\n" + format_catalogue(), file=file or sys.stdout)
