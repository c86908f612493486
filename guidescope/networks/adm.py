"""ADM, the networks of "Diffusion Models Beat GANs on Image Synthesis" (Dhariwal & Nichol 2021),
written here so that openai/guided-diffusion's released ImageNet checkpoints load with their own
state-dict keys: the UNet eps_theta(x_t, t, y) (UNetModel) and the noise-aware classifier
p_phi(y | x_t, t) (EncoderUNetModel).

Names follow guided-diffusion (the checkpoints' keys depend on them):
    model_channels           the width at full resolution (flag --num_channels / --classifier_width)
    channel_mult             width multiple per level; level i runs at image_size / 2^i
    ds                       the downsample rate of a level, 2^i; attention_resolutions holds rates
                             (flag 32,16,8 at 64px -> ds 2, 4, 8)
    input_blocks / middle_block / output_blocks   the UNet's way down, bottom and way up
    use_scale_shift_norm     the embedding enters a ResBlock as GroupNorm(h) (1 + scale) + shift
    resblock_updown          resampling by ResBlocks instead of a (strided) convolution
    learn_sigma              out_channels = 2 in_channels: eps, then v that interpolates log Sigma
                             between log beta-tilde_t and log beta_t (guidescope.diffusion)

Every norm is GroupNorm with 32 groups computed in float32, so widths are multiples of 32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttentionPool2d, qkv_attention, timestep_embedding

POOLS = ("attention", "adaptive")  # guided-diffusion's "spatial" pools are not among the released ones
NORM_GROUPS = 32


@dataclass(frozen=True)
class _ADMConfig:
    """What the UNet's way down (and the classifier, which is that way down) is built from."""
    image_size: int = 64                  # square images
    in_channels: int = 3
    model_channels: int = 192             # --num_channels (64x64 model)
    out_channels: int = 6                 # 2 * in_channels with learn_sigma
    num_res_blocks: int = 3               # ResBlocks per level on the way down (one more on the way up)
    attention_resolutions: tuple = (2, 4, 8)  # downsample rates ds with self-attention (32,16,8 px at 64px)
    dropout: float = 0.0                  # only in training; the released 64x64 model trained with 0.1
    channel_mult: tuple = (1, 2, 3, 4)    # guided-diffusion's choice for 64px
    conv_resample: bool = True            # resampling with a convolution (when not resblock_updown)
    num_heads: int = 4                    # attention heads, when num_head_channels is -1
    num_head_channels: int = 64           # channels per head; -1: num_heads heads of any width
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = True  # q, k, v split before the heads (QKVAttention), else legacy

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        widths = [int(m * self.model_channels) for m in self.channel_mult]
        if any(w % NORM_GROUPS for w in widths):
            raise ValueError(f"every width model_channels * channel_mult must be a multiple of {NORM_GROUPS} "
                             f"(GroupNorm groups), got {widths}")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"image size {self.image_size} must halve {len(self.channel_mult) - 1} times")
        attended = [w for level, w in enumerate(widths) if 2 ** level in self.attention_resolutions] + widths[-1:]
        for w in attended:  # the middle block attends at the last width
            if self.num_head_channels != -1 and w % self.num_head_channels:
                raise ValueError(f"width {w} is not a multiple of num_head_channels {self.num_head_channels}")
            if self.num_head_channels == -1 and w % self.num_heads:
                raise ValueError(f"width {w} is not a multiple of num_heads {self.num_heads}")

    def heads(self, channels: int, num_heads: int | None = None) -> int:
        """Attention heads at this width: channels / num_head_channels, else num_heads."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels
        return self.num_heads if num_heads is None else num_heads


@dataclass(frozen=True)
class ADMUNetConfig(_ADMConfig):
    """UNetModel. Defaults: the released 64x64 ImageNet model (README flags of guided-diffusion)."""
    dropout: float = 0.1                  # as trained; eval() turns it off
    num_classes: int = 1000               # classes of the data (ImageNet)
    class_cond: bool = True               # a label embedding label_emb; an unconditional model ignores y
    num_heads_upsample: int = -1          # heads on the way up; -1: num_heads

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels


@dataclass(frozen=True)
class ADMClassifierConfig(_ADMConfig):
    """EncoderUNetModel. Defaults: the released 64x64 classifier (width 128, depth 4)."""
    model_channels: int = 128             # --classifier_width
    out_channels: int = 1000              # logits, one per class
    num_res_blocks: int = 4               # --classifier_depth (2 for the 128 and 256 classifiers)
    num_heads: int = 1
    use_new_attention_order: bool = False  # the classifier's AttentionBlocks use the legacy order
    pool: str = "attention"               # how (B, C, h, w) becomes logits: attention pooling (CLIP) or mean

    def __post_init__(self):
        super().__post_init__()
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of {POOLS}")
        if self.pool == "attention" and self.num_head_channels == -1:
            raise ValueError("attention pooling needs num_head_channels")

    @property
    def num_classes(self) -> int:
        return self.out_channels


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (a float16 torso stays stable)."""

    def __init__(self, channels: int):
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    """Zero the module's parameters: a fresh residual branch then starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution when use_conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    """A stride-2 3x3 convolution (use_conv) or 2x2 average pooling: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """norm-SiLU-conv, the embedding, norm-SiLU-dropout-conv, plus a skip; optionally resampling.

    With use_scale_shift_norm the embedding gives (scale, shift) and h = norm(h) (1 + scale) + shift,
    else it is added before the second norm. up / down resample both branches between the first
    norm-SiLU and the first convolution, without parameters of their own.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1) * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, channels, H, W), emb (B, emb_channels) -> (B, out_channels, H', W')."""
        if self.updown:
            h = self.in_layers[2](self.h_upd(self.in_layers[:2](x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + emb_out))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions with a residual connection: (B, C, H, W) -> same."""

    def __init__(self, channels: int, num_heads: int, use_new_attention_order: bool):
        super().__init__()
        self.num_heads, self.legacy = num_heads, not use_new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, HW)
        h = self.proj_out(qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy))
        return (x + h).reshape(b, c, *spatial)


class EmbedSequential(nn.Sequential):
    """Layers in turn; ResBlocks also get the embedding (guided-diffusion's TimestepEmbedSequential)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class _Torso(nn.Module):
    """The time embedding, the way down (input_blocks) and the bottom (middle_block): all of the
    classifier and the first half of the UNet. Keeps the width of every input block (the UNet's skips)."""

    def __init__(self, cfg: _ADMConfig):
        super().__init__()
        self.config = cfg
        emb = 4 * cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = int(cfg.channel_mult[0] * cfg.model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        self.skip_channels, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [self._resblock(ch, int(mult * cfg.model_channels))]
                ch = int(mult * cfg.model_channels)
                if ds in cfg.attention_resolutions:
                    layers.append(self._attention(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                self.skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(
                    self._resblock(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)))
                self.skip_channels.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(self._resblock(ch, ch), self._attention(ch), self._resblock(ch, ch))
        self.bottom_channels, self.bottom_ds = ch, ds

    def _resblock(self, ch: int, out_ch: int, **updown) -> ResBlock:
        cfg = self.config
        return ResBlock(ch, 4 * cfg.model_channels, cfg.dropout, out_ch, cfg.use_scale_shift_norm, **updown)

    def _attention(self, ch: int, num_heads: int | None = None) -> AttentionBlock:
        return AttentionBlock(ch, self.config.heads(ch, num_heads), self.config.use_new_attention_order)

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps -> (B, 4 model_channels), in the weights' dtype."""
        return self.time_embed(timestep_embedding(t, self.config.model_channels).to(self.time_embed[0].weight.dtype))

    def down(self, x: torch.Tensor, emb: torch.Tensor) -> list[torch.Tensor]:
        """The output of every input block, then of the middle block (the last entry)."""
        hs = []
        for block in self.input_blocks:
            hs.append(block(hs[-1] if hs else x, emb))
        return hs + [self.middle_block(hs[-1], emb)]


class ADMUNet(_Torso):
    """eps_theta(x_t, t, y) and, with learn_sigma, v: (B, C, H, W), (B,) timesteps, (B,) labels
    -> (B, out_channels, H, W), eps in the first C channels. An unconditional model ignores y."""

    def __init__(self, cfg: ADMUNetConfig):
        super().__init__(cfg)
        if cfg.class_cond:
            self.label_emb = nn.Embedding(cfg.num_classes, 4 * cfg.model_channels)
        skips, ch, ds = list(self.skip_channels), self.bottom_channels, self.bottom_ds
        up_heads = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [self._resblock(ch + skips.pop(), int(cfg.model_channels * mult))]
                ch = int(cfg.model_channels * mult)
                if ds in cfg.attention_resolutions:
                    layers.append(self._attention(ch, up_heads))
                if level and i == cfg.num_res_blocks:
                    layers.append(self._resblock(ch, ch, up=True) if cfg.resblock_updown
                                  else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), _zero(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    @property
    def null_label(self) -> int | None:
        """The label meaning "no class" (guidescope.guide.classifier_free): none for a class-conditional
        ADM, trained without label dropout (so no classifier-free guidance); any label for an
        unconditional one, which ignores y (0 stands for them all)."""
        return None if self.config.class_cond else 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t)
        if self.config.class_cond:
            if y is None:
                raise ValueError("a class-conditional ADM UNet needs labels y")
            emb = emb + self.label_emb(y)
        hs = self.down(x, emb)
        h = hs.pop()
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class ADMClassifier(_Torso):
    """p_phi(y | x_t, t): (B, C, H, W), (B,) timesteps -> (B, num_classes) logits. The UNet's way
    down and bottom, then GroupNorm-SiLU and a pool (EncoderUNetModel)."""

    def __init__(self, cfg: ADMClassifierConfig):
        super().__init__(cfg)
        ch = self.bottom_channels
        if cfg.pool == "attention":
            pool = AttentionPool2d(cfg.image_size // self.bottom_ds, ch, cfg.num_head_channels, cfg.out_channels)
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), pool)
        else:
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                     _zero(nn.Conv2d(ch, cfg.out_channels, 1)), nn.Flatten())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.out(self.down(x, self.embed(t))[-1])
