"""Extending the zoo from outside the package: a student family and a loss term registered by test code alone."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import zoo
from zoo import registry
from zoo.modalities import ImageConfig
from zoo.students import Student
from zoo.train.objective import LossTerm, register_loss_term
from zoo.train.run import distill


@dataclass
class ToyConfig:
    """A linear image student: flattened pixels -> one hidden layer -> the head."""

    modalities: list[str] = field(default_factory=lambda: ["image"])
    tasks: dict[str, int] = field(default_factory=lambda: {"label": 10})
    embed_dim: int = 16
    image: ImageConfig | dict | None = None
    id2label: dict[str, str] | None = None
    quantization: dict | None = None
    architecture: str = "toy_linear"

    def __post_init__(self):
        self.image = ImageConfig(**self.image) if isinstance(self.image, dict) else self.image or ImageConfig()

    @property
    def num_classes(self) -> int:
        return next(iter(self.tasks.values()))

    @property
    def depth(self) -> int:
        return 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> ToyConfig:
        return cls(**data)


class ToyStudent(Student):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        c = config.image
        self.hidden = nn.Linear(c.in_chans * c.image_size**2, config.embed_dim)
        self.head = nn.Linear(config.embed_dim, config.num_classes)

    def forward_features(self, **inputs) -> torch.Tensor:
        return self.hidden(inputs["pixel_values"].flatten(1)).relu()  # (B, D)

    def forward_head(self, features, task=None, pre_logits=False):
        return features if pre_logits else self.head(features)


class LogitNorm(LossTerm):
    """A toy term: the mean squared logit (keeps logits small)."""

    key = "logit_norm"

    def __call__(self, step):
        return step.logits.pow(2).mean()


def toy_linear(modalities=("image",), num_classes: int = 10, id2label=None, image=None, **ignored):
    return ToyStudent(ToyConfig(list(modalities), {"label": num_classes}, image=image, id2label=id2label))


@pytest.fixture
def toy_extensions():
    """Register the toy family and term as a user's package would, and remove them afterwards."""
    registry.register_model(toy_linear, family=ToyStudent)
    register_loss_term(LogitNorm)
    yield
    registry._MODELS.pop("toy_linear")
    registry.ARCHITECTURES.pop("toy_linear")
    registry.LOSS_TERMS.pop("logit_norm")


@pytest.mark.slow
def test_toy_student_and_loss_term_distill(toy_extensions, tmp_path):
    from zoo import data as zdata
    from zoo.recipe import TeacherTraining
    from zoo.teachers.train import build_teacher

    data = zdata.quickstart(train_size=64, validation_size=32, test_size=32, modalities=("image",))
    torch.manual_seed(0)
    cfg = TeacherTraining(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, image_size=16)
    build_teacher("image", cfg, data, tmp_path / "teacher")
    overrides = [
        "student=toy_linear",
        "data.batch_size=16",
        "stages.pretrain.steps=2",
        "stages.soft_distill.steps=4",
        "stages.soft_distill.weights.logit_norm=0.5",
        "stages.mixed_distill=null",
        "stages.prune=null",
        "stages.quant_finetune=null",
        "stages.hardware_adapt=null",
        "train.latency_repeats=2",
    ]
    out = tmp_path / "run"
    metrics = distill(
        "quickstart", out, data=data, teachers={"image": str(tmp_path / "teacher")}, overrides=overrides,
        progress=False,
    )  # fmt: skip
    assert {"teacher", "raw_student", "distilled"} <= set(metrics["models"])
    soft = next(s for s in metrics["run"]["stages"] if s["name"] == "soft_distill")
    assert soft["weights"]["logit_norm"] == 0.5
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r.get("event") == "train" and r["phase"] == "soft_distill"]
    assert logged and all("logit_norm" in r for r in logged)
    assert not any("logit_norm" in r for r in records if r.get("phase") == "pretrain")  # weight 0 there
    assert json.loads((out / "config.json").read_text())["architecture"] == "toy_linear"
    again = zoo.load(str(out))  # dispatched on config.json's architecture through the registry
    assert isinstance(again, ToyStudent)
    batch = again.preprocess([data.splits["test"][i] for i in range(4)])
    batch.pop("labels")
    assert again(**batch).shape == (4, data.num_labels)
