"""transformers' Auto classes for students: after ``import zoo``, ``AutoConfig.from_pretrained(folder)`` and
``AutoModel.from_pretrained(folder)`` load a student folder (or hub id), found by config.json's ``model_type``
(``students.base.MODEL_TYPE``).

``AutoModel`` returns the student itself (``zoo.load``): a ``torch.nn.Module`` with the student's own
``preprocess`` and ``forward``, not a ``PreTrainedModel``. transformers takes 5-40 s to import on a loaded CPU and
``import zoo`` (and ``zoo --help``) must stay fast, so the two classes are registered when transformers' auto
modules are imported, not before: ``install()`` adds an import hook for them (or registers at once when they are
already imported).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

MODEL_TYPE = "distill-zoo"  # the same as students.base.MODEL_TYPE (that module imports torch)
_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
_MODELING_MODULE = "transformers.models.auto.modeling_auto"


def _config_class():
    from transformers import PretrainedConfig

    class DistillZooConfig(PretrainedConfig):
        """A student's config.json as transformers reads it: every key kept as an attribute."""

        model_type = MODEL_TYPE

    return DistillZooConfig


_CLASSES: dict = {}


def _register_config(module) -> None:
    if "config" not in _CLASSES:
        _CLASSES["config"] = _config_class()
        module.AutoConfig.register(MODEL_TYPE, _CLASSES["config"], exist_ok=True)


def _register_model(module) -> None:
    from transformers.models.auto import configuration_auto

    _register_config(configuration_auto)
    if "model" in _CLASSES:
        return

    class DistillZooAutoModel:
        """What ``AutoModel`` dispatches to for a student: ``zoo.load`` (strict, safetensors only)."""

        config_class = _CLASSES["config"]

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
            from zoo.students import load_student

            keep = ("subfolder", "revision", "cache_dir", "token")
            return load_student(pretrained_model_name_or_path, **{k: kwargs[k] for k in keep if kwargs.get(k)})

    _CLASSES["model"] = DistillZooAutoModel
    module.AutoModel.register(_CLASSES["config"], DistillZooAutoModel, exist_ok=True)


_HOOKS = {_CONFIG_MODULE: _register_config, _MODELING_MODULE: _register_model}


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Runs ``_HOOKS[name](module)`` right after one of transformers' auto modules has been executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _HOOKS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _HOOKS[fullname](module)

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` know students: now if transformers' auto modules are loaded, else when
    they are."""
    if not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
    for name, hook in _HOOKS.items():
        if name in sys.modules:
            hook(sys.modules[name])
