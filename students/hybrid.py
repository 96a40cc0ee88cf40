"""Hybrid Transformer+CNN students: conv blocks mix locally, attention blocks mix globally across modalities.

Layout (shapes for a batch of B samples, embed dim D)::

    text  ids (B, L)            -> TextStem  -> (B, L, D)      grid (1, L)
    image (B, C, S, S)          -> ImageStem -> (B, S/p^2, D)  grid (S/p, S/p)
    audio log-mel (B, M, F)     -> AudioStem -> (B, M/p*F/p, D) grid (M/p, F/p)
      + a learned modality embedding each
    conv blocks (shared weights): per modality in its own grid, inverted-residual 1x1 -> depthwise kxk -> 1x1
    attention blocks (shared):    over the concatenated tokens of all present modalities, masked per sample
    pool: masked mean per modality, then mean over the modalities a sample carries -> norm -> one head per task

The conv-then-attention order follows hybrid designs such as CoAtNet (Dai et al., 2021) and FastViT
(Vasu et al., 2023): convolutions are cheap where sequences are long and local structure matters; attention
follows once every modality's tokens can see each other. Every width that pruning changes is a per-block list in
``HybridConfig``, so a pruned student is rebuilt from its config.json alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from timm.layers import DropPath, LayerNorm2d, Mlp, get_act_layer
from torch import nn

from zoo.modalities import MODALITIES, check_modalities, collate
from zoo.modalities.audio import AudioConfig, AudioPreprocessor, AudioStem
from zoo.modalities.image import ImageConfig, ImagePreprocessor, ImageStem
from zoo.modalities.text import TextConfig, TextPreprocessor, TextStem

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_SUB_CONFIGS = {"text": TextConfig, "image": ImageConfig, "audio": AudioConfig}


@dataclass
class HybridConfig:
    """Everything that determines a hybrid student's architecture; saved as config.json.

    Args:
        modalities: the modalities the student takes (subset of text, image, audio).
        tasks: task name -> number of classes; one head each. The first task is the default for ``forward``.
        embed_dim: width D of the token stream shared by every block.
        conv_hidden: hidden width of each conv block (one entry per block).
        conv_kernel: depthwise kernel size of the conv blocks.
        attn_heads: number of heads of each attention block (one entry per block).
        head_dim: width of one attention head.
        mlp_hidden: hidden width of each attention block's MLP (one entry per block).
        act: activation of the conv blocks, the MLPs and the conv stems, by timm name ("gelu", "relu", ...). The
            registered students use "relu": an int8 runtime folds a ReLU into the quantization of the next layer's
            input (it costs nothing), where GELU is a float pass over the widest activations of the model. A
            config.json without the key is a GELU student (the default), as every student was before the key.
        text, image, audio: stem settings of each modality the student takes (None otherwise).
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        head_dropout: dropout before the heads.
        id2label: class names of the first task.
        quantization: the int8 scheme when the student is quantized (written by zoo.compress.quant), else None.
        pruning: a record of how the widths were pruned (written by zoo.compress.prune), else None.
        architecture: the registered name the student was built from.
    """

    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    tasks: dict[str, int] = field(default_factory=lambda: {"label": 10})
    embed_dim: int = 128
    conv_hidden: list[int] = field(default_factory=lambda: [384, 384])
    conv_kernel: int = 3
    attn_heads: list[int] = field(default_factory=lambda: [4, 4, 4, 4])
    head_dim: int = 32
    mlp_hidden: list[int] = field(default_factory=lambda: [512, 512, 512, 512])
    act: str = "gelu"
    text: TextConfig | None = None
    image: ImageConfig | None = None
    audio: AudioConfig | None = None
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0
    id2label: dict[str, str] | None = None
    quantization: dict | None = None
    pruning: dict | None = None
    architecture: str = "hybrid"

    def __post_init__(self):
        self.modalities = check_modalities(self.modalities)
        for m, cls in _SUB_CONFIGS.items():
            value = getattr(self, m)
            if isinstance(value, dict):
                value = _dataclass_from_dict(cls, value, f"config.{m}")
            if m in self.modalities and value is None:
                value = cls()
            if m not in self.modalities:
                value = None
            setattr(self, m, value)
        if isinstance(self.tasks, int):
            self.tasks = {"label": self.tasks}
        if not self.tasks or any(int(n) < 1 for n in self.tasks.values()):
            raise ValueError(f"tasks {self.tasks!r}: each task needs at least one class.")
        if len(self.attn_heads) != len(self.mlp_hidden):
            raise ValueError(
                f"attn_heads has {len(self.attn_heads)} entries and mlp_hidden {len(self.mlp_hidden)}; "
                "both list one value per attention block."
            )
        widths = [("embed_dim", [self.embed_dim]), ("conv_hidden", self.conv_hidden), ("attn_heads", self.attn_heads)]
        widths.append(("mlp_hidden", self.mlp_hidden))
        for name, values in widths:
            if any(int(v) < 1 for v in values):
                raise ValueError(f"{name} {values!r}: every width must be >= 1.")
        try:
            get_act_layer(self.act)
        except KeyError:
            raise ValueError(
                f"act {self.act!r} is not an activation timm knows; use e.g. 'relu', 'gelu', 'gelu_tanh' or 'silu'."
            ) from None
        if self.id2label is not None:
            self.id2label = {str(k): str(v) for k, v in self.id2label.items()}
            n = next(iter(self.tasks.values()))
            if len(self.id2label) != n:
                raise ValueError(f"id2label has {len(self.id2label)} entries; the first task has {n} classes.")

    @property
    def num_classes(self) -> int:
        return next(iter(self.tasks.values()))

    @property
    def depth(self) -> int:
        return len(self.conv_hidden) + len(self.attn_heads)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> HybridConfig:
        """Build from a dict, refusing keys this version does not know (a config for another model, or a typo)."""
        return _dataclass_from_dict(cls, data, source)


def _dataclass_from_dict(cls, data: dict, source: str):
    if not isinstance(data, dict):
        raise TypeError(f"{source} must be a JSON object; got {type(data).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source} has unknown keys {unknown}; {cls.__name__} knows {sorted(known)}.")
    return cls(**data)


class ConvBlock(nn.Module):
    """Inverted residual over a token grid: norm -> 1x1 expand -> act -> depthwise kxk -> act -> 1x1 project."""

    def __init__(self, dim: int, hidden: int, kernel_size: int = 3, drop_path: float = 0.0, act_layer=nn.GELU):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.pw1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.pw2 = nn.Conv2d(hidden, dim, 1)
        self.act = act_layer()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, H, W)
        y = self.act(self.pw1(self.norm(x)))
        y = self.pw2(self.act(self.dw(y)))
        return x + self.drop_path(y)


class Attention(nn.Module):
    """Multi-head self-attention with a per-block head count and a fixed head width (so heads can be pruned)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, hd)
        # (B, 1, 1, N): bool (True = attend) or additive float (0 = attend, -inf = masked)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, drop_path: float = 0.0, act_layer=nn.GELU
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=mlp_hidden, act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), key_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


_INPUT_KEYS = {
    "text": ("input_ids", "attention_mask", "text_mask"),
    "image": ("pixel_values", "image_mask"),
    "audio": ("input_features", "audio_mask"),
}


class HybridStudent(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="distill-zoo",
    tags=["distill-zoo", "distillation", "multimodal"],
    repo_url="https://github.com/distill-zoo/distill-zoo",
    docs_url="https://github.com/distill-zoo/distill-zoo#readme",
):
    """The hybrid Transformer+CNN student; build it with ``zoo.create_student`` (layout: module docstring)."""

    def __init__(self, config: HybridConfig | dict):
        super().__init__()
        if isinstance(config, dict):
            config = HybridConfig.from_dict(config)
        self.config = config
        self.tokenizer = None
        D = config.embed_dim
        act = nn.GELU if config.act == "gelu" else get_act_layer(config.act)  # torch's own, as before the key
        stems = {
            "text": TextStem,
            "image": partial(ImageStem, act_layer=act),
            "audio": partial(AudioStem, act_layer=act),
        }
        self.stems = nn.ModuleDict({m: stems[m](getattr(config, m), D) for m in config.modalities})
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, D)) for m in config.modalities})
        dpr = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        n_conv = len(config.conv_hidden)
        self.conv_blocks = nn.ModuleList(
            [ConvBlock(D, h, config.conv_kernel, dpr[i], act) for i, h in enumerate(config.conv_hidden)]
        )
        self.attn_blocks = nn.ModuleList(
            [
                AttentionBlock(D, nh, config.head_dim, mh, dpr[n_conv + i], act)
                for i, (nh, mh) in enumerate(zip(config.attn_heads, config.mlp_hidden))
            ]
        )
        self.norm = nn.LayerNorm(D)
        self.head_drop = nn.Dropout(config.head_dropout)
        self.heads = nn.ModuleDict({t: nn.Linear(D, n) for t, n in config.tasks.items()})
        for p in self.modality_embed.values():
            nn.init.trunc_normal_(p, std=0.02)
        self.apply(self._init_weights)
        if config.quantization:
            from zoo.compress.quant import apply_quantization_scheme

            apply_quantization_scheme(self, config.quantization)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------------------------- inputs
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def set_tokenizer(self, tokenizer) -> None:
        """Attach the text tokenizer (saved with the student). Its vocabulary must fit the text embedding."""
        if "text" not in self.config.modalities:
            raise ValueError("this student takes no text; build it with 'text' in modalities to attach a tokenizer.")
        TextPreprocessor(tokenizer, self.config.text)  # validates the vocabulary size
        self.tokenizer = tokenizer

    def preprocessors(self) -> dict:
        """The student's own preprocessing, one per modality: raw inputs -> tensors."""
        pre = {}
        for m in self.config.modalities:
            if m == "text":
                if self.tokenizer is None:
                    raise ValueError(
                        "this student has no tokenizer: call student.set_tokenizer(tok) with a teacher's tokenizer "
                        "(zoo.modalities.text.load_tokenizer(folder)) or one trained with train_wordpiece_tokenizer()."
                    )
                pre[m] = TextPreprocessor(self.tokenizer, self.config.text)
            elif m == "image":
                pre[m] = ImagePreprocessor(self.config.image)
            else:
                pre[m] = AudioPreprocessor(self.config.audio)
        return pre

    def preprocess(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """Raw samples (dicts with text / image / audio / label) -> the batch ``forward`` takes, plus labels."""
        return collate(samples, self.preprocessors())

    # ---------------------------------------------------------------------------------------------- forward
    def _embed(self, inputs: dict) -> tuple[dict, dict, dict, torch.Tensor]:
        """Inputs -> per-modality tokens (B, N_m, D), grids, token validity (B, N_m) and presence (B, M)."""
        tokens, grids, valid = {}, {}, {}
        unknown = set(inputs) - {k for m in MODALITIES for k in _INPUT_KEYS[m]} - {"labels"}
        if unknown:
            raise TypeError(f"unexpected inputs {sorted(unknown)}; the student takes {sorted(_INPUT_KEYS)} inputs.")
        for m in self.config.modalities:
            main = _INPUT_KEYS[m][0]
            if inputs.get(main) is None:
                continue
            if m == "text":
                x, grid, tok_valid = self.stems[m](inputs["input_ids"], inputs.get("attention_mask"))
            else:
                x, grid = self.stems[m](inputs[main])
                tok_valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            present = inputs.get(f"{m}_mask")
            if present is not None:
                tok_valid = tok_valid & present.to(torch.bool)[:, None]
            tokens[m] = x + self.modality_embed[m]
            grids[m], valid[m] = grid, tok_valid
        if not tokens:
            given = sorted(k for k, v in inputs.items() if v is not None)
            raise ValueError(
                f"no input for any of this student's modalities {self.config.modalities}; got {given}. "
                "Build the batch with student.preprocess(samples)."
            )
        return tokens, grids, valid

    def _blocks(self, inputs: dict, indices: set[int] | None = None):
        """Run every block; yields (block index, tokens per modality) after each block. Returns final state."""
        tokens, grids, valid = self._embed(inputs)
        mods = list(tokens)
        intermediates = []
        i = 0
        for blk in self.conv_blocks:
            for m in mods:
                B, N, D = tokens[m].shape
                h, w = grids[m]
                x = tokens[m].transpose(1, 2).reshape(B, D, h, w)
                x = blk(x).flatten(2).transpose(1, 2)
                tokens[m] = x * valid[m].unsqueeze(-1).to(x.dtype)  # keep padding and absent rows at zero
            if indices is not None and i in indices:
                intermediates.append(dict(tokens))
            i += 1
        sizes = [tokens[m].shape[1] for m in mods]
        x = torch.cat([tokens[m] for m in mods], dim=1)  # (B, N_total, D)
        key_mask = torch.cat([valid[m] for m in mods], dim=1)  # (B, N_total)
        # a row with no valid token at all would make softmax NaN; let it attend to everything (its output is unused)
        key_mask = key_mask | ~key_mask.any(dim=1, keepdim=True)
        # an additive float mask, built once: SDPA adds it to the scores either way, while a bool mask exports to ONNX
        # with a Where and an IsNaN pass over the (B, heads, N, N) scores of every block (~15% of int8 latency)
        attn_bias = torch.zeros_like(key_mask, dtype=x.dtype).masked_fill(~key_mask, float("-inf"))
        for blk in self.attn_blocks:
            x = blk(x, attn_bias)
            if indices is not None and i in indices:
                intermediates.append(dict(zip(mods, x.split(sizes, dim=1))))
            i += 1
        x = self.norm(x)
        per_mod = dict(zip(mods, x.split(sizes, dim=1)))
        return per_mod, valid, intermediates

    def _pool(self, per_mod: dict, valid: dict) -> torch.Tensor:
        """Masked mean over each modality's tokens, then mean over the modalities a sample carries."""
        pooled, weights = [], []
        for m, x in per_mod.items():
            v = valid[m].unsqueeze(-1).to(x.dtype)  # (B, N, 1)
            count = v.sum(1)  # (B, 1)
            pooled.append((x * v).sum(1) / count.clamp(min=1.0))
            weights.append((count > 0).to(x.dtype))
        w = torch.stack(weights, 0)  # (M, B, 1)
        return (torch.stack(pooled, 0) * w).sum(0) / w.sum(0).clamp(min=1.0)  # (B, D)

    def forward_features(self, **inputs) -> torch.Tensor:
        """Pooled, normalised features (B, D) of the batch."""
        per_mod, valid, _ = self._blocks(inputs)
        return self._pool(per_mod, valid)

    def forward_head(self, features: torch.Tensor, task: str | None = None, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(features)
        if pre_logits:
            return x
        return self.heads[task or next(iter(self.heads))](x)

    def forward(self, task: str | None = None, **inputs) -> torch.Tensor:
        """Logits (B, num_classes) of ``task`` (default: the first task) for a batch from ``preprocess``."""
        return self.forward_head(self.forward_features(**inputs), task)

    def forward_all_tasks(self, **inputs) -> dict[str, torch.Tensor]:
        feats = self.forward_features(**inputs)
        return {t: self.forward_head(feats, t) for t in self.heads}

    def forward_intermediates(
        self, indices: int | list[int] | None = None, intermediates_only: bool = False, **inputs
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]] | list[dict[str, torch.Tensor]]:
        """Features after chosen blocks, for feature distillation (the timm convention).

        Blocks are numbered conv blocks first, then attention blocks: 0 .. depth-1. ``indices`` is a list of block
        numbers (negative counts from the end) or an int n for the last n blocks; None means all. Each intermediate
        is ``{modality: tokens (B, N_m, D)}``; ``token_grid(modality)`` gives (h, w) to reshape tokens to a map.
        Returns (pooled features, intermediates), or only the intermediates.
        """
        depth = self.config.depth
        if indices is None:
            idx = list(range(depth))
        elif isinstance(indices, int):
            idx = list(range(depth - indices, depth))
        else:
            idx = [i % depth if -depth <= i < depth else i for i in indices]
        bad = [i for i in idx if not 0 <= i < depth]
        if bad:
            raise IndexError(f"block indices {bad} out of range; this student has {depth} blocks (0..{depth - 1}).")
        per_mod, valid, inter = self._blocks(inputs, set(idx))
        if intermediates_only:
            return inter
        return self._pool(per_mod, valid), inter

    def token_grid(self, modality: str) -> tuple[int, int]:
        """(h, w) of a modality's token grid, to reshape (B, N, D) tokens into (B, D, h, w) feature maps."""
        stem = self.stems[modality]
        return (1, self.config.text.max_length) if modality == "text" else stem.grid

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -------------------------------------------------------------------------------------------- save / load
    def _save_pretrained(self, save_directory: Path) -> None:
        """config.json + model.safetensors (+ tokenizer files). The mixin writes config.json; we write the rest."""
        from zoo.io import save_state_dict_atomic

        save_state_dict_atomic(self.state_dict(), save_directory / WEIGHTS_NAME, metadata={"format": "pt"})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(save_directory))

    def save_pretrained(self, save_directory, **kwargs):
        """Write config.json, model.safetensors and the tokenizer to ``save_directory`` (created if needed).

        Files are written to a temporary folder beside it and renamed in one by one, so an interrupted save
        leaves the previous files whole. The model card (README.md) is written by ``zoo card``, not here.
        """
        import shutil
        import tempfile

        from zoo.io import replace_folder_contents

        dst = Path(save_directory)
        dst.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("config", self.config.to_dict())
        tmp = Path(tempfile.mkdtemp(prefix=".save-", dir=dst.parent))
        try:
            out = super().save_pretrained(tmp, **kwargs)
            # the mixin's generic README says nothing true about this student; cards come from zoo.cards.write_card
            names = [p.name for p in tmp.iterdir() if p.name != "README.md"]
            replace_folder_contents(tmp, dst, names)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a student from a local folder or a hub id (through the HF cache), strictly, from safetensors only.

        Errors name the folder and file at fault: a missing file, a truncated or corrupt safetensors file, a
        config.json with unknown keys, or weights whose names or shapes do not match the config.
        """
        from zoo.io import resolve_model_folder

        folder = resolve_model_folder(
            pretrained_model_name_or_path,
            revision=kwargs.pop("revision", None),
            cache_dir=kwargs.pop("cache_dir", None),
            token=kwargs.pop("token", None),
        )
        return cls._load_folder(folder, map_location=kwargs.pop("map_location", "cpu"))

    @classmethod
    def _load_folder(cls, folder: Path, map_location: str = "cpu") -> HybridStudent:
        from zoo.io import load_state_dict_checked

        config_path = folder / CONFIG_NAME
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path} is not valid JSON ({e}); re-save the student with save_pretrained.") from e
        data.pop("model_type", None)
        config = HybridConfig.from_dict(data, source=str(config_path))
        model = cls(config)
        state = load_state_dict_checked(folder / WEIGHTS_NAME, device=map_location)
        missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
        if missing or unexpected:
            raise ValueError(
                f"{folder / WEIGHTS_NAME} does not match {config_path}: missing keys {sorted(missing)[:8]}, "
                f"unexpected keys {sorted(unexpected)[:8]}. The weights were saved from a different architecture."
            )
        expected = model.state_dict()
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise ValueError(
                    f"{folder / WEIGHTS_NAME}: tensor {k!r} has shape {tuple(v.shape)} but {config_path} implies "
                    f"{tuple(expected[k].shape)}. The config and the weights come from different students."
                )
        model.load_state_dict(state, strict=True)
        if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
            from zoo.modalities.text import load_tokenizer

            model.set_tokenizer(load_tokenizer(folder))
        model.eval()
        return model


def build_student(config: HybridConfig, tokenizer=None) -> HybridStudent:
    model = HybridStudent(config)
    if tokenizer is not None:
        if isinstance(tokenizer, (str, os.PathLike)):
            from zoo.modalities.text import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        model.set_tokenizer(tokenizer)
    return model
