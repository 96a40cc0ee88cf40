"""The student contract: what the trainer, compression, export and cards need from a student family.

A family subclasses ``Student`` and implements ``forward_features``, ``forward_head``, ``forward_intermediates``,
``token_grid`` and ``reset_head`` (fresh heads, to fine-tune on other labels); it declares its own structure to generic
code with ``no_weight_decay()`` (as timm models do) and ``prunable_groups()`` / ``pruned_config(counts)`` (which widths
structured pruning may cut, and the config of the student with those widths). ``Student`` gives the rest from the
modality registry and the config dataclass (``config_class``: ``modalities``, ``tasks``, ``architecture``,
``quantization``, one field per modality): ``forward``, ``preprocessors``, ``preprocess``, ``input_names``,
``set_tokenizer`` and strict save / load of config.json + model.safetensors (never pickle). ``load_student``
(``zoo.load``) reads config.json's ``architecture``, finds the family through ``zoo.registry`` and re-applies the int8
scheme a config records.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from zoo.auto import MODEL_TYPE  # config.json's model_type: transformers' AutoConfig / AutoModel find students by it
from zoo.cards import build_card
from zoo.compress.quant import apply_quantization_scheme
from zoo.hub import resolve_model_folder
from zoo.io import check_finite, load_state_dict_checked, replace_folder_contents, save_state_dict_atomic
from zoo.modalities import MODALITIES, collate, input_keys, load_tokenizer
from zoo.registry import model_class
from zoo.runs import METRICS_NAME

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class PruneSlice:
    """One tensor a prunable unit owns: along ``dim``, laid out as ``chunks`` x units x ``unit_size``."""

    key: str
    dim: int
    unit_size: int = 1
    chunks: int = 1


@dataclass
class PruneGroup:
    """A set of units pruned together (one layer's channels, heads or neurons), with the tensors each owns."""

    kind: str  # e.g. conv | heads | mlp | stem: what ``prune_student(targets=...)`` selects by
    name: str  # e.g. conv_hidden.0: ``pruned_config`` receives the kept count under this name
    units: int
    slices: list[PruneSlice] = field(default_factory=list)

    def indices(self, keep: torch.Tensor, s: PruneSlice) -> torch.Tensor:
        """Positions along ``s.dim`` of the kept units (sorted), for every chunk."""
        offs = torch.arange(s.unit_size)
        per_chunk = (keep[:, None] * s.unit_size + offs).flatten()
        return torch.cat([c * self.units * s.unit_size + per_chunk for c in range(s.chunks)])


class Student(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="distill-zoo",
    tags=["distill-zoo", "distillation", "multimodal"],
    repo_url="https://github.com/distill-zoo/distill-zoo",
    docs_url="https://github.com/distill-zoo/distill-zoo#readme",
):
    """Base class of every student family (see the module docstring for the contract)."""

    config_class: type = None  # the family's config dataclass (``from_dict``, ``to_dict``)

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tokenizer = None
        self.source_folder: Path | None = None  # set by from_pretrained / zoo.load

    # -- what a family implements ---------------------------------------------------------------------------------
    def forward_features(self, **inputs) -> torch.Tensor:
        """Pooled features (B, D) of a batch from ``preprocess``."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, task: str | None = None, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, classes) of ``task`` (default: the first) from pooled features; ``pre_logits``: the head input."""
        raise NotImplementedError

    def forward_intermediates(self, indices=None, intermediates_only: bool = False, **inputs):
        """(pooled features, [{modality: tokens (B, N_m, D)} after each chosen block]), for feature KD."""
        raise NotImplementedError(f"{type(self).__name__} gives no intermediates; feature KD needs them.")

    def token_grid(self, modality: str) -> tuple[int, int]:
        """(h, w) of a modality's token grid, to reshape tokens into feature maps."""
        raise NotImplementedError

    def reset_head(self, tasks: dict[str, int], id2label: dict | None = None) -> None:
        """Replace the task heads with fresh ones, ``tasks``: name -> outputs (fine-tuning on other labels)."""
        raise NotImplementedError(f"{type(self).__name__} cannot replace its heads.")

    def blank_copy(self) -> Student:
        """The same architecture, config and tokenizer, freshly initialised (from the current torch seed): the
        baseline a pretrained student is measured against."""
        blank = type(self)(copy.deepcopy(self.config))
        if self.tokenizer is not None:
            blank.set_tokenizer(self.tokenizer)
        return blank

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (beyond vectors) that get no weight decay, e.g. position embeddings."""
        return set()

    def prunable_groups(self) -> list[PruneGroup]:
        """The widths structured pruning may cut; none by default (the student is not prunable)."""
        return []

    def pruned_config(self, counts: dict[str, int]):
        """A copy of the config with each group's width set to ``counts[group.name]`` (others keep theirs)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be pruned.")

    # -- shared ---------------------------------------------------------------------------------------------------
    def forward(self, task: str | None = None, **inputs) -> torch.Tensor:
        """Logits (B, num_classes) of ``task`` (default: the first task) for a batch from ``preprocess``."""
        return self.forward_head(self.forward_features(**inputs), task)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def input_names(self) -> list[str]:
        """The flat batch keys the student takes, in order (the ONNX graph's inputs)."""
        return input_keys(self.config.modalities)

    def set_tokenizer(self, tokenizer) -> None:
        """Attach the text tokenizer (saved with the student). Its vocabulary must fit the text embedding."""
        if "text" not in self.config.modalities:
            raise ValueError("this student takes no text; build it with 'text' in modalities to attach a tokenizer.")
        MODALITIES["text"].preprocessor(tokenizer, self.config.text)  # validates the vocabulary size
        self.tokenizer = tokenizer

    def preprocessors(self) -> dict:
        """The student's own preprocessing, one per modality: raw inputs -> tensors."""
        pre = {}
        for m in self.config.modalities:
            desc = MODALITIES[m]
            if desc.needs_tokenizer:
                if self.tokenizer is None:
                    raise ValueError(
                        "this student has no tokenizer: call student.set_tokenizer(tok) with a teacher's tokenizer "
                        "(zoo.modalities.text.load_tokenizer(folder)) or one trained with train_wordpiece_tokenizer()."
                    )
                pre[m] = desc.preprocessor(self.tokenizer, getattr(self.config, m))
            else:
                pre[m] = desc.preprocessor(getattr(self.config, m))
        return pre

    def preprocess(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """Raw samples (dicts with text / image / audio / label) -> the batch ``forward`` takes, plus labels."""
        return collate(samples, self.preprocessors())

    # -- save / load ----------------------------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """config.json + model.safetensors (+ tokenizer files). The mixin writes config.json; we write the rest."""
        save_state_dict_atomic(self.state_dict(), save_directory / WEIGHTS_NAME, metadata={"format": "pt"})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(save_directory))

    def save_pretrained(self, save_directory, **kwargs):
        """Write config.json, model.safetensors and the tokenizer to ``save_directory`` (created if needed).

        Files are written to a temporary folder beside it and renamed in one by one, so an interrupted save
        leaves the previous files whole. The model card (README.md) is written by ``zoo card``, not here, except
        for a repo: with ``model_card_kwargs={"repo_id": ...}`` (what ``push_to_hub`` passes), a student loaded from a
        run folder also gets that folder's card (``generate_model_card``), metrics.json and plots, as ``zoo push``.
        """
        dst = Path(save_directory)
        dst.mkdir(parents=True, exist_ok=True)
        if kwargs.get("config") is None:  # push_to_hub passes config=None
            kwargs["config"] = {"model_type": MODEL_TYPE, **self.config.to_dict()}
        run_folder = self._run_folder() if (kwargs.get("model_card_kwargs") or {}).get("repo_id") else None
        tmp = Path(tempfile.mkdtemp(prefix=f".save-{os.getpid()}-", dir=dst.parent))  # pid: zoo.io.clean_leftovers
        try:
            out = super().save_pretrained(tmp, **kwargs)
            if run_folder is not None:
                for p in [run_folder / METRICS_NAME, *sorted(run_folder.glob("*.png"))]:
                    shutil.copyfile(p, tmp / p.name)
            # without a run folder, the mixin's generic README says nothing true about this student
            names = [p.name for p in tmp.iterdir() if run_folder is not None or p.name != "README.md"]
            replace_folder_contents(tmp, dst, names)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def push_to_hub(self, repo_id: str, **kwargs):
        """The mixin's upload (config.json, model.safetensors, tokenizer) plus what ``zoo push`` uploads for a
        student loaded from a run folder: its card rendered for ``repo_id``, metrics.json and plots."""
        card_kwargs = {"repo_id": repo_id, **(kwargs.pop("model_card_kwargs", None) or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card_kwargs, **kwargs)

    def generate_model_card(self, *args, **kwargs):
        """The mixin's card hook: the zoo card (``zoo.cards.build_card``) of the run folder the student was loaded
        from, for ``repo_id``; the mixin's generic card for a student without one."""
        run_folder = self._run_folder()
        if run_folder is None:
            return super().generate_model_card(*args, **kwargs)
        return build_card(run_folder, repo_id=kwargs.get("repo_id"), make_plot=False)

    def _run_folder(self) -> Path | None:
        """The folder this student was loaded from when it holds a run's metrics.json (see ``zoo.runs``)."""
        folder = getattr(self, "source_folder", None)
        return folder if folder is not None and (folder / METRICS_NAME).exists() else None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a student of this family from a local folder or a hub id, strictly, from safetensors only.

        Errors name the folder and file at fault: a missing file, a truncated or corrupt safetensors file, a
        config.json with unknown keys, or weights whose names or shapes do not match the config.
        """
        folder = resolve_model_folder(
            pretrained_model_name_or_path,
            revision=kwargs.pop("revision", None),
            cache_dir=kwargs.pop("cache_dir", None),
            token=kwargs.pop("token", None),
            subfolder=kwargs.pop("subfolder", None),
        )
        return cls._load_folder(folder, map_location=kwargs.pop("map_location", "cpu"))

    @classmethod
    def _load_folder(cls, folder: Path, map_location: str = "cpu") -> Student:
        config_path = folder / CONFIG_NAME
        data = _read_config(config_path)
        data.pop("model_type", None)
        config = cls.config_class.from_dict(data, source=str(config_path))
        model = cls(config)
        if config.quantization:  # the int8 layers the weights were converted to
            apply_quantization_scheme(model, config.quantization)
        state = load_state_dict_checked(folder / WEIGHTS_NAME, device=map_location)
        check_finite(state, str(folder / WEIGHTS_NAME))
        expected = model.state_dict()
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        if missing or unexpected:
            raise ValueError(
                f"{folder / WEIGHTS_NAME} does not match {config_path}: missing keys {sorted(missing)[:8]}, "
                f"unexpected keys {sorted(unexpected)[:8]}. The weights were saved from a different architecture."
            )
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise ValueError(
                    f"{folder / WEIGHTS_NAME}: tensor {k!r} has shape {tuple(v.shape)} but {config_path} implies "
                    f"{tuple(expected[k].shape)}. The config and the weights come from different students."
                )
        model.load_state_dict(state, strict=True)
        if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
            model.set_tokenizer(load_tokenizer(folder))
        model.eval()
        model.source_folder = folder  # where its card and metrics are (generate_model_card, push_to_hub)
        return model


def _read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-save the student with save_pretrained.") from e


def load_student(name_or_path: str | os.PathLike, **kwargs) -> Student:
    """Any saved student (pruned, quantized or not) from a folder, a hub id or a catalogue name: the family is the
    one registered for config.json's ``architecture`` (``zoo.registry.model_class``). ``subfolder="int8"`` (or
    ``"org/name/int8"``) loads one of a run's other students; ``revision``, ``cache_dir``, ``token`` as in
    huggingface_hub."""
    folder = resolve_model_folder(
        name_or_path,
        revision=kwargs.pop("revision", None),
        cache_dir=kwargs.pop("cache_dir", None),
        token=kwargs.pop("token", None),
        subfolder=kwargs.pop("subfolder", None),
    )
    architecture = _read_config(folder / CONFIG_NAME).get("architecture")
    return model_class(architecture)._load_folder(folder, map_location=kwargs.pop("map_location", "cpu"))
