"""Networks sized for 28x28 images on a CPU: the eps-predicting UNet, the noise-conditioned
classifier p_phi(c | x_t, t) that guides it, and the clean-image evaluator that judges samples.

Both diffusion-side networks use GroupNorm, never BatchNorm, so batch items never mix and
guidance gradients are per item. The classifier is the UNet's encoder half with a pooled head
(guided-diffusion's EncoderUNetModel), built from the same blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttentionPool2d, resize, timestep_embedding


def _norm(channels: int, min_group_size: int = 1) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide channels, each at least min_group_size wide."""
    groups = math.gcd(32, channels)  # a power of two, so halving keeps it a divisor
    while groups > 1 and channels // groups < min_group_size:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding applied as a scale and shift (FiLM) between."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.out_norm = _norm(out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers(self.out_norm(h) * (1 + scale) + shift)
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.norm, self.num_heads = _norm(channels), num_heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, 3C, H, W) -> 3 x (B, heads, HW, C/heads)
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).permute(1, 0, 2, 4, 3)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        return x + self.proj(out.permute(0, 1, 3, 2).reshape(b, c, h, w))


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 28            # square images; an odd side rounds up on the way down (7 -> 4)
    in_channels: int = 1
    base_channels: int = 48         # channels at full resolution
    channel_mults: tuple = (1, 2, 2)  # per level; 28 -> 14 -> 7
    num_res_blocks: int = 2         # per level on the way down (one more on the way up)
    attention_levels: tuple = (2,)  # levels with self-attention (the 7x7 one)
    num_heads: int = 4
    dropout: float = 0.1
    num_classes: int = 10           # class embedding has one more row: the null label
    class_cond = True               # not a field: the class embedding is always there (guidescope.networks.adm's may not be)

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        if not set(self.attention_levels) <= set(range(len(self.channel_mults))):
            raise ValueError(f"attention levels {self.attention_levels} must be among the levels "
                             f"0..{len(self.channel_mults) - 1}")


class _Encoder(nn.Module):
    """Timestep embedding, stem and the downsampling path shared by the UNet and the classifier."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        ch = cfg.base_channels
        self.emb_dim = emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        self.skip_channels = [ch]
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, cfg.base_channels * mult, emb_dim, cfg.dropout)]
                ch = cfg.base_channels * mult
                if level in cfg.attention_levels:
                    layers.append(Attention(ch, cfg.num_heads))
                self.down.append(nn.ModuleList(layers))
                self.skip_channels.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                self.skip_channels.append(ch)
        self.out_channels = ch

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        # In the weights' dtype, so model.double() (or .half()) works end to end.
        return self.time_mlp(timestep_embedding(t, self.stem.out_channels).to(self.stem.weight.dtype))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> list[torch.Tensor]:
        """All intermediate activations (the UNet's skips); the last is the bottom of the encoder."""
        hs = [self.stem(x)]
        for layers in self.down:
            h = hs[-1]
            for layer in layers:
                h = layer(h, emb) if isinstance(layer, (ResBlock, Attention)) else layer(h)
            hs.append(h)
        return hs


class UNet(nn.Module):
    """eps_theta(x_t, t, y): (B, C, H, W), (B,) timesteps, (B,) labels with num_classes = null."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        self.encoder = _Encoder(cfg)
        ch, emb_dim = self.encoder.out_channels, self.encoder.emb_dim
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim)
        self.middle = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout), Attention(ch, cfg.num_heads),
                                     ResBlock(ch, ch, emb_dim, cfg.dropout)])
        skips = list(self.encoder.skip_channels)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for block in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), cfg.base_channels * mult, emb_dim, cfg.dropout)]
                ch = cfg.base_channels * mult
                if level in cfg.attention_levels:
                    layers.append(Attention(ch, cfg.num_heads))
                if level > 0 and block == cfg.num_res_blocks:
                    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    layers.append(nn.Conv2d(ch, ch, 3, padding=1))
                self.up.append(nn.ModuleList(layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = self.encoder.embed(t) + self.class_emb(y)
        hs = self.encoder(x, emb)
        h = hs[-1]
        for layer in self.middle:
            h = layer(h, emb)
        for layers in self.up:
            skip = hs.pop()
            # An odd side was rounded up on the way down (7 -> 4 -> 8): crop back to the skip's side.
            h = torch.cat([h[..., :skip.shape[-2], :skip.shape[-1]], skip], dim=1)
            for layer in layers:
                h = layer(h, emb) if isinstance(layer, (ResBlock, Attention)) else layer(h)
        return self.out(h)


CLASSIFIER_POOLS = ("mean", "attention")


@dataclass(frozen=True)
class ClassifierConfig(UNetConfig):
    base_channels: int = 32
    num_res_blocks: int = 1
    attention_levels: tuple = ()    # attention would cost more than the rest of this network
    dropout: float = 0.0
    pool: str = "mean"              # how the last feature map becomes logits: its mean, or attention
                                    # pooling (guided-diffusion's: the mean as a query over every
                                    # position, with a learned position embedding, num_heads heads)

    def __post_init__(self):
        super().__post_init__()
        if self.pool not in CLASSIFIER_POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of {CLASSIFIER_POOLS}")

    @property
    def bottom_side(self) -> int:
        """The side of the last feature map: each stride-2 convolution rounds an odd side up."""
        side = self.image_size
        for _ in self.channel_mults[1:]:
            side = (side + 1) // 2
        return side


class NoisyClassifier(nn.Module):
    """p_phi(c | x_t, t): the UNet encoder with GroupNorm, then mean pooling and a linear head, or
    attention pooling (cfg.pool) -> logits. The mean of the last map cannot say where a feature is;
    attention pooling can, which is what a heavily noised image leaves to go on (the class's
    silhouette)."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.config = cfg
        self.encoder = _Encoder(cfg)
        ch = self.encoder.out_channels
        # Pooling follows this norm: with one channel per group it would zero each channel's spatial
        # mean, which is all that pooling keeps (a classifier of base width 16 or less could not learn).
        if cfg.pool == "attention":
            pool = AttentionPool2d(cfg.bottom_side, ch, ch // cfg.num_heads, cfg.num_classes)
            self.head = nn.Sequential(_norm(ch, min_group_size=2), nn.SiLU(), pool)
        else:
            self.head = nn.Sequential(_norm(ch, min_group_size=2), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(ch, cfg.num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x, self.encoder.embed(t))[-1])


@dataclass(frozen=True)
class EvaluatorConfig:
    """A timm ResNet for clean images; a different architecture family and seed from the
    guidance classifier. Features are the pooled penultimate layer (for Frechet distance and
    precision/recall)."""
    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    layers: tuple = (2, 2, 2, 2)
    channels: tuple = (32, 64, 128, 256)
    input_size: int = 64            # images are resized to this before the network

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "channels", tuple(self.channels))


class Evaluator(nn.Module):
    """Clean-image classifier on images in [-1, 1]; forward gives logits, features() the
    penultimate (B, channels[-1]) features."""

    def __init__(self, cfg: EvaluatorConfig):
        from timm.models.resnet import BasicBlock, ResNet  # here, not at the top: importing timm takes seconds

        super().__init__()
        self.config = cfg
        self.net = ResNet(
            block=BasicBlock, layers=cfg.layers, channels=cfg.channels,
            in_chans=cfg.in_channels, num_classes=cfg.num_classes, stem_width=cfg.channels[0])

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, self.config.input_size)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(self._resize(x)), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._resize(x))


@dataclass(frozen=True)
class AutoencoderConfig:
    image_size: int = 28
    in_channels: int = 1
    base_channels: int = 32         # channels at full resolution
    channel_mults: tuple = (1, 2, 2)  # per level; each level after the first halves the side: 28 -> 14 -> 7
    latent_channels: int = 4        # C of the latent (C, H/f, W/f), f = 2^(levels - 1)

    def __post_init__(self):
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size
        for _ in self.channel_mults[1:]:
            side = (side + 1) // 2  # a stride-2 convolution with padding 1
        return self.latent_channels, side, side


class _Block(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual connection (no timestep: the codec sees clean images)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.layers = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
                                    _norm(out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.layers(x)


class Autoencoder(nn.Module):
    """E: (B, C, H, W) -> the posterior's mean and log-variance, each (B, *latent_shape);
    D: (B, *latent_shape) -> (B, C, H, W). Unscaled latents; LatentCodec applies the scale."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            enc.append(_Block(widths[level - 1] if level else widths[0], width))
            if level < len(widths) - 1:
                enc.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        enc += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        self.decoder_in = nn.Sequential(nn.Conv2d(cfg.latent_channels, widths[-1], 3, padding=1),
                                        _Block(widths[-1], widths[-1]))
        self.decoder_up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width_out = widths[level - 1] if level else widths[0]
            self.decoder_up.append(nn.ModuleList([_Block(widths[level], width_out)] + (
                [nn.Conv2d(width_out, width_out, 3, padding=1)] if level else [])))
        self.decoder_out = nn.Sequential(_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], cfg.in_channels, 3, padding=1))
        self._sizes = self._side_sizes()

    def _side_sizes(self) -> list[int]:
        """Image sides at each level, full resolution first (the decoder upsamples back to these)."""
        sides = [self.config.image_size]
        for _ in self.config.channel_mults[1:]:
            sides.append((sides[-1] + 1) // 2)
        return sides

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of q(z | x), each (B, *latent_shape); log-variance clamped to [-30, 20]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder_in(z)
        for level, layers in zip(reversed(range(len(self._sizes))), self.decoder_up):
            h = layers[0](h)
            if level:  # up to the next level's side (7 -> 14 -> 28), then a 3x3 convolution
                side = self._sizes[level - 1]
                h = layers[1](F.interpolate(h, size=(side, side), mode="nearest"))
        return self.decoder_out(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction from the posterior mean."""
        return self.decode(self.encode(x)[0])
