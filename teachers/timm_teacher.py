"""Teacher adapter over timm image models, with features from ``forward_intermediates``.

A timm teacher folder is what ``timm.models.save_for_hf(model, folder, safe_serialization=True)`` writes (and
what a ``timm/...`` hub repo holds): ``config.json`` (architecture, model args, pretrained_cfg) and
``model.safetensors``. The model is rebuilt with ``pretrained=False`` and the weights are loaded strictly from
safetensors (timm's own local-dir loader would fall back to pickled checkpoints). Preprocessing is timm's eval
transform from ``timm.data.resolve_data_config`` + ``create_transform`` (resize, center crop, normalise).
"""

from __future__ import annotations

import os

import torch

from zoo.teachers.base import Teacher, TeacherOutput, hash_files, hash_json, to_pil_rgb


def is_timm_folder(folder: str) -> bool:
    """True when ``folder/config.json`` is a timm config (it names an ``architecture``)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return False
    import json

    with open(path) as f:
        cfg = json.load(f)
    return "architecture" in cfg and "model_type" not in cfg


class TimmTeacher(Teacher):
    """A timm classifier: logits from ``forward_head``, features ``stage.<i>`` from ``forward_intermediates``
    (NCHW maps; for ViTs the patch tokens reshaped to a grid), embeds = ``forward_head(pre_logits=True)``."""

    def __init__(self, model, *, name: str, identity: dict, autocast=None):
        import timm.data

        self.data_config = timm.data.resolve_data_config({}, model=model)
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)
        num_classes = int(getattr(model, "num_classes", 0)) or None
        super().__init__(
            model,
            modality="image",
            name=name,
            num_classes=num_classes,
            id2label=None,
            feature_layers=[f"stage.{i}" for i in range(len(model.feature_info))],
            preprocess_config={"data_config": self.data_config, "transform": repr(self.transform)},
            identity=identity,
            autocast=autocast,
        )

    def _preprocess(self, values, ids):
        return {"pixel_values": torch.stack([self.transform(to_pil_rgb(v, i)) for v, i in zip(values, ids)])}

    def _forward(self, inputs, layers, pool):
        indices = sorted(int(n.split(".")[1]) for n in layers)
        x = inputs["pixel_values"]
        if indices:
            final, inter = self.model.forward_intermediates(x, indices=indices)
            features = {f"stage.{i}": t for i, t in zip(indices, inter)}
        else:
            final, features = self.model.forward_features(x), {}
        embeds = self.model.forward_head(final, pre_logits=True)
        logits = self.model.get_classifier()(embeds) if self.num_classes else None
        if pool:
            features = {k: self._pool(k, v, inputs) for k, v in features.items()}
        return TeacherOutput(logits=logits, features=features, embeds=embeds)


def load_timm(folder: str, *, name: str, revision: str | None = None, autocast=None) -> TimmTeacher:
    """A timm teacher from a folder saved by ``timm.models.save_for_hf(..., safe_serialization=True)``."""
    import safetensors.torch
    import timm
    from timm.models._hub import load_model_config_from_path

    weights = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"timm teacher folder {folder!r} has no model.safetensors; teachers load safetensors only. Save it with "
            "timm.models.save_for_hf(model, folder, safe_serialization=True)."
        )
    pretrained_cfg, arch, model_args = load_model_config_from_path(folder)
    model = timm.create_model(arch, pretrained=False, pretrained_cfg=pretrained_cfg, **(model_args or {}))
    state = safetensors.torch.load_file(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights!r} does not match timm architecture {arch!r}: {e}") from e
    identity = {
        "model_id": name,
        "revision": revision,
        "architecture": arch,
        "model_args": model_args,
        "weights_sha256": hash_files([weights]),
        "config_sha256": hash_json(pretrained_cfg),
    }
    return TimmTeacher(model, name=name, identity=identity, autocast=autocast)
