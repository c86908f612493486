"""Layers the networks share: the sinusoidal timestep embedding, multi-head attention over a
sequence of positions, attention pooling (CLIP's, as guided-diffusion's classifiers use it), and the
resize in front of the clean-image classifiers."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim), as in the Transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), bilinear (differentiable, so guidance gradients pass)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def qkv_attention(qkv: torch.Tensor, num_heads: int, legacy: bool) -> torch.Tensor:
    """softmax(q^T k / sqrt(d)) v per head: qkv (B, 3 * heads * d, T) -> (B, heads * d, T).

    The channel layout of qkv is the checkpoint's: legacy (QKVAttentionLegacy) splits the heads
    first, [head][q, k, v][d]; the new order (QKVAttention) splits q, k, v first, [q, k, v][head][d].
    """
    b, width, length = qkv.shape
    d = width // (3 * num_heads)
    if legacy:
        q, k, v = qkv.reshape(b, num_heads, 3 * d, length).split(d, dim=2)  # each (B, heads, d, T)
    else:
        q, k, v = qkv.reshape(b, 3, num_heads, d, length).unbind(1)
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(b, num_heads * d, length)  # (B, heads, T, d) -> (B, heads * d, T)


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling: the spatial mean, as a query token, attends to every position.
    (B, C, s, s) -> (B, output_dim); heads of num_head_channels, in the new attention order."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(*x.shape[:2], -1)  # (B, C, HW)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding.to(x.dtype)  # (B, C, 1 + HW)
        x = self.c_proj(qkv_attention(self.qkv_proj(x), self.num_heads, legacy=False))
        return x[:, :, 0]
