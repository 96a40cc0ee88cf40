"""A split's rows as student tensors, and the batch plumbing the loop, the evaluation and the report share."""

from __future__ import annotations

import torch

from zoo.modalities import IGNORE_INDEX, collate

MATERIALIZE_MAX = 20000  # splits up to this many rows are decoded and preprocessed once, up front


def _split_ids(split) -> list[str]:
    """Every row's id: ``split.ids`` (a ``zoo.data`` split reads them without decoding media), else row by row."""
    ids = getattr(split, "ids", None)
    return list(ids) if ids is not None else [str(split[i]["id"]) for i in range(len(split))]


class Rows(torch.utils.data.Dataset):
    """Rows of one split as student tensors: preprocessed once when small, on the fly (per row) when large."""

    def __init__(self, split, preprocessors: dict, ids: list[str] | None = None):
        self.split, self.pre = split, preprocessors
        self.unlabeled: set[int] = set()
        self.tensors = None
        self.ids = ids
        n = len(split)
        if n <= MATERIALIZE_MAX:
            samples = [split[i] for i in range(n)]
            self.ids = [str(s["id"]) for s in samples]
            parts = [collate(samples[i : i + 256], preprocessors) for i in range(0, n, 256)]
            self.tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            self.samples = samples
        elif self.ids is None:
            self.ids = _split_ids(split)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        if self.tensors is not None:
            row = {"id": self.ids[i], **{k: v[i] for k, v in self.tensors.items()}}
        else:
            s = self.split[i]
            row = {"id": str(s["id"]), **{k: v[0] for k, v in collate([s], self.pre).items()}}
        if i in self.unlabeled:
            row["labels"] = torch.tensor(IGNORE_INDEX)
        return row

    def hide_labels(self, fraction: float, seed: int) -> int:
        """Keep the labels of a seeded ``fraction`` of the rows (the others read -100); returns how many are kept."""
        g = torch.Generator().manual_seed(seed + 101)
        keep = max(int(round(fraction * len(self))), 1)
        self.unlabeled = set(torch.randperm(len(self), generator=g)[keep:].tolist())
        return keep

    def raw(self, i: int) -> dict:
        return self.samples[i] if self.tensors is not None else self.split[i]


def collate_rows(rows: list[dict]) -> dict:
    batch = {"ids": [r["id"] for r in rows]}
    for k in rows[0]:
        if k != "id":
            batch[k] = torch.stack([r[k] for r in rows])
    return batch


def split_inputs(batch: dict) -> tuple[dict, torch.Tensor, list[str]]:
    inputs = {k: v for k, v in batch.items() if k not in ("ids", "labels")}
    return inputs, batch["labels"], batch["ids"]


class SampleList:
    """The raw samples of a ``Rows`` as a sequence (for the teacher cache)."""

    def __init__(self, rows: Rows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows.raw(i)


def truncation_report(split, preprocessors: dict, teachers: dict | None = None) -> dict:
    """How many rows of ``split`` (a ``zoo.data`` split, or its ``Rows``: their decoded samples are reused) each
    preprocessing cuts: the student's per modality (text past its ``max_length``, audio past its ``clip_seconds``)
    and each teacher's (text past the teacher's ``max_length``).

    Returns ``{"rows": n, "student": {modality: {"truncated": k, "limit": ...}}, "teachers": {modality: {...}}}``;
    a modality whose preprocessing cuts nothing (images are resized) is left out.
    """
    raw = split.raw if isinstance(split, Rows) else lambda i: split[i]
    dataset = (split.split if isinstance(split, Rows) else split).dataset
    columns = getattr(dataset, "column_names", None) or []
    texts = list(dataset["text"]) if "text" in columns else None
    report: dict = {"rows": len(split), "student": {}, "teachers": {}}
    for m, pre in preprocessors.items():
        if not hasattr(pre, "truncated"):
            continue
        if m == "text" and texts is not None:
            values, limit = texts, {"max_length": pre.config.max_length}
        elif m == "audio":
            values, limit = (
                [raw(i).get("audio") for i in range(len(split))],
                {"clip_seconds": pre.config.clip_seconds},
            )
        else:
            continue
        present = sum(v is not None for v in values)
        report["student"][m] = {"truncated": int(pre.truncated(values)), "of": present, **limit}
    for m, t in (teachers or {}).items():
        if texts is None or "text" not in m:
            continue
        n = t.truncated([{"text": x} for x in texts])
        present = sum(x is not None for x in texts)
        report["teachers"][m] = {"truncated": int(n), "of": present, "max_length": _max_length(t)}
    return report


def _max_length(teacher) -> int | None:
    """A text teacher's token limit; for a cross-fitted or ensemble teacher the largest of its parts' (None: none)."""
    processors = getattr(teacher, "processors", None) or getattr(teacher, "text", None)
    if getattr(processors, "max_length", None) is not None:
        return processors.max_length
    parts = list(getattr(teacher, "parts", None) or [])  # a ComposedTeacher's teachers
    limits = [x for x in (_max_length(p) for p in parts) if x is not None]
    return max(limits) if limits else None


def truncation_lines(report: dict, split: str = "train") -> list[str]:
    """The report as log lines, one per preprocessing that cuts anything."""
    owners = [("the student's", m, e, f"the student's {m}") for m, e in report["student"].items()]
    owners += [(f"the {m} teacher's", m, e, f"the {m} teacher's") for m, e in report["teachers"].items()]
    lines, limits = [], []
    for owner, m, e, named in owners:
        limit = f"max_length {e['max_length']}" if "max_length" in e else f"clip_seconds {e['clip_seconds']}"
        limits.append(f"{named} {limit}")
        if e["truncated"]:
            share = 100 * e["truncated"] / max(e["of"], 1)
            lines.append(
                f"truncation: {e['truncated']} of {e['of']} {split} {m} rows ({share:.1f}%) are longer than "
                f"{owner} {limit}: their ends are cut"
            )
    if owners and not lines:
        lines.append(f"truncation: no {split} row is cut ({'; '.join(limits)})")
    return lines
