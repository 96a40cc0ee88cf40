"""Recipes: bundled files parse, unknown keys and bad values are errors naming them, overrides apply."""

import pytest

from zoo.recipe import DISTILL_STAGES, STAGE_ORDER, Temperature, bundled_recipes, load_recipe


def test_bundled_recipes_parse():
    assert {"s1", "quickstart"} <= set(bundled_recipes())
    for name in bundled_recipes():
        r = load_recipe(name)
        assert r.name == name


def test_s1_stages_and_weights():
    r = load_recipe("s1")
    names = [n for n, _ in r.stages.active()]
    assert names == list(STAGE_ORDER)
    s = r.stages
    assert s.pretrain.weights.ce == 1.0 and s.pretrain.weights.kl == 0.0
    assert (s.soft_distill.weights.kl, s.soft_distill.weights.ce) == (0.8, 0.2)
    assert s.soft_distill.temperature.start == 5.0
    w = s.mixed_distill.weights
    assert (w.adaptive, w.kl, w.ce) == (0.6, 0.3, 0.1)
    assert s.mixed_distill.temperature.at(1.0) == pytest.approx(1.0)
    assert s.prune.keep == 0.65
    assert s.quant_finetune.weights.quant > 0
    assert s.hardware_adapt.latency_budget_ratio == 0.9 and s.hardware_adapt.runtime == "onnxruntime"
    assert r.losses.gradient_penalty == 0.01
    assert set(DISTILL_STAGES) <= set(names)


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("student: hybrid_test\nstages:\n  soft_distill:\n    stepz: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*stages\.soft_distill\.stepz.*steps"):
        load_recipe(p)


def test_wrong_type_and_tags_rejected(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("seed: many\n")
    with pytest.raises(ValueError, match="seed must be an integer"):
        load_recipe(p)
    p.write_text("seed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ValueError, match="not a valid values-only YAML"):
        load_recipe(p)


def test_overrides():
    r = load_recipe("s1", ["stages.soft_distill.steps=50", "stages.soft_distill.epochs=null", "student=hybrid_test"])
    assert r.stages.soft_distill.steps == 50 and r.student == "hybrid_test"
    r = load_recipe("s1", ["stages.prune=null", "controller.arms=[1, 2]"])
    assert r.stages.prune is None and r.controller.arms == [1.0, 2.0]
    with pytest.raises(ValueError, match="stages.soft_distill.nope"):
        load_recipe("s1", ["stages.soft_distill.nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_recipe("s1", ["student"])


def test_temperature_schedules():
    assert Temperature(5, 1, "linear").at(0.5) == pytest.approx(3.0)
    assert Temperature(5, 1, "cosine").at(0.0) == pytest.approx(5.0)
    assert Temperature(5, 1, "cosine").at(1.0) == pytest.approx(1.0)
    assert Temperature(4).at(0.7) == 4.0
    with pytest.raises(ValueError):
        Temperature(5, 1, "exp")


def test_steps_from_epochs():
    r = load_recipe("s1")
    assert r.stages.pretrain.num_steps(train_size=640, batch_size=64) == 20


def test_compression_stages_take_their_own_accuracy_tolerance():
    r = load_recipe("quickstart", ["stages.prune.accuracy_tolerance=0.01"])
    assert r.stages.prune.accuracy_tolerance == 0.01
    assert r.stages.quant_finetune.accuracy_tolerance is None  # the run-wide train.accuracy_tolerance applies
    assert r.stages.hardware_adapt.accuracy_tolerance == 0.03  # the quickstart allows the latency trade 3 points
    with pytest.raises(ValueError, match="accuracy_tolerance=5"):
        load_recipe("quickstart", ["stages.hardware_adapt.accuracy_tolerance=5"])
