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

import copy
import dataclasses
import os
import typing
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, Mlp, get_act_layer
from torch import nn

from zoo.modalities import MODALITIES, check_modalities, input_keys, load_tokenizer
from zoo.modalities.audio import AudioConfig
from zoo.modalities.image import ImageConfig
from zoo.modalities.text import TextConfig
from zoo.recipe import convert_value
from zoo.registry import register_architecture
from zoo.students.base import PruneGroup, PruneSlice, Student


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
        for m, cls in ((m, d.config) for m, d in MODALITIES.items()):
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
        if isinstance(data, dict):  # config.json's model_type is for transformers' Auto classes (zoo.auto)
            data = {k: v for k, v in data.items() if k != "model_type"}
        return _dataclass_from_dict(cls, data, source)


def _dataclass_from_dict(cls, data: dict, source: str):
    if not isinstance(data, dict):
        raise TypeError(f"{source} must be a JSON object; got {type(data).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source} has unknown keys {unknown}; {cls.__name__} knows {sorted(known)}.")
    hints = typing.get_type_hints(cls)  # a wrong type (embed_dim: "32") is an error naming the key
    return cls(**{k: convert_value(v, hints[k], k, source) for k, v in data.items()})


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
        # qkv rows are (3, heads, hd): as (B, 3 * heads, N, hd), one Split gives q, k, v (an unbind exports as a
        # Split plus a Squeeze per output: 12 more ONNX nodes in 4 blocks, each a few microseconds at batch 1)
        qkv = self.qkv(x).reshape(B, N, 3 * self.num_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.num_heads, dim=1)  # (B, nh, N, hd)
        # (B, 1, 1, N): bool (True = attend) or additive float (0 = attend, -inf = masked); (B, N) is expanded here
        mask = key_mask[:, None, None, :] if key_mask is not None and key_mask.dim() == 2 else key_mask
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


class HybridStudent(Student):
    """The hybrid Transformer+CNN student; build it with ``zoo.create_student`` (layout: module docstring)."""

    config_class = HybridConfig

    def __init__(self, config: HybridConfig | dict):
        super().__init__(HybridConfig.from_dict(config) if isinstance(config, dict) else config)
        config = self.config
        D = config.embed_dim
        act = nn.GELU if config.act == "gelu" else get_act_layer(config.act)  # torch's own, as before the key
        stems = {m: MODALITIES[m].stem for m in config.modalities}
        self.stems = nn.ModuleDict(
            {
                m: stem(getattr(config, m), D, act_layer=act)
                if MODALITIES[m].stem_takes_act
                else stem(getattr(config, m), D)
                for m, stem in stems.items()
            }
        )
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

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def reset_head(self, tasks: dict[str, int], id2label: dict | None = None) -> None:
        """Replace every task head with a fresh one per ``tasks`` (name -> outputs), initialised as a new student's;
        the trunk keeps its weights. ``config.tasks`` and ``config.id2label`` (of the first task) follow."""
        device = self.norm.weight.device
        self.heads = nn.ModuleDict({t: nn.Linear(self.config.embed_dim, int(n)) for t, n in tasks.items()}).to(device)
        self.heads.apply(self._init_weights)
        self.config = dataclasses.replace(self.config, tasks=dict(tasks), id2label=id2label)  # validates id2label

    # ---------------------------------------------------------------------------------------------- forward
    def _embed(self, inputs: dict) -> tuple[dict, dict, dict, bool]:
        """Inputs -> per-modality tokens (B, N_m, D), grids, token validity (B, N_m), and whether the tokens are
        dense: one modality whose stem pads nothing (every token of a present sample is valid)."""
        tokens, grids, valid, padded = {}, {}, {}, False
        unknown = set(inputs) - set(input_keys(MODALITIES)) - {"labels"}
        if unknown:
            raise TypeError(f"unexpected inputs {sorted(unknown)}; the student takes {sorted(MODALITIES)} inputs.")
        for m in self.config.modalities:
            if inputs.get(MODALITIES[m].input_keys[0]) is None:
                continue
            x, grid, tok_valid, pads = MODALITIES[m].tokens(self.stems[m], inputs)
            tokens[m] = x + self.modality_embed[m]
            grids[m], valid[m], padded = grid, tok_valid, padded or pads
        if not tokens:
            given = sorted(k for k, v in inputs.items() if v is not None)
            raise ValueError(
                f"no input for any of this student's modalities {self.config.modalities}; got {given}. "
                "Build the batch with student.preprocess(samples)."
            )
        return tokens, grids, valid, len(tokens) == 1 and not padded

    def _blocks(self, inputs: dict, indices: set[int] | None = None):
        """Run every block; yields (block index, tokens per modality) after each block. Returns final state.

        Dense tokens (one unpadded modality, e.g. an image student) need no masks: a sample either has all its
        tokens or is absent, and samples never mix, so the conv blocks skip re-zeroing and attention takes no mask
        (absent rows are zeroed once, at the pooling). The same outputs, and about 30 fewer ONNX nodes of mask
        bookkeeping, which at batch 1 cost about as much as the int8 matmuls (measured on the fashion student).
        """
        tokens, grids, valid, dense = self._embed(inputs)
        mods = list(tokens)
        intermediates = []
        i = 0
        for blk in self.conv_blocks:
            for m in mods:
                B, N, D = tokens[m].shape
                h, w = grids[m]
                x = tokens[m].transpose(1, 2).reshape(B, D, h, w)
                x = blk(x).flatten(2).transpose(1, 2)
                tokens[m] = x if dense else x * valid[m].unsqueeze(-1).to(x.dtype)  # padding, absent rows: zero
            if indices is not None and i in indices:
                intermediates.append(dict(tokens))
            i += 1
        sizes = [tokens[m].shape[1] for m in mods]
        x = torch.cat([tokens[m] for m in mods], dim=1) if len(mods) > 1 else tokens[mods[0]]  # (B, N_total, D)
        attn_bias = None
        if not dense:
            key_mask = torch.cat([valid[m] for m in mods], dim=1)  # (B, N_total)
            # a row with no valid token would make softmax NaN; let it attend to everything (its output is unused)
            key_mask = key_mask | ~key_mask.any(dim=1, keepdim=True)
            # an additive float mask, built once: SDPA adds it to the scores either way, while a bool mask exports
            # to ONNX with a Where and an IsNaN pass over the (B, heads, N, N) scores (~15% of int8 latency)
            attn_bias = torch.zeros_like(key_mask, dtype=x.dtype).masked_fill(~key_mask, float("-inf"))
            attn_bias = attn_bias[:, None, None, :]  # (B, 1, 1, N), once for every block
        for blk in self.attn_blocks:
            x = blk(x, attn_bias)
            if indices is not None and i in indices:
                intermediates.append(dict(zip(mods, x.split(sizes, dim=1))))
            i += 1
        x = self.norm(x)
        per_mod = dict(zip(mods, x.split(sizes, dim=1))) if len(mods) > 1 else {mods[0]: x}
        return per_mod, valid, intermediates, dense

    def _pool(self, per_mod: dict, valid: dict, dense: bool = False) -> torch.Tensor:
        """Masked mean over each modality's tokens, then mean over the modalities a sample carries."""
        if dense:  # one modality, no padding: a plain mean, absent rows zeroed
            ((m, x),) = per_mod.items()
            return x.mean(1) * valid[m][:, :1].to(x.dtype)
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
        per_mod, valid, _, dense = self._blocks(inputs)
        return self._pool(per_mod, valid, dense)

    def forward_head(self, features: torch.Tensor, task: str | None = None, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(features)
        if pre_logits:
            return x
        return self.heads[task or next(iter(self.heads))](x)

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
        per_mod, valid, inter, dense = self._blocks(inputs, set(idx))
        if intermediates_only:
            return inter
        return self._pool(per_mod, valid, dense), inter

    def token_grid(self, modality: str) -> tuple[int, int]:
        """(h, w) of a modality's token grid, to reshape (B, N, D) tokens into (B, D, h, w) feature maps."""
        stem = self.stems[modality]
        return (1, self.config.text.max_length) if modality == "text" else stem.grid

    # ----------------------------------------------------------------------------------- declared structure
    def no_weight_decay(self) -> set[str]:
        """The position embeddings (of the stems) get no weight decay, as in timm's ViTs."""
        return {n for n, _ in self.named_parameters() if n.endswith("pos_embed")}

    def prunable_groups(self) -> list[PruneGroup]:
        """Conv blocks' hidden channels, attention heads, MLP neurons and conv-stem channels, with the state_dict
        tensors each unit owns."""
        cfg = self.config
        groups = []
        for i, h in enumerate(cfg.conv_hidden):
            p = f"conv_blocks.{i}"
            slices = [PruneSlice(f"{p}.{n}", 0) for n in ("pw1.weight", "pw1.bias", "dw.weight", "dw.bias")]
            groups.append(PruneGroup("conv", f"conv_hidden.{i}", h, [*slices, PruneSlice(f"{p}.pw2.weight", 1)]))
        for i, (nh, mh) in enumerate(zip(cfg.attn_heads, cfg.mlp_hidden)):
            p, hd = f"attn_blocks.{i}", cfg.head_dim
            qkv = [PruneSlice(f"{p}.attn.qkv.{n}", 0, hd, 3) for n in ("weight", "bias")]  # rows (3, heads, hd)
            groups.append(
                PruneGroup("heads", f"attn_heads.{i}", nh, [*qkv, PruneSlice(f"{p}.attn.proj.weight", 1, hd)])
            )
            fc1 = [PruneSlice(f"{p}.mlp.fc1.{n}", 0) for n in ("weight", "bias")]
            groups.append(PruneGroup("mlp", f"mlp_hidden.{i}", mh, [*fc1, PruneSlice(f"{p}.mlp.fc2.weight", 1)]))
        for m, stem in self.stems.items():
            if not hasattr(stem, "convs"):  # token stems (text) have no channels to prune
                continue
            n = len(stem.convs)
            for j in range(n):
                p = f"stems.{m}.convs.{j}"
                nxt = f"stems.{m}.convs.{j + 1}.conv.weight" if j + 1 < n else f"stems.{m}.proj.weight"
                slices = [
                    PruneSlice(f"{p}.conv.weight", 0),
                    PruneSlice(f"{p}.bn.weight", 0),
                    PruneSlice(f"{p}.bn.bias", 0),
                ]
                if stem.convs[j].conv.bias is not None:
                    slices.append(PruneSlice(f"{p}.conv.bias", 0))
                width = getattr(cfg, m).stem_channels
                groups.append(PruneGroup("stem", f"stem.{m}.{j}", width, [*slices, PruneSlice(nxt, 1)]))
        return groups

    def pruned_config(self, counts: dict[str, int]) -> HybridConfig:
        """The config with the kept widths: per-block lists, and one stem width per conv stem."""
        cfg = self.config
        widths = {
            "conv_hidden": [counts.get(f"conv_hidden.{i}", h) for i, h in enumerate(cfg.conv_hidden)],
            "attn_heads": [counts.get(f"attn_heads.{i}", h) for i, h in enumerate(cfg.attn_heads)],
            "mlp_hidden": [counts.get(f"mlp_hidden.{i}", h) for i, h in enumerate(cfg.mlp_hidden)],
        }
        for m in cfg.modalities:
            if f"stem.{m}.0" in counts:
                widths[m] = dataclasses.replace(getattr(cfg, m), stem_channels=counts[f"stem.{m}.0"])
        return dataclasses.replace(copy.deepcopy(cfg), **widths)


def build_student(config: HybridConfig, tokenizer=None) -> HybridStudent:
    model = HybridStudent(config)
    if tokenizer is not None:
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        model.set_tokenizer(tokenizer)
    return model


register_architecture("hybrid", HybridStudent)  # configs that record no size variant
