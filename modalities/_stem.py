"""The strided-conv patchify stem shared by the grid modalities (image pixels, audio spectrograms)."""

from __future__ import annotations

import math

import torch
from timm.layers import ConvNormAct, GroupNorm1
from torch import nn


class ConvPatchStem(nn.Module):
    """(B, C, H, W) -> tokens (B, H/p * W/p, D) through log2(p) stride-2 3x3 convs.

    GroupNorm(1) rather than BatchNorm between them: rows of samples that lack the modality are zeros, and batch
    statistics would mix them in.

    Overlapping strided convs train faster and more stably than one non-overlapping patch projection on
    small data (Xiao et al., "Early Convolutions Help Transformers See Better", 2021).
    """

    def __init__(
        self,
        in_chans: int,
        stem_channels: int,
        embed_dim: int,
        patch_size: int,
        grid: tuple[int, int],
        act_layer=nn.GELU,
    ):
        super().__init__()
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"patch_size must be a power of two >= 2; got {patch_size}.")
        n = int(math.log2(patch_size))
        layers: list[nn.Module] = []
        c = in_chans
        for _ in range(n - 1):
            layers.append(ConvNormAct(c, stem_channels, 3, stride=2, norm_layer=GroupNorm1, act_layer=act_layer))
            c = stem_channels
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c, embed_dim, 3, stride=2, padding=1)
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(self.convs(x))  # (B, D, H/p, W/p)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        return x + self.pos_embed, grid
