"""Recipes: a distillation run described in YAML, read with ``yaml.safe_load`` into typed dataclasses.

A recipe names the student, the data, the teachers (or how to train them), the loss settings, the adaptive
controller and the stages, in their fixed order::

    pretrain -> soft_distill -> mixed_distill -> prune -> quant_finetune -> hardware_adapt

Every key must be known: an unknown key is an error that names it, the file and the keys allowed there. YAML
tags (``!!python/...``) are refused by ``safe_load``; recipes hold values only. ``key=value`` overrides from
the command line use dotted paths (``stages.soft_distill.steps=50``, ``student=hybrid_tiny``), parsed as YAML
scalars. A stage set to ``null`` (or ``enabled: false``) is skipped.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from zoo.registry import LOSS_TERMS, list_models

STAGE_ORDER = ("pretrain", "soft_distill", "mixed_distill", "prune", "quant_finetune", "hardware_adapt")
# Stages that train the float student with the teachers; the raw-student baseline gets the same number of steps.
DISTILL_STAGES = ("pretrain", "soft_distill", "mixed_distill")
# Stages that must not lose accuracy: the accuracy guard rolls them back.
GUARDED_STAGES = ("prune", "quant_finetune", "hardware_adapt")
SCHEDULES = ("constant", "linear", "cosine")


class BadValue(ValueError):
    """A recipe value out of its range; ``_build`` prefixes the dotted path of ``key`` and the source file."""

    def __init__(self, key: str, value, rule: str):
        super().__init__(f"{key}={value!r}: {rule}")
        self.key, self.value, self.rule = key, value, rule


def _number(obj, key: str, *, low: float = 0.0, above: bool = False, high: float | None = None, value=None) -> None:
    """Refuse a non-finite ``obj.key`` or one outside [low, high] (``above``: strictly above ``low``)."""
    import math

    v = getattr(obj, key) if value is None else value
    if v is None:
        return
    ok = isinstance(v, (int, float)) and math.isfinite(v) and (v > low if above else v >= low)
    ok = ok and (high is None or v <= high)
    if not ok:
        bound = f"> {low}" if above else f">= {low}"
        raise BadValue(
            key, v, f"must be a finite number {bound}" + (f" and <= {high}" if high is not None else "") + "."
        )


def _positive_int(obj, key: str, *, optional: bool = False) -> None:
    v = getattr(obj, key)
    if v is None and optional:
        return
    if not isinstance(v, int) or v < 1:
        raise BadValue(key, v, "must be an integer >= 1.")


@dataclass
class Temperature:
    """KD temperature over a stage: from ``start`` to ``end`` along ``schedule`` (constant, linear, cosine)."""

    start: float = 1.0
    end: float | None = None
    schedule: str = "constant"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"temperature.schedule {self.schedule!r}: expected one of {list(SCHEDULES)}.")
        _number(self, "start", above=True)
        _number(self, "end", above=True)

    def at(self, progress: float) -> float:
        """Temperature at ``progress`` (0 at the stage's first step, 1 at its last)."""
        import math

        end = self.start if self.end is None else self.end
        p = min(max(progress, 0.0), 1.0)
        if self.schedule == "constant":
            return float(self.start)
        if self.schedule == "linear":
            return float(self.start + (end - self.start) * p)
        return float(end + (self.start - end) * 0.5 * (1.0 + math.cos(math.pi * p)))


@dataclass
class LossWeights:
    """Weights of one stage's loss terms.

    Args:
        ce: cross-entropy on the labels.
        kl: logit KD, KL(student/T || teacher/T) * T^2, averaged over the teachers.
        adaptive: the full distillation term (logit KD + feature, embedding and relation alignment, weighted as in
            ``losses``), multiplied by the adaptive controller's current multiplier.
        quant: KD from the float student to the quantized one (the quantization-error loss).
        reference: KD from the student a compression stage started from: the unpruned student in ``prune`` and
            ``hardware_adapt`` (self-distillation: the pruned student learns to answer as it did before, on every
            train row, labelled or not), the float student in ``quant_finetune`` (the same term as ``quant``).
    """

    ce: float = 0.0
    kl: float = 0.0
    adaptive: float = 0.0
    quant: float = 0.0
    reference: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # terms registered outside the package, by their key

    def __post_init__(self):
        for key, weight in self.as_dict().items():  # a negative weight would train the student away from a target
            _number(self, key, value=weight)

    def as_dict(self) -> dict[str, float]:
        """{term key: weight}, the registered extra terms beside the built-in ones."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}


@dataclass
class Stage:
    """One training stage. Give ``steps`` or ``epochs`` (a fraction of an epoch is allowed).

    Args:
        enabled: false skips the stage (as does ``null`` for the whole stage).
        steps, epochs: the stage's length in optimizer steps, or in passes over its share of the train split.
        data_fraction: share of the train split the stage draws from (a seeded subset).
        lr: peak learning rate (linear warmup over ``warmup`` of the steps, then cosine to ``min_lr_ratio * lr``).
        weights: loss weights (see ``LossWeights``).
        temperature: KD temperature schedule.
    """

    enabled: bool = True
    steps: int | None = None
    epochs: float | None = None
    data_fraction: float = 1.0
    lr: float = 1e-3
    warmup: float = 0.05
    min_lr_ratio: float = 0.05
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: Temperature = field(default_factory=Temperature)

    def __post_init__(self):
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"a stage has steps={self.steps} and epochs={self.epochs}; give one of them.")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps={self.steps}: must be >= 0.")
        if not 0 < self.data_fraction <= 1:
            raise BadValue("data_fraction", self.data_fraction, "must be in (0, 1].")
        _number(self, "epochs")
        _number(self, "lr")
        _number(self, "warmup", high=1.0)
        _number(self, "min_lr_ratio", high=1.0)

    def num_steps(self, train_size: int, batch_size: int) -> int:
        """The stage's optimizer steps for a train split of ``train_size`` samples at ``batch_size``."""
        if self.steps is not None:
            return int(self.steps)
        if self.epochs is None:
            return 0
        per_epoch = max(int(train_size * self.data_fraction) // batch_size, 1)
        return max(int(round(self.epochs * per_epoch)), 1)


@dataclass
class CompressionStage(Stage):
    """A stage that compresses the student and is kept only if the accuracy guard allows it.

    ``accuracy_tolerance``: the largest validation accuracy drop (a fraction) the guard accepts for this stage;
    default ``train.accuracy_tolerance``. A latency budget is a trade, so a recipe may allow ``hardware_adapt`` more
    than the steps that should cost nothing.
    """

    accuracy_tolerance: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.accuracy_tolerance is not None and not 0 <= self.accuracy_tolerance <= 1:
            raise BadValue("accuracy_tolerance", self.accuracy_tolerance, "a fraction of accuracy, in [0, 1].")


@dataclass
class PruneStage(CompressionStage):
    """Structured pruning to ``keep`` of the widths, then KD recovery training.

    ``retry_keeps`` are milder ratios tried in order when the accuracy guard rolls a pruning back.
    """

    keep: float = 0.65
    criterion: str = "taylor"
    retry_keeps: list[float] = field(default_factory=lambda: [0.8, 0.9])

    def __post_init__(self):
        super().__post_init__()
        for i, keep in enumerate([self.keep, *self.retry_keeps]):
            _number(self, "keep" if i == 0 else f"retry_keeps[{i - 1}]", value=keep, above=True, high=1.0)


@dataclass
class QuantStage(CompressionStage):
    """Int8 quantization-aware fine-tuning (``weights.quant``: KD from the float student), then int8 conversion."""

    calibration_batches: int = 8

    def __post_init__(self):
        super().__post_init__()
        _positive_int(self, "calibration_batches")


@dataclass
class HardwareStage(CompressionStage):
    """Fit the student to a latency budget (batch 1, one thread) on ``runtime``, with KD recovery.

    ``latency_budget_ms`` is an absolute budget for a known target device. ``latency_budget_ratio`` (used when no
    absolute budget is set) is a fraction of the incoming student's own latency measured on this machine, so a
    recipe stays meaningful on any machine (the quickstart uses it). An unreachable budget skips the stage (logged).
    """

    latency_budget_ms: float | None = None
    latency_budget_ratio: float | None = None
    runtime: str = "torch"

    def __post_init__(self):
        super().__post_init__()
        _number(self, "latency_budget_ms", above=True)
        _number(self, "latency_budget_ratio", above=True)
        from zoo.compress.hardware import runtime_problem  # an unknown or uninstalled runtime fails before any work

        if runtime_problem(self.runtime):
            raise BadValue("runtime", self.runtime, runtime_problem(self.runtime))


@dataclass
class Stages:
    pretrain: Stage | None = None
    soft_distill: Stage | None = None
    mixed_distill: Stage | None = None
    prune: PruneStage | None = None
    quant_finetune: QuantStage | None = None
    hardware_adapt: HardwareStage | None = None

    def active(self) -> list[tuple[str, Stage]]:
        """(name, stage) of the enabled stages in run order."""
        return [(n, getattr(self, n)) for n in STAGE_ORDER if getattr(self, n) is not None and getattr(self, n).enabled]


@dataclass
class TeacherTraining:
    """How ``zoo distill`` trains its own teachers when none are given (the offline quickstart).

    Each teacher is a transformers architecture notably larger than the student, trained from scratch with CE.
    ``modalities`` lists the modalities that get one (default: every modality of the data); rows that no teacher
    carries learn from their labels in the KD term's place. ``folds`` > 1 cross-fits: K teachers per modality,
    each trained without one fold of the train rows, so every train row gets a target from a teacher that never
    saw it (``zoo.teachers.crossfit``); a teacher trained on all rows has memorised them and teaches nothing more
    than their labels.
    """

    modalities: list[str] | None = None
    folds: int = 1
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 32
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    image_size: int = 16
    patch_size: int = 4
    audio_mel_bins: int = 64
    text_max_length: int = 32
    text_vocab_size: int = 2048

    def __post_init__(self):
        for key in ("folds", "steps", "batch_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            _positive_int(self, key)
        _number(self, "lr", above=True)


@dataclass
class DataSettings:
    """Where the samples come from and how they are batched (``source: null`` is the bundled quickstart).

    ``label_fraction`` < 1 keeps the labels of only that (seeded) fraction of the train rows for the students: the
    setting of a user with a small labelled set and more unlabelled data. Teachers trained by the run still see every
    label (they stand in for teachers trained on more data); the raw student learns from the kept labels only, the
    distilled student also from the teachers' predictions on the other rows.
    """

    source: str | None = None
    unlabeled: str | None = None  # a table of rows without labels: the teachers label them (KD only)
    max_unlabeled: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    max_train_samples: int | None = None
    label_fraction: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.label_fraction <= 1.0:
            raise BadValue("label_fraction", self.label_fraction, "must be in (0, 1].")
        for key in ("batch_size", "eval_batch_size"):
            _positive_int(self, key)
        for key in ("max_train_samples", "max_unlabeled"):  # 0 would train on nothing; null means all rows
            _positive_int(self, key, optional=True)


@dataclass
class LossSettings:
    """Settings of the distillation term (``weights.adaptive``) shared by all stages.

    Args:
        feature: weight of feature alignment (projector + MSE or cosine) inside the distillation term.
        feature_loss: "mse" or "cosine".
        feature_layers: modality -> {student block index: teacher layer}; ``{}`` aligns the student's last block
            with each teacher's last cached feature layer.
        embedding: weight of embedding distillation (pooled student features vs. encoder teachers' embeds).
        embedding_loss: "cosine" or "mse".
        relation: weight of the cross-modal relation loss (CLIP-style teachers).
        modality_weights: per-teacher-modality weight of every teacher term.
        teacher_fusion: how the teachers of one sample's modalities become one KD target: "product" (of experts:
            summed log-probabilities, the Bayes fusion of independent evidence) or "mean" (of probabilities).
        gradient_penalty: lambda of the squared norm of d(KD)/d(student logits), a smoothness guard.
    """

    feature: float = 1.0
    feature_loss: str = "mse"
    feature_layers: dict[str, dict[int, str]] = field(default_factory=dict)
    embedding: float = 1.0
    embedding_loss: str = "cosine"
    relation: float = 1.0
    modality_weights: dict[str, float] = field(default_factory=dict)
    teacher_fusion: str = "product"
    gradient_penalty: float = 0.0

    def __post_init__(self):
        for name in ("feature_loss", "embedding_loss"):
            if getattr(self, name) not in ("mse", "cosine"):
                raise BadValue(name, getattr(self, name), "expected 'mse' or 'cosine'.")
        if self.teacher_fusion not in ("product", "mean"):
            raise BadValue("teacher_fusion", self.teacher_fusion, "expected 'product' or 'mean'.")
        for key in ("feature", "embedding", "relation", "gradient_penalty"):
            _number(self, key)
        for modality, weight in self.modality_weights.items():
            _number(self, f"modality_weights.{modality}", value=weight)


@dataclass
class ControllerSettings:
    """The adaptive-distillation controller (a discounted UCB1 bandit over KD-weight multipliers).

    Reward: the improvement of the validation metric (``loss``: lower CE is better; ``accuracy``) over
    ``interval`` steps, measured on ``eval_samples`` validation samples.
    """

    enabled: bool = True
    arms: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    interval: int = 20
    metric: str = "loss"
    exploration: float = 1.0
    discount: float = 0.95
    eval_samples: int = 256

    def __post_init__(self):
        if self.metric not in ("loss", "accuracy"):
            raise ValueError(f"controller.metric {self.metric!r}: expected 'loss' or 'accuracy'.")
        if not self.arms:
            raise BadValue("arms", self.arms, "list at least one KD-weight multiplier.")
        for i, arm in enumerate(self.arms):
            _number(self, f"arms[{i}]", value=arm)
        _positive_int(self, "interval")  # the reward is measured every `interval` steps
        _positive_int(self, "eval_samples")
        _number(self, "exploration")
        _number(self, "discount", above=True, high=1.0)


@dataclass
class TrainSettings:
    """Loop settings: precision, accumulation, checkpoints, logging, guards."""

    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10  # metrics.jsonl lines
    progress_every: int = 50  # off a terminal: a log line with step, loss, rate and ETA every this many steps
    accuracy_tolerance: float = 0.005
    max_rollbacks: int = 3
    baseline: bool = True
    latency_repeats: int = 30  # rounds of the interleaved latency measurement (median and p10-p90 spread)
    keep_best: bool = False  # each phase returns its best validation checkpoint (measured at every epoch's end)
    # "shared": teacher outputs in the cache every run shares (zoo.teachers.shared_cache_dir, $ZOO_CACHE); "run":
    # in the output folder's teacher_cache/
    teacher_cache: str = "shared"

    def __post_init__(self):
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise BadValue("mixed_precision", self.mixed_precision, "expected 'no', 'fp16' or 'bf16'.")
        if self.teacher_cache not in ("shared", "run"):
            raise BadValue("teacher_cache", self.teacher_cache, "expected 'shared' or 'run'.")
        for key in (
            "gradient_accumulation_steps",
            "checkpoint_every",
            "log_every",
            "progress_every",
            "latency_repeats",
        ):
            _positive_int(self, key)
        _number(self, "weight_decay")
        _number(self, "grad_clip")
        _number(self, "accuracy_tolerance", high=1.0)
        if not isinstance(self.max_rollbacks, int) or self.max_rollbacks < 0:
            raise BadValue("max_rollbacks", self.max_rollbacks, "must be an integer >= 0.")


@dataclass
class Recipe:
    """A whole run. ``student`` is a registered architecture; ``student_overrides`` are its config overrides."""

    name: str = "custom"
    description: str = ""
    seed: int = 0
    student: str = "hybrid_tiny"
    student_overrides: dict = field(default_factory=dict)
    tokenizer: str = "train"
    # with tokenizer "teacher": keep only the teacher's tokens the train (+ unlabeled) texts use, and every character
    trim_vocabulary: bool = True
    # "teacher": the student's token embeddings start from the text teacher's (its outputs per token, PCA to the
    # student's width; the raw-student baseline still starts from random); "random": a blank student; a pretrained
    # student (a `zoo list` name such as hybrid-tiny-text, a hub id or a folder): its weights and tokenizer, with a
    # fresh head for the data's labels (the raw-student baseline: the same architecture and tokenizer, blank); "auto":
    # the shipped pretrained student for this architecture and these modalities when there is one, else "teacher"
    student_init: str = "random"
    data: DataSettings = field(default_factory=DataSettings)
    teachers: dict[str, str] = field(default_factory=dict)
    teacher_training: TeacherTraining = field(default_factory=TeacherTraining)
    losses: LossSettings = field(default_factory=LossSettings)
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    stages: Stages = field(default_factory=Stages)

    def __post_init__(self):
        if self.student not in list_models():
            import difflib

            close = difflib.get_close_matches(self.student, list_models(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BadValue("student", self.student, f"not a registered student.{hint} Registered: {list_models()}.")
        if self.student_init not in ("random", "teacher", "auto") and not _names_a_student(self.student_init):
            raise BadValue(
                "student_init",
                self.student_init,
                "use 'random', 'teacher', 'auto' or a pretrained student: a `zoo list` name, a hub id or a folder.",
            )
        if not self.stages.active():
            raise BadValue(
                "stages",
                "none enabled",
                f"a recipe needs at least one of {list(STAGE_ORDER)} (e.g. stages.soft_distill.steps=50).",
            )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for stage in (data["stages"] or {}).values():  # extra loss terms read back as keys of weights:
            if stage:
                stage["weights"].update(stage["weights"].pop("extra"))
        return data


# --------------------------------------------------------------------------------------------------- parsing
def _strip_optional(tp):
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _names_a_student(value: str) -> bool:
    """A catalogue name, an existing folder, or something shaped like a hub id (checked when the run loads it)."""
    from zoo.catalogue import find

    if os.path.isdir(os.path.expanduser(value)) or find(value) is not None:
        return True
    return value.count("/") == 1 and not value.startswith((".", "/", "~"))


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-4, 5E3, 2.5e-5: numbers YAML 1.1 misses


def convert_value(value, tp, where: str, source: str):
    """Check and convert one YAML value to the annotated type ``tp``; errors name ``where`` and ``source``."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        if dataclasses.is_dataclass(tp):
            raise ValueError(f"{source}: {where} is null; give a mapping (or drop the key for the defaults).")
        raise ValueError(f"{source}: {where} is null; expected a {getattr(tp, '__name__', tp)}.")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{source}: {where} must be a mapping; got {type(value).__name__} {value!r}.")
        kt, vt = typing.get_args(tp) or (typing.Any, typing.Any)
        return {
            convert_value(k, kt, f"{where} key", source): convert_value(v, vt, f"{where}.{k}", source)
            for k, v in value.items()
        }
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{source}: {where} must be a list; got {type(value).__name__} {value!r}.")
        (it,) = typing.get_args(tp) or (typing.Any,)
        return [convert_value(v, it, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if tp is typing.Any or tp is dict:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {where} must be true or false; got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):  # YAML 1.1 reads 1e-4 as a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: {where} must be a number; got {value!r}.")
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: {where} must be an integer; got {value!r}.")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{source}: {where} must be a string; got {value!r}.")
        return str(value)
    return value


def _build(cls, data, where: str, source: str):
    if not isinstance(data, dict):
        raise ValueError(f"{source}: {where or 'the recipe'} must be a mapping; got {type(data).__name__} {data!r}.")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    if cls is LossWeights:  # a loss term registered outside the package: its key is a stage weight too
        registered = [k for k, c in LOSS_TERMS.items() if k not in known and getattr(c, "stage_weight", True)]
        known = [k for k in known if k != "extra"] + registered
        if any(k in registered for k in data):
            extra = {k: v for k, v in data.items() if k in registered}
            data = {**{k: v for k, v in data.items() if k not in extra}, "extra": extra}
            known.append("extra")
    for key in data:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            path = f"{where}.{key}" if where else str(key)
            raise ValueError(f"{source}: unknown key {path!r}.{hint} Allowed here: {known}.")
    kwargs = {k: convert_value(v, hints[k], f"{where}.{k}" if where else k, source) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except BadValue as e:
        key = f"{where}.{e.key}" if where else e.key
        raise ValueError(f"{source}: {key}={e.value!r}: {e.rule}") from e
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {where or 'recipe'}: {e}") from e


def parse_override(text: str) -> tuple[list[str], object]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as a YAML scalar)."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key=value (e.g. stages.soft_distill.steps=50).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {text!r}: the key is empty.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({e}).") from e
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in the raw recipe mapping (validation happens when it is built)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {part!r} holds {child!r}, not a mapping.")
            node = child
        node[path[-1]] = value
        # a stage's length is steps or epochs: the one set on the command line replaces the recipe's other one
        twin = {"steps": "epochs", "epochs": "steps"}.get(path[-1])
        if twin and len(path) == 3 and path[0] == "stages" and value is not None:
            node.pop(twin, None)
    return data


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped with the package (zoo/recipes/*.yaml)."""
    folder = resources.files("zoo").joinpath("recipes")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A YAML file path as is, or a bundled recipe by name (``s1``, ``quickstart``).

    A bare name (no ``.yaml`` and no folder in it) is a bundled recipe first, so a folder in the working directory
    named like one (``quickstart/``) does not shadow it; ``./quickstart.yaml`` names a file.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    bundled = resources.files("zoo").joinpath("recipes", f"{text}.yaml")
    bare = path.suffix not in (".yaml", ".yml") and "/" not in text and os.sep not in text
    if bare and bundled.is_file():
        return Path(str(bundled))
    if path.is_dir():
        raise FileNotFoundError(
            f"recipe {path} is a folder; give a YAML file or a bundled recipe ({bundled_recipes()})."
        )
    if path.is_file():
        return path
    if not bare:
        raise FileNotFoundError(f"recipe file {path} does not exist.")
    raise FileNotFoundError(f"no recipe {text!r}: not a file and not a bundled recipe ({bundled_recipes()}).")


def load_recipe(name_or_path: str | os.PathLike = "quickstart", overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (bundled name or YAML path) with ``yaml.safe_load``, apply ``key=value`` overrides, validate."""
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not a valid values-only YAML recipe ({e}). Tags and code are not allowed.") from e
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a mapping of keys; got {type(data).__name__}.")
    source = str(path)
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{path} (with overrides {list(overrides)})"
    return recipe_from_dict(data, source)


def recipe_from_dict(data: dict, source: str = "recipe") -> Recipe:
    """Build a ``Recipe`` from a mapping; unknown keys and wrong types are errors naming ``source``."""
    return _build(Recipe, data, "", source)
