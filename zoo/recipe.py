"""Recipes: a distillation run described in YAML, read with ``yaml.safe_load`` into typed dataclasses.

A recipe names the student, the data, the teachers (or how to train them), the loss settings, the adaptive
controller and the stages, in their fixed order::

    pretrain -> soft_distill -> mixed_distill -> prune -> quant_finetune -> hardware_adapt

Every key must be known: an unknown key is an error that names it, the file and the keys allowed there. YAML
tags (``!!python/...``) are refused by ``safe_load``; recipes hold values only. ``key=value`` overrides from
the command line use dotted paths (``stages.soft_distill.steps=50``, ``student=hybrid_tiny``), parsed as YAML
scalars. A stage set to ``null`` (or ``enabled: false``) is skipped.

The dataclasses, their defaults and checks are in ``zoo.recipe_schema`` (re-exported here); this module reads YAML
and ``key=value`` overrides into them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from importlib import resources
from pathlib import Path

import yaml

from zoo.recipe_schema import (
    DISTILL_STAGES,
    GUARDED_STAGES,
    SCHEDULES,
    STAGE_ORDER,
    BadValue,
    CompressionStage,
    ControllerSettings,
    DataSettings,
    HardwareStage,
    LossSettings,
    LossWeights,
    PruneStage,
    QuantStage,
    Recipe,
    Stage,
    Stages,
    TeacherTraining,
    Temperature,
    TrainSettings,
)
from zoo.registry import LOSS_TERMS

__all__ = [
    "STAGE_ORDER",
    "DISTILL_STAGES",
    "GUARDED_STAGES",
    "SCHEDULES",
    "BadValue",
    "Temperature",
    "LossWeights",
    "Stage",
    "CompressionStage",
    "PruneStage",
    "QuantStage",
    "HardwareStage",
    "Stages",
    "TeacherTraining",
    "DataSettings",
    "LossSettings",
    "ControllerSettings",
    "TrainSettings",
    "Recipe",
    "apply_overrides",
    "bundled_recipes",
    "convert_value",
    "load_recipe",
    "parse_override",
    "recipe_from_dict",
    "recipe_path",
]


def _strip_optional(tp):
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


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
