"""The plots of a run folder, drawn with matplotlib (Agg, no display needed): the training curves from its
``metrics.jsonl``, and the card's accuracy against latency from its ``metrics.json``."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zoo.io import atomic_path
from zoo.runs import label as model_label
from zoo.runs import ordered

CURVES_NAME = "training_curves.png"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a truncated last line, from a killed run, is skipped)."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


@contextmanager
def png_figure(path: str | os.PathLike, nrows: int = 1, ncols: int = 1, **kwargs) -> Iterator[tuple]:
    """``(fig, axes)`` of a matplotlib figure (Agg: no display needed) that is laid out and written to ``path`` as a
    PNG, atomically, when the block ends without error; the figure is closed either way."""
    import matplotlib

    matplotlib.use("Agg")  # must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **kwargs)
    try:
        yield fig, axes
        if fig.get_layout_engine() is None:  # a figure made with layout="constrained" lays itself out
            fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


BASELINE = "raw_student"
BASELINE_LABEL = "raw student (baseline, no teacher; its own steps)"
BASELINE_STYLE = {"color": "grey", "ls": "--"}

# the kinds of loss a train record carries, one panel each: (title, keys); several keys share a panel when they are
# one kind (the alignment parts, each its own line style), and "reference" / "quant" are one value under two names
LOSS_PANELS = (
    ("cross-entropy on the labels", ("ce",)),
    ("KD to the teachers (KL x T²)", ("kd",)),
    ("feature / embedding / relation alignment", ("feature", "embedding", "relation")),
    ("KD to the stage's starting student", ("reference", "quant")),
    ("total objective (each stage's weighted sum)", ("loss",)),
)
# not loss terms, or sums of the terms drawn ("distill": kd + the alignment parts)
NOT_TERMS = {"event", "phase", "step", "global_step", "temperature", "lr", "multiplier", "distill"}
PART_STYLES = ("-", "--", ":", "-.")


def phase_label(phase: str, rolled_back: bool = False) -> str:
    """A phase's legend name: the stage, without the guard's attempt suffix ("prune-a0" -> "prune"; a later
    attempt is "prune (attempt 2)"; ``rolled_back`` adds that the accuracy guard undid it)."""
    if phase == BASELINE:
        return BASELINE_LABEL
    m = re.fullmatch(r"(.+)-a(\d+)", phase)
    name, notes = (m.group(1), [f"attempt {int(m.group(2)) + 1}"] if m.group(2) != "0" else []) if m else (phase, [])
    notes += ["rolled back"] if rolled_back else []
    return f"{name} ({', '.join(notes)})" if notes else name


def _rolled_back(records: list[dict], phases: list[str]) -> set[str]:
    """The compression attempts the accuracy guard rolled back: a stage's first n attempts when it logged n
    rollbacks (their events carry the stage's name; a non-finite-loss rollback carries the attempt's)."""
    counts: dict[str, int] = {}
    for r in records:
        if r.get("event") == "rollback" and "to_step" not in r:
            counts[r.get("phase")] = counts.get(r.get("phase"), 0) + 1
    out = set()
    for phase in phases:
        m = re.fullmatch(r"(.+)-a(\d+)", phase)
        if m and int(m.group(2)) < counts.get(m.group(1), 0):
            out.add(phase)
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _terms(rs: list[dict]) -> set[str]:
    """The loss terms a stage's train records log (not their total, not the sums of other terms)."""
    return {k for r in rs for k, v in r.items() if k not in NOT_TERMS and k != "loss" and _num(v) and v}


def curve_panels(records: list[dict]) -> list[dict]:
    """What ``plot_training_curves`` draws, as data: a list of panels, each {"title", "yscale", "lines": [{"phase",
    "label", "key", "x", "y", "baseline"}]}. Stages are against the run's step counted from the first stage; the
    raw-student baseline, trained before them, against its own step, and only in the panels that compare it with
    them (cross-entropy and validation accuracy)."""
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval" and _num(r.get("val_accuracy"))]
    phases = list(dict.fromkeys(r["phase"] for r in train))
    phases = [p for p in phases if p != BASELINE] + [p for p in phases if p == BASELINE]  # baseline last
    offset = max((r["global_step"] for r in records if r.get("phase") == BASELINE and "global_step" in r), default=0)
    undone = _rolled_back(records, phases)

    def x(r: dict) -> int:
        return r["step"] if r["phase"] == BASELINE else r["global_step"] - offset

    def line(phase: str, key: str, rs: list[dict], value) -> dict | None:
        pts = [(x(r), value(r)) for r in rs if _num(value(r))]
        if not pts:
            return None
        label = phase_label(phase, phase in undone)
        return {"phase": phase, "label": label, "key": key, "x": [p[0] for p in pts], "y": [p[1] for p in pts],
                "baseline": phase == BASELINE}  # fmt: skip

    by_phase = {p: [r for r in train if r["phase"] == p] for p in phases}
    panels = []
    known = {k for _, keys in LOSS_PANELS for k in keys}
    others = sorted({k for r in train for k, v in r.items() if k not in NOT_TERMS | known and _num(v)})
    for title, keys in (*LOSS_PANELS, (f"other loss terms ({', '.join(others)})", tuple(others))):
        lines = []
        for phase, rs in by_phase.items():
            if phase == BASELINE and keys != ("ce",):
                continue  # the baseline's total is its CE; it has no teacher terms
            if keys == ("reference", "quant"):  # one value, logged under each name the stage weights
                lines.append(line(phase, "reference", rs, lambda r: r.get("reference", r.get("quant"))))
                continue
            if keys == ("loss",) and len(_terms(rs)) < 2:
                continue  # a stage of one term: its total is that term, drawn in the term's panel
            lines += [line(phase, k, rs, lambda r, k=k: r.get(k)) for k in keys]
        lines = [ln for ln in lines if ln is not None and any(ln["y"])]  # an all-zero term was not weighted
        if lines:
            ys = [v for ln in lines for v in ln["y"]]
            log = min(ys) > 0 and max(ys) > 10 * min(ys)  # a log scale when the values span a decade
            panels.append({"title": title, "yscale": "log" if log else "linear", "lines": lines})
    acc = [line(p, "val_accuracy", [r for r in evals if r["phase"] == p], lambda r: 100 * r["val_accuracy"])
           for p in phases]  # fmt: skip
    if any(acc):
        panels.append({"title": "validation accuracy (%)", "yscale": "linear", "lines": [a for a in acc if a]})
    sched = []
    for phase, rs in by_phase.items():
        if _terms(rs) & {"kd", "distill", "reference", "quant"}:  # the stages T applies to (not the baseline's)
            sched += [line(phase, "temperature", rs, lambda r: r.get("temperature") or None),
                      line(phase, "multiplier", rs, lambda r: r.get("multiplier"))]  # fmt: skip
    if any(sched):
        panels.append(
            {"title": "temperature T and KD multiplier", "yscale": "linear", "lines": [s for s in sched if s]}
        )
    return panels


def plot_training_curves(records: list[dict], path: str | os.PathLike) -> Path | None:
    """The run's curves from its ``metrics.jsonl`` records: one panel per kind of loss (cross-entropy, KD to the
    teachers, alignment, KD to the starting student, the total objective), validation accuracy, and temperature /
    KD multiplier; one colour per stage, named in one legend below the panels; the raw-student baseline grey and
    dashed, against its own step (see ``curve_panels``). Returns the PNG path, or None when there is nothing to draw.
    """
    panels = curve_panels(records)
    if not panels:
        return None
    from matplotlib.lines import Line2D  # matplotlib loads only when a plot is drawn
    from matplotlib.ticker import MaxNLocator

    stages = dict((ln["phase"], ln["label"]) for p in panels for ln in p["lines"])
    stages = {p: stages[p] for p in [p for p in stages if p != BASELINE] + [p for p in stages if p == BASELINE]}
    palette = [f"C{k}" for k in range(10) if k != 7]  # C7 is grey: the baseline's
    colours = {p: palette[j % len(palette)] for j, p in enumerate(p for p in stages if p != BASELINE)}
    styles = {p: BASELINE_STYLE if p == BASELINE else {"color": colours[p]} for p in stages}
    n = len(panels)
    ncols = n if n <= 3 else 2 if n == 4 else 3 if n <= 6 else 4
    nrows = math.ceil(n / ncols)
    path = Path(path)
    size = (5 * ncols, 3.4 * nrows + 0.6)
    with png_figure(path, nrows, ncols, figsize=size, dpi=100, squeeze=False, layout="constrained") as (fig, axes):
        axes = list(axes.flat)
        for ax in axes[n:]:
            ax.set_visible(False)
        for ax, panel in zip(axes, panels):
            keys = list(dict.fromkeys(ln["key"] for ln in panel["lines"]))
            for ln in panel["lines"]:
                style = dict(styles[ln["phase"]])
                if len(keys) > 1:
                    style["ls"] = PART_STYLES[keys.index(ln["key"]) % len(PART_STYLES)]
                if ln["key"] == "val_accuracy" or len(ln["x"]) < 3:  # a line of one point draws nothing
                    style.update(marker="o", ms=4)
                if ln["key"] == "multiplier":
                    ax.step(ln["x"], ln["y"], where="post", **style)
                else:
                    ax.plot(ln["x"], ln["y"], **style)
            if len(keys) > 1:  # the terms sharing this panel: line styles, in black
                names = {"temperature": "T", "multiplier": "KD multiplier"}
                ax.legend(handles=[Line2D([], [], color="black", ls=PART_STYLES[j % len(PART_STYLES)],
                                          label=names.get(k, k)) for j, k in enumerate(keys)], fontsize=7)  # fmt: skip
            ax.set(title=panel["title"], xlabel="step", yscale=panel["yscale"])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
            ax.title.set_fontsize(10)
            ax.grid(alpha=0.3)
        handles = [Line2D([], [], lw=2, label=label, **styles[p]) for p, label in stages.items()]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8, frameon=False)
    return path


# ------------------------------------------------------------------------------------------- accuracy vs latency
def as_float(x) -> float | None:
    """A metrics value as a float (None for anything not a number, booleans included)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


RUNTIME_MARKERS = {
    "torch": ("o", "torch eager"),
    "onnxruntime": ("s", "ONNX Runtime"),
    "openvino": ("D", "OpenVINO"),
    "tvm": ("^", "TVM"),
}


def latency_points(metrics: dict) -> list[dict]:
    """The accuracy-vs-latency points: one per model with a latency, on the runtime it was measured with
    (``accuracy`` None when it was not measured, e.g. ``zoo export --onnx`` without ``--data``). The hardware
    student sits at its fitted runtime's latency (``latency_budget``) when it was fitted to one."""
    points = []
    for key in ordered((metrics.get("models") or {}).keys()):
        e = metrics["models"][key]
        if not isinstance(e, dict):
            continue
        latency, runtime = as_float(e.get("latency_ms")), e.get("runtime") or "torch"
        fit = e.get("latency_budget") if isinstance(e.get("latency_budget"), dict) else {}
        if fit.get("runtime") in RUNTIME_MARKERS and as_float(fit.get("latency_ms")) is not None:
            latency, runtime = float(fit["latency_ms"]), fit["runtime"]
        accuracy = as_float(e.get("accuracy"))
        if latency is not None and latency > 0:
            points.append({"key": key, "label": model_label(key), "latency": latency,
                           "accuracy": None if accuracy is None else 100 * accuracy,
                           "runtime": runtime if runtime in RUNTIME_MARKERS else "torch"})  # fmt: skip
    return points


def plot_accuracy_vs_latency(metrics: dict, path: str | os.PathLike) -> Path | None:
    """Scatter of accuracy against batch-1 latency: one colour per model (named in the legend, so no label
    overlaps another) and one marker per runtime (torch eager or ONNX Runtime); a model whose accuracy was not
    measured is a dotted vertical line at its latency. None when no model has an accuracy and a latency."""
    points = latency_points(metrics)
    if not any(p["accuracy"] is not None for p in points):
        return None
    from matplotlib.lines import Line2D  # matplotlib loads only when a plot is drawn
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    with png_figure(path, figsize=(8, 4.2), dpi=100) as (_, ax):
        palette = [f"C{i}" for i in range(10) if i != 7]  # C7 is grey: the runtime keys' colour
        colours = [palette[i % len(palette)] for i in range(len(points))]
        handles = []
        for p, colour in zip(points, colours):
            marker = RUNTIME_MARKERS[p["runtime"]][0]
            if p["accuracy"] is None:  # latency only: where it would sit, not a made-up accuracy
                ax.axvline(p["latency"], color=colour, ls=":", lw=1.5)
                handles.append(Line2D([], [], marker=marker, color=colour, ls=":", markersize=7,
                                      label=f"{p['label']} (accuracy not measured)"))  # fmt: skip
                continue
            ax.scatter([p["latency"]], [p["accuracy"]], s=60, marker=marker, color=colour, edgecolor="black", lw=0.5)
            handles.append(Line2D([], [], marker=marker, color=colour, ls="", markersize=7, label=p["label"]))
        runtimes = [r for r in RUNTIME_MARKERS if any(p["runtime"] == r for p in points)]
        handles += [Line2D([], [], ls="", label="")] if len(runtimes) > 1 else []
        handles += [
            Line2D(
                [], [], marker=RUNTIME_MARKERS[r][0], mfc="white", mec="black", ls="", ms=7, label=RUNTIME_MARKERS[r][1]
            )
            for r in runtimes
            if len(runtimes) > 1
        ]
        latencies = [p["latency"] for p in points]
        if max(latencies) / min(latencies) > 20:
            ax.set_xscale("log")  # ticks at 1, 2, 5 x 10^k written as plain numbers: no crowded 3x10^0 labels
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.1, y=0.1)
        ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        ax.set_xlabel("latency (ms, batch 1, 1 thread)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Accuracy against latency", fontsize=10)
        if any(p["key"] == "int8" and p["runtime"] == "torch" for p in points):
            ax.annotate(  # why eager int8 is no faster than fp32
                "int8 in torch eager quantizes in separate kernels; its fast path is ONNX Runtime",
                (0, -0.2), xycoords="axes fraction", fontsize=7, color="dimgrey", va="top",
            )  # fmt: skip
        ax.grid(alpha=0.3)
    return Path(path)
