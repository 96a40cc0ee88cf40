"""Teacher adapters over transformers models: classifiers, bare encoders and CLIP-style dual encoders.

Each adapter loads the model with ``use_safetensors=True`` from a local folder (``load_teacher`` turns a hub
id into one first) together with the teacher's own preprocessing from the same folder: its tokenizer
(``AutoTokenizer``), image processor (``AutoImageProcessor``) or feature extractor (``AutoFeatureExtractor``).

Features are the model's ``hidden_states``, named ``"layer.<i>"`` (``layer.0`` is the embedding output); CLIP
prefixes them with ``vision.`` / ``text.``.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.modalities.text import count_truncated
from zoo.teachers.base import Teacher, TeacherOutput, hash_files, hash_json, masked_mean, to_pil_rgb, waveform_at

# Architecture suffix of a transformers classifier -> the modality it takes.
CLASSIFIER_SUFFIXES = {
    "ForSequenceClassification": "text",
    "ForImageClassification": "image",
    "ForAudioClassification": "audio",
}


def safetensors_files(folder: str) -> list[str]:
    """The ``*.safetensors`` weight files of a folder; an error that says how to convert when there are none."""
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        present = sorted(os.listdir(folder))[:12]
        raise FileNotFoundError(
            f"teacher folder {folder!r} holds no *.safetensors weights (files: {present}); teachers load safetensors "
            "only. Re-save the model with model.save_pretrained(folder, safe_serialization=True)."
        )
    return files


def _load_model(auto_cls, folder: str, trust_remote_code: bool, **kwargs):
    safetensors_files(folder)  # a clear error for a pickle-only folder
    try:
        return auto_cls.from_pretrained(folder, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load a {auto_cls.__name__} teacher from {folder!r}: {e}") from e


def _load_processor(kind: str, folder: str, trust_remote_code: bool):
    """The teacher's tokenizer / image processor / feature extractor saved next to its weights."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    auto, saved_as = {
        "text": (AutoTokenizer, "tokenizer.save_pretrained(folder)"),
        "image": (AutoImageProcessor, "image_processor.save_pretrained(folder)"),
        "audio": (AutoFeatureExtractor, "feature_extractor.save_pretrained(folder)"),
    }[kind]
    try:
        return auto.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FileNotFoundError(
            f"teacher folder {folder!r} has no usable {kind} preprocessing ({e}); save the teacher's own "
            f"processor to the same folder with {saved_as}."
        ) from e


def processor_config(processor) -> dict:
    """What determines a processor's output: the tokenizer's full JSON, or an image/audio processor's dict."""
    backend = getattr(processor, "backend_tokenizer", None)
    if backend is not None:
        return {
            "tokenizer": json.loads(backend.to_str()),
            "padding_side": processor.padding_side,
            "truncation_side": processor.truncation_side,
        }
    if hasattr(processor, "get_vocab"):  # slow tokenizer
        return {"vocab": processor.get_vocab(), "class": type(processor).__name__}
    return {"class": type(processor).__name__, **processor.to_dict()}


def _model_identity(model, folder: str, name: str, revision: str | None) -> dict:
    return {
        "model_id": name,
        "revision": revision,
        "weights_sha256": hash_files(safetensors_files(folder)),
        "config_sha256": hash_json(model.config.to_dict()),
    }


def _text_max_length(tokenizer, config, max_length: int | None) -> int:
    """Explicit max_length, else the tokenizer's (when set), capped by the model's position table."""
    limit = getattr(config, "max_position_embeddings", None) or 512
    if max_length is not None:
        if max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds the teacher's max_position_embeddings {limit}.")
        return max_length
    tok_max = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else limit
    return min(tok_max, limit)


class _Processors:
    """Runs one modality's HF processor on the raw values of the present samples."""

    def truncated(self, values) -> int:
        """How many text values this preprocessing cuts at ``max_length`` (other modalities: 0)."""
        if self.modality != "text" or not self.max_length:
            return 0
        return count_truncated(self.processor, values, self.max_length)

    def __init__(self, modality: str, processor, max_length: int | None = None):
        self.modality = modality
        self.processor = processor
        self.max_length = max_length
        self.kwargs: dict[str, Any] = {}
        if modality == "audio":
            self.sampling_rate = int(processor.sampling_rate)
            params = inspect.signature(processor.__call__).parameters
            if "padding" in params:  # variable-length extractors (wav2vec2) need it to stack a batch
                self.kwargs["padding"] = "longest"
            if "return_attention_mask" in params:
                self.kwargs["return_attention_mask"] = True

    def config(self) -> dict:
        return {"modality": self.modality, "processor": processor_config(self.processor), "max_length": self.max_length}

    def __call__(self, values: list, ids: list) -> dict[str, Tensor]:
        if self.modality == "text":
            for v, i in zip(values, ids):
                if not isinstance(v, str) or not v.strip():
                    raise ValueError(f"text of sample {i!r} is {v!r}; expected a non-empty str (or None when absent).")
            enc = self.processor(values, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if self.modality == "image":
            images = [to_pil_rgb(v, i) for v, i in zip(values, ids)]
            return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}
        waves = [waveform_at(v, self.sampling_rate, i) for v, i in zip(values, ids)]
        enc = self.processor(waves, sampling_rate=self.sampling_rate, return_tensors="pt", **self.kwargs)
        return dict(enc.items())


def _hidden_features(hidden_states, layers: list[str], prefix: str = "") -> dict[str, Tensor]:
    want = {n for n in layers if n.startswith(prefix + "layer.")}
    return {f"{prefix}layer.{i}": h for i, h in enumerate(hidden_states or ()) if f"{prefix}layer.{i}" in want}


class HFTeacher(Teacher):
    """Classifier or bare encoder over one modality (text, image or audio).

    Classifiers (``AutoModelFor{Sequence,Image,Audio}Classification``) return logits and id2label;
    ``embeds`` is the pooled last hidden state. Bare encoders (``AutoModel``) return embeds and features only:
    for text the masked mean of the last hidden state (the sentence-transformers recipe, which ``1_Pooling``
    and ``modules.json`` in the folder can switch to CLS pooling and L2 normalisation), else ``pooling``.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        modality: str,
        name: str,
        identity: dict,
        classifier: bool,
        max_length: int | None = None,
        pooling: str = "mean",
        normalize: bool = False,
        autocast=None,
    ):
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling {pooling!r}: expected 'mean' or 'cls'.")
        config = model.config
        if modality == "text":
            max_length = _text_max_length(processor, config, max_length)
        self.processors = _Processors(modality, processor, max_length)
        n_layers = _num_hidden_states(model)
        num_classes = int(config.num_labels) if classifier else None
        id2label = {int(k): str(v) for k, v in config.id2label.items()} if classifier else None
        super().__init__(
            model,
            modality=modality,
            name=name,
            num_classes=num_classes,
            id2label=id2label,
            feature_layers=[f"layer.{i}" for i in range(n_layers)],
            preprocess_config=self.processors.config(),
            identity={**identity, "classifier": classifier, "pooling": pooling, "normalize": normalize},
            autocast=autocast,
        )
        self.classifier = classifier
        self.pooling = pooling
        self.normalize = normalize

    def _preprocess(self, values, ids):
        return self.processors(values, ids)

    def truncated(self, samples) -> int:
        return self.processors.truncated([s.get("text") for s in samples])

    def _pool(self, name, value, inputs):
        if value.dim() == 3 and self.modality == "text" and self.pooling == "mean":
            return masked_mean(value, inputs.get("attention_mask"))
        if value.dim() == 3 and self.pooling == "cls":
            return value[:, 0]
        return super()._pool(name, value, inputs)

    def _forward(self, inputs, layers, pool):
        out = self.model(**inputs, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states
        last = getattr(out, "last_hidden_state", None)
        if last is None:
            last = hidden[-1]
        embeds = self._pool("embeds", last, inputs)
        if self.normalize:
            embeds = torch.nn.functional.normalize(embeds, dim=-1)
        features = _hidden_features(hidden, layers)
        if pool:
            features = {k: self._pool(k, v, inputs) for k, v in features.items()}
        return TeacherOutput(logits=out.logits if self.classifier else None, features=features, embeds=embeds)


def _num_hidden_states(model) -> int:
    """How many hidden states the model returns (embedding output + one per layer or stage)."""
    config = getattr(model.config, "text_config", None) or model.config
    for attr in ("num_hidden_layers", "num_layers"):
        n = getattr(config, attr, None)
        if isinstance(n, int):
            return n + 1
    depths = getattr(config, "depths", None)
    if depths:
        return len(depths) + 1
    raise ValueError(f"cannot tell how many hidden states a {type(model).__name__} returns; pass a supported model.")


def _sentence_transformers_pooling(folder: str) -> tuple[str | None, bool]:
    """(pooling, normalize) from a sentence-transformers folder (1_Pooling/config.json, modules.json)."""
    pooling, normalize = None, False
    pool_cfg = os.path.join(folder, "1_Pooling", "config.json")
    if os.path.isfile(pool_cfg):
        with open(pool_cfg) as f:
            cfg = json.load(f)
        if cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif cfg.get("pooling_mode_mean_tokens"):
            pooling = "mean"
    modules = os.path.join(folder, "modules.json")
    if os.path.isfile(modules):
        with open(modules) as f:
            normalize = any(str(m.get("type", "")).endswith("Normalize") for m in json.load(f))
    return pooling, normalize


def load_hf_classifier(
    folder: str,
    *,
    modality: str,
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    autocast=None,
    max_length: int | None = None,
) -> HFTeacher:
    """A transformers ``AutoModelFor{Sequence,Image,Audio}Classification`` teacher from a local folder."""
    from transformers import (
        AutoModelForAudioClassification,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    auto = {
        "text": AutoModelForSequenceClassification,
        "image": AutoModelForImageClassification,
        "audio": AutoModelForAudioClassification,
    }[modality]
    processor = _load_processor(modality, folder, trust_remote_code)
    model = _load_model(auto, folder, trust_remote_code)
    return HFTeacher(
        model,
        processor,
        modality=modality,
        name=name,
        identity=_model_identity(model, folder, name, revision),
        classifier=True,
        max_length=max_length,
        autocast=autocast,
    )


def load_hf_encoder(
    folder: str,
    *,
    modality: str,
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    autocast=None,
    max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> HFTeacher:
    """A bare transformers encoder (``AutoModel``) as a feature / embedding teacher from a local folder.

    ``pooling`` and ``normalize`` default to the sentence-transformers settings saved in the folder, else
    mean pooling without normalisation.
    """
    from transformers import AutoModel

    st_pooling, st_normalize = _sentence_transformers_pooling(folder)
    processor = _load_processor(modality, folder, trust_remote_code)
    model = _load_model(AutoModel, folder, trust_remote_code)
    return HFTeacher(
        model,
        processor,
        modality=modality,
        name=name,
        identity=_model_identity(model, folder, name, revision),
        classifier=False,
        max_length=max_length,
        pooling=pooling or st_pooling or "mean",
        normalize=st_normalize if normalize is None else normalize,
        autocast=autocast,
    )


class CLIPTeacher(Teacher):
    """CLIP-style dual encoder (``get_image_features`` / ``get_text_features`` / ``logit_scale``).

    Modalities:
        "image": embeds = L2-normalised image embeddings; with ``class_prompts`` it is a zero-shot classifier:
            logits (B, C) = logit_scale * image_embeds @ prompt_embeds.T.
        "text": embeds = L2-normalised text embeddings.
        "image-text": samples carrying both an image and a text; logits (B, B) = logit_scale * image_embeds @
            text_embeds.T (row i: image i against every text of the batch), features "image_embeds" and
            "text_embeds" (B, P). Logits depend on the batch, so the cache stores the embeddings and rebuilds them.
    Hidden states are features "vision.layer.<i>" and "text.layer.<i>".
    """

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        *,
        modality: str,
        name: str,
        identity: dict,
        class_prompts: Sequence[str] | dict[str, str] | None = None,
        max_length: int | None = None,
        autocast=None,
    ):
        if modality not in ("image", "text", "image-text"):
            raise ValueError(f"a CLIP teacher takes modality 'image', 'text' or 'image-text'; got {modality!r}.")
        if class_prompts is not None and modality != "image":
            raise ValueError("class_prompts make a zero-shot image classifier; use them with modality='image'.")
        text_cfg = model.config.text_config
        self.text = _Processors("text", tokenizer, _text_max_length(tokenizer, text_cfg, max_length))
        self.image = _Processors("image", image_processor)
        pre: dict[str, Any] = {"modality": modality}
        layers: list[str] = []
        if modality in ("image", "image-text"):
            pre["image"] = self.image.config()
            layers += [f"vision.layer.{i}" for i in range(model.config.vision_config.num_hidden_layers + 1)]
        if modality in ("text", "image-text") or class_prompts is not None:
            pre["text"] = self.text.config()
        if modality in ("text", "image-text"):
            layers += [f"text.layer.{i}" for i in range(text_cfg.num_hidden_layers + 1)]
        if modality == "image-text":
            layers += ["image_embeds", "text_embeds"]
        labels = None
        if class_prompts is not None:
            if isinstance(class_prompts, dict):
                labels, prompts = list(class_prompts), list(class_prompts.values())
            else:
                labels = prompts = list(class_prompts)
            if not prompts:
                raise ValueError("class_prompts is empty; pass one prompt per class, e.g. 'a photo of a cat'.")
        super().__init__(
            model,
            modality=modality,
            name=name,
            num_classes=len(labels) if labels else None,
            id2label=dict(enumerate(labels)) if labels else None,
            feature_layers=layers,
            preprocess_config=pre,
            identity={**identity, "class_prompts": class_prompts},
            autocast=autocast,
        )
        self.logit_scale = float(model.logit_scale.exp())
        if modality == "image-text":
            self.similarity_scale = self.logit_scale
        self.register_buffer("prompt_embeds", None)
        if class_prompts is not None:
            ids = list(range(len(prompts)))
            with torch.no_grad():
                self.prompt_embeds = self._text_embeds(self.text(prompts, ids), [])[0]

    def _values(self, sample):
        if self.modality == "image-text":
            text, image = sample.get("text"), sample.get("image")
            return None if text is None or image is None else (text, image)
        return sample.get(self.modality)

    def truncated(self, samples) -> int:
        return self.text.truncated([s.get("text") for s in samples])

    def _preprocess(self, values, ids):
        if self.modality == "image":
            return self.image(values, ids)
        if self.modality == "text":
            return self.text(values, ids)
        return {**self.text([v[0] for v in values], ids), **self.image([v[1] for v in values], ids)}

    def _pool(self, name, value, inputs):
        if value.dim() == 3 and name.startswith("text."):
            return masked_mean(value, inputs.get("attention_mask"))
        return super()._pool(name, value, inputs)

    @staticmethod
    def _pooled(out) -> Tensor:
        return out if isinstance(out, Tensor) else out.pooler_output  # transformers < 5 returned the tensor

    def _text_embeds(self, inputs, layers):
        text_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        out = self.model.get_text_features(**text_inputs, output_hidden_states=True)
        hidden = getattr(out, "hidden_states", None)
        return torch.nn.functional.normalize(self._pooled(out), dim=-1), _hidden_features(hidden, layers, "text.")

    def _image_embeds(self, inputs, layers):
        out = self.model.get_image_features(pixel_values=inputs["pixel_values"], output_hidden_states=True)
        hidden = getattr(out, "hidden_states", None)
        return torch.nn.functional.normalize(self._pooled(out), dim=-1), _hidden_features(hidden, layers, "vision.")

    def _forward(self, inputs, layers, pool):
        features: dict[str, Tensor] = {}
        logits = None
        if self.modality == "text":
            embeds, features = self._text_embeds(inputs, layers)
        else:
            embeds, features = self._image_embeds(inputs, layers)
            if self.prompt_embeds is not None:
                logits = self.logit_scale * embeds @ self.prompt_embeds.T
            if self.modality == "image-text":
                text_embeds, text_features = self._text_embeds(inputs, layers)
                features.update(text_features)
                logits = self.logit_scale * embeds @ text_embeds.T
                for key, value in (("image_embeds", embeds), ("text_embeds", text_embeds)):
                    if key in layers:
                        features[key] = value
        if pool:
            features = {k: self._pool(k, v, inputs) for k, v in features.items()}
        return TeacherOutput(logits=logits, features=features, embeds=embeds)


def load_clip(
    folder: str,
    *,
    modality: str,
    name: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    autocast=None,
    class_prompts: Sequence[str] | dict[str, str] | None = None,
    max_length: int | None = None,
) -> CLIPTeacher:
    """A CLIP-style dual encoder teacher (``AutoModel`` + tokenizer + image processor) from a local folder."""
    from transformers import AutoModel

    tokenizer = _load_processor("text", folder, trust_remote_code)
    image_processor = _load_processor("image", folder, trust_remote_code)
    model = _load_model(AutoModel, folder, trust_remote_code)
    for attr in ("get_image_features", "get_text_features", "logit_scale"):
        if not hasattr(model, attr):
            raise ValueError(f"{folder!r} holds a {type(model).__name__}, not a CLIP-style dual encoder (no {attr}).")
    return CLIPTeacher(
        model,
        tokenizer,
        image_processor,
        modality=modality,
        name=name,
        identity=_model_identity(model, folder, name, revision),
        class_prompts=class_prompts,
        max_length=max_length,
        autocast=autocast,
    )
