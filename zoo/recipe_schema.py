"""The recipe's schema: one typed dataclass per section (stages, data, teacher training, losses, controller,
training), with its defaults and the range checks each runs when it is built. ``zoo.recipe`` reads YAML into them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from zoo.compress.runtimes import runtime_problem
from zoo.registry import list_models

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
        problem = runtime_problem(self.runtime)  # an unknown or uninstalled runtime fails before any work
        if problem:
            raise BadValue("runtime", self.runtime, problem)


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


def _names_a_student(value: str) -> bool:
    """A catalogue name, an existing folder, or something shaped like a hub id (checked when the run loads it)."""
    from zoo.catalogue import find

    if os.path.isdir(os.path.expanduser(value)) or find(value) is not None:
        return True
    return value.count("/") == 1 and not value.startswith((".", "/", "~"))
