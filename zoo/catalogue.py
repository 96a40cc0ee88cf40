"""The zoo's catalogue of published students: ``model_cards/catalogue.json`` and a card per student.

Each entry names a student (``hybrid-tiny-quickstart``), its hub id, what it takes and predicts, and headline
metrics copied from the run's metrics.json. ``zoo.load(name)`` and ``HybridStudent.from_pretrained(name)`` accept
a catalogue name and load its hub id (through ``hub_id_for``, called by ``zoo.hub.resolve_model_folder``).

Add a student from a finished run (the card is regenerated to load the hub id and copied with its plots)::

    zoo catalogue add RUN_DIR --name distill-zoo/hybrid-tiny-quickstart
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from zoo.bench import read_metrics
from zoo.cards import CARD_NAME, MODEL_CARDS_DIR, NA, build_card, final_model_key, fmt_ms, fmt_params, fmt_pct
from zoo.io import atomic_path, atomic_write_json, atomic_write_text

CATALOGUE_PATH = MODEL_CARDS_DIR / "catalogue.json"
DEFAULT_ORG = "distill-zoo"
HEADLINE_KEYS = ("accuracy", "latency_ms", "size_bytes", "params")


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
    catalogue_path: str | os.PathLike | None = None,
    cards_dir: str | os.PathLike | None = None,
) -> dict:
    """Record a finished run as a published student: its card (loading ``hub_id``) and headline metrics.

    ``name`` is ``org/short-name`` or ``short-name`` (org defaults to distill-zoo). Writes
    ``<cards_dir>/<short-name>/README.md`` with the run's plots beside it and replaces the entry of the same
    name in the catalogue JSON. Returns the entry.
    """

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists() or not (run_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{run_dir} needs config.json and metrics.json; pass the output folder of `zoo distill` or `zoo finetune`."
        )
    short, hub_id = _split_name(name, hub_id)
    cards_dir = Path(cards_dir or MODEL_CARDS_DIR)
    catalogue_path = Path(catalogue_path or cards_dir / CATALOGUE_PATH.name)
    card = build_card(run_dir, repo_id=hub_id)  # the card's usage code loads the hub id
    dst = cards_dir / short
    dst.mkdir(parents=True, exist_ok=True)
    for png in run_dir.glob("*.png"):
        with atomic_path(dst / png.name) as tmp:
            shutil.copyfile(png, tmp)
    atomic_write_text(dst / CARD_NAME, str(card))

    metrics = read_metrics(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    final = final_model_key(metrics, config)
    tasks = config.get("tasks") or {}
    entry = {
        "name": short,
        "hub_id": hub_id,
        "architecture": config.get("architecture"),
        "modalities": config.get("modalities") or [],
        "task": next(iter(tasks), None),
        "num_classes": next(iter(tasks.values()), None),
        "final_model": final,
        "dataset": card.data.datasets[0] if card.data.datasets else None,
        "base_model": card.data.base_model,
        "metrics": {
            k: {m: e[m] for m in HEADLINE_KEYS if m in e}
            for k, e in metrics.get("models", {}).items()
            if isinstance(e, dict)
        },
        "card": str((dst / CARD_NAME).relative_to(cards_dir.parent)) if cards_dir.parent in dst.parents else str(dst),
    }
    students = [s for s in load_catalogue(catalogue_path) if s["name"] != short]
    students.append(entry)
    atomic_write_json(catalogue_path, {"students": sorted(students, key=lambda s: s["name"])})
    return entry


def format_catalogue(students: list[dict] | None = None) -> str:
    """The published students as a table: name, modalities, task, params, accuracy, latency, hub id."""
    students = load_catalogue() if students is None else students
    if not students:
        return "published students: none yet (add one with `zoo catalogue add RUN_DIR --name NAME`)."
    header = ("name", "modalities", "task", "params", "accuracy (teacher -> student)", "latency ms", "hub id")
    rows = [header]
    for s in students:
        m = s.get("metrics") or {}
        final = m.get(s.get("final_model")) or {}
        teacher = m.get("teacher") or {}
        acc = f"{fmt_pct(teacher.get('accuracy'))} -> {fmt_pct(final.get('accuracy'))}"
        task = f"{s.get('task') or NA} ({s.get('num_classes') or NA} classes)"
        rows.append(
            (
                s["name"],
                "+".join(s.get("modalities") or []) or NA,
                task,
                fmt_params(final.get("params")),
                acc,
                fmt_ms(final.get("latency_ms")),
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
