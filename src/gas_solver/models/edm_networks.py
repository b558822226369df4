"""EDM's network architectures and preconditionings, written anew in this package.

Karras et al., *Elucidating the Design Space of Diffusion-Based Generative Models* (NeurIPS 2022),
ship their checkpoints as pickles whose networks are the classes of NVlabs/edm
``training/networks.py``. This module implements the same classes with the same constructor
arguments, the same submodule, parameter and buffer names (so an EDM state dict loads with
``strict=True``) and the same forward arithmetic, so :mod:`gas_solver.models.edm` can rebuild a
checkpoint from its recorded constructor arguments and tensors without running pickled code.

* :class:`SongUNet`: DDPM++ and NCSN++ (Song et al. 2021, *Score-Based Generative Modeling through
  SDEs*) in EDM's re-implementation: used by the VP (DDPM++) and VE (NCSN++) checkpoints.
* :class:`DhariwalUNet`: ADM (Dhariwal & Nichol 2021, *Diffusion Models Beat GANs*), used by the
  ImageNet-64 checkpoint.
* :class:`VPPrecond`, :class:`VEPrecond`, :class:`EDMPrecond`: the preconditionings of EDM Table 1.
  Each is a denoiser (x₀-predictor) ``D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))``
  in EDM's variables (``x = x₀ + σ n``); its network ``F`` is the child ``model``.

Differences that do not change results: attention uses
:func:`torch.nn.functional.scaled_dot_product_attention` (the same ``softmax(qᵀk/√d) v``) instead
of EDM's hand-written fp32 autograd function; ``use_fp16`` is recorded but everything runs in the
dtype of the input (fp32 for the checkpoints, as in the paper's evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


def init_weight(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> Tensor:
    """EDM's weight initialisations (Glorot & Bengio 2010; He et al. 2015):

    ``xavier_uniform``: √(6/(fan_in+fan_out))·U(−1, 1); ``xavier_normal``: √(2/(fan_in+fan_out))·N(0, 1);
    ``kaiming_uniform``: √(3/fan_in)·U(−1, 1); ``kaiming_normal``: √(1/fan_in)·N(0, 1).
    """
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ConfigError(f"unknown init_mode {mode!r}")


def _param(shape: Sequence[int], mode: str, fan_in: int, fan_out: int, gain: float) -> nn.Parameter:
    return nn.Parameter(init_weight(shape, mode, fan_in, fan_out) * gain)


# -- layers -----------------------------------------------------------------------------------------
class Linear(nn.Module):
    """Fully connected layer ``y = x Wᵀ + b`` with EDM's initialisation options."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = (init_mode, in_features, out_features)
        self.weight = _param([out_features, in_features], *fans, init_weight)
        self.bias = _param([out_features], *fans, init_bias) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class Conv2d(nn.Module):
    """Square convolution with optional 2× up- or downsampling by a separable FIR filter.

    The filter ``f ⊗ f / (Σf)²`` (``resample_filter`` [1,1] = box, [1,3,3,1] = binomial) is applied
    per channel with stride 2: a strided convolution to go down, a transposed one (gain 4) to go up.
    ``kernel = 0`` gives a pure resampler with no weight. ``fused_resample`` convolves and resamples
    in one padded pass (used by NCSN++'s residual encoder), as EDM does.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1.0,
        init_bias: float = 0.0,
    ) -> None:
        if up and down:
            raise ConfigError("Conv2d: up and down are exclusive")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = (init_mode, in_channels * kernel * kernel, out_channels * kernel * kernel)
        shape = [out_channels, in_channels, kernel, kernel]
        self.weight = _param(shape, *fans, init_weight) if kernel else None
        self.bias = _param([out_channels], *fans, init_bias) if kernel and bias else None
        taps = torch.as_tensor(resample_filter, dtype=torch.float32)
        fir = torch.outer(taps, taps)[None, None] / taps.sum().square()
        self.register_buffer("resample_filter", fir if up or down else None)

    def _updown(self, x: Tensor, fir: Tensor, channels: int, padding: int) -> Tensor:
        """Per-channel 2× resampling with the FIR filter."""
        if self.up:
            return F.conv_transpose2d(
                x, (fir * 4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding
            )
        return F.conv2d(
            x, fir.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding
        )

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        fir = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if fir is None else (fir.shape[-1] - 1) // 2
        if fir is not None and w is not None and self.fused_resample:
            if self.up:  # upsample with the padding of both, then convolve unpadded
                x = F.conv2d(self._updown(x, fir, self.in_channels, w_pad + f_pad), w)
            else:  # convolve with the padding of both, then downsample unpadded
                x = self._updown(F.conv2d(x, w, padding=w_pad + f_pad), fir, self.out_channels, 0)
        else:
            if fir is not None:
                x = self._updown(x, fir, self.in_channels, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with ``min(num_groups, num_channels // min_channels_per_group)`` groups."""

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        min_channels_per_group: int = 4,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)


class UNetBlock(nn.Module):
    """The residual block shared by DDPM++, NCSN++ and ADM, with optional resampling and attention.

    ``h = conv0(silu(norm0(x)))``; the embedding enters as ``silu(norm1(h)·(1+scale) + shift)``
    (``adaptive_scale``, ADM) or ``silu(norm1(h + affine(emb)))`` (DDPM++); then
    ``x' = (conv1(dropout(h)) + skip(x))·skip_scale`` and, with attention,
    ``x'' = (proj(attn(qkv(norm2(x')))) + x')·skip_scale`` with ``attn = softmax(qᵀk/√d) v`` per head.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict[str, Any] | None = None,
        init_zero: dict[str, Any] | None = None,
        init_attn: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        init = {} if init is None else init
        init_zero = {"init_weight": 0} if init_zero is None else init_zero
        self.in_channels, self.out_channels = in_channels, out_channels
        self.emb_channels = emb_channels
        if num_heads is None:
            num_heads = out_channels // channels_per_head
        self.num_heads = num_heads if attention else 0
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        resample = {"up": up, "down": down, "resample_filter": resample_filter}

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, **resample, **init)
        affine_out = out_channels * (2 if adaptive_scale else 1)
        self.affine = Linear(emb_channels, affine_out, **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            attn_init = init if init_attn is None else init_attn
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **attn_init)
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if not self.num_heads:
            return x
        batch, channels = x.shape[:2]
        # qkv channels are laid out as (head, channel within head, q|k|v), as in EDM
        q, k, v = (
            self.qkv(self.norm2(x))
            .reshape(batch * self.num_heads, channels // self.num_heads, 3, -1)
            .unbind(2)
        )  # each (B·heads, C/heads, H·W)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)
        return (self.proj(attended.reshape(x.shape)) + x) * self.skip_scale


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding (Vaswani et al. 2017): ``[cos(x ω_i), sin(x ω_i)]`` with
    ``ω_i = max_positions^(−i/(C/2 − endpoint))``, ``i = 0 … C/2 − 1``."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device)
        exponents = exponents / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** exponents
        angles = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features (Tancik et al. 2020), NCSN++: ``[cos(2π x f), sin(2π x f)]``
    with fixed ``f ~ N(0, scale²)`` stored as the buffer ``freqs``."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


# -- networks ---------------------------------------------------------------------------------------
class SongUNet(nn.Module):
    """DDPM++ / NCSN++ (Song et al. 2021) as configured by EDM's ``SongUNet``.

    DDPM++ (EDM's VP checkpoints): ``embedding_type="positional"``, ``channel_mult_noise=1``,
    ``encoder_type="standard"``, ``resample_filter=[1,1]``. NCSN++ (VE): ``"fourier"``, 2,
    ``"residual"``, ``[1,3,3,1]``. Blocks use ``skip_scale = √½``, no adaptive scale, one attention
    head, GroupNorm eps 1e-6. The output is the raw network ``F``; preconditioning is the caller's.

    Forward: ``x: (B, in_channels, R, R)``, ``noise_labels: (B,)``, ``class_labels: (B, label_dim)``
    or ``None``, ``augment_labels: (B, augment_dim)`` or ``None`` → ``(B, out_channels, R, R)``.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
    ) -> None:
        for name, value, allowed in (
            ("embedding_type", embedding_type, ("fourier", "positional")),
            ("encoder_type", encoder_type, ("standard", "skip", "residual")),
            ("decoder_type", decoder_type, ("standard", "skip")),
        ):
            if value not in allowed:
                raise ConfigError(f"SongUNet: {name} must be one of {allowed}, got {value!r}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = {"init_mode": "xavier_uniform"}
        init_zero = {"init_mode": "xavier_uniform", "init_weight": 1e-5}
        init_attn = {"init_mode": "xavier_uniform", "init_weight": math.sqrt(0.2)}
        block = {
            "emb_channels": emb_channels, "num_heads": 1, "dropout": dropout,
            "skip_scale": math.sqrt(0.5), "eps": 1e-6, "resample_filter": resample_filter,
            "resample_proj": True, "adaptive_scale": False,
            "init": init, "init_zero": init_zero, "init_attn": init_attn,
        }  # fmt: skip

        # mapping network: noise level (+ class, + augmentation) → embedding
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = (
            Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        )
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # encoder; "aux" entries carry the input image down (skip / residual encoders)
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, kernel=3, down=True, resample_filter=resample_filter,
                        fused_resample=True, **init,
                    )  # fmt: skip
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block
                )
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        # decoder; "aux" entries build the output image (at the top, or at every level for skip)
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=attention, **block
                )
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True,
                        resample_filter=resample_filter,
                    )  # fmt: skip
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(
                    cout, out_channels, kernel=3, **init_zero
                )

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [cos, sin] → [sin, cos]
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips: list[Tensor] = []
        aux = x
        for name, layer in self.enc.items():
            if "aux_down" in name:
                aux = layer(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + layer(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + layer(aux)) / math.sqrt(2)
            else:
                x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
                skips.append(x)

        out: Tensor | None = None
        hidden: Tensor | None = None
        for name, layer in self.dec.items():
            if "aux_up" in name:
                out = layer(out)
            elif "aux_norm" in name:
                hidden = layer(x)
            elif "aux_conv" in name:
                hidden = layer(F.silu(hidden))
                out = hidden if out is None else hidden + out
            else:
                if x.shape[1] != layer.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return out


class DhariwalUNet(nn.Module):
    """ADM (Dhariwal & Nichol 2021) as configured by EDM's ``DhariwalUNet``.

    Blocks use adaptive scale (``norm(h)·(1+scale) + shift``), 64 channels per attention head,
    GroupNorm with 32 groups, Kaiming-uniform init. Same forward signature as :class:`SongUNet`.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = {"init_mode": "kaiming_uniform", "init_weight": math.sqrt(1 / 3),
                "init_bias": math.sqrt(1 / 3)}  # fmt: skip
        init_zero = {"init_mode": "kaiming_uniform", "init_weight": 0, "init_bias": 0}
        block = {"emb_channels": emb_channels, "channels_per_head": 64, "dropout": dropout,
                 "init": init, "init_zero": init_zero}  # fmt: skip

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = (
            Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        )
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (
            Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                   init_weight=math.sqrt(label_dim))
            if label_dim else None
        )  # fmt: skip

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block
                )
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **block
                )
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(
        self,
        x: Tensor,
        noise_labels: Tensor,
        class_labels: Tensor | None,
        augment_labels: Tensor | None = None,
    ) -> Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for layer in self.dec.values():
            if x.shape[1] != layer.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


NETWORKS: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


# -- preconditioning (EDM Table 1) ------------------------------------------------------------------
class Precond(nn.Module):
    """A denoiser ``D(x; σ) = c_skip x + c_out F(c_in x; c_noise)`` around the network ``model``.

    Subclasses give the coefficients (:meth:`coefficients`); their constructor arguments are those
    of EDM's class of the same name and are kept in :attr:`init_kwargs` (JSON-able) so the object
    can be rebuilt. ``use_fp16`` is recorded only: the network runs in the dtype of ``x``.

    Forward: ``x: (B, C, R, R)``, ``sigma: (B,)`` or scalar, ``class_labels: (B, label_dim)`` one-hot
    (zeros when ``None``, as EDM does; ignored by unconditional models) → ``D: (B, C, R, R)``.
    """

    param_names: tuple[str, ...] = ()  # the preconditioning's own constructor arguments

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool,
        model_type: str,
        model_kwargs: dict[str, Any],
        **params: Any,
    ) -> None:
        super().__init__()
        if model_type not in NETWORKS:
            raise ConfigError(
                f"{type(self).__name__}: model_type must be one of {sorted(NETWORKS)}, "
                f"got {model_type!r}"
            )
        for name, value in params.items():
            setattr(self, name, value)
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.label_dim, self.use_fp16, self.model_type = label_dim, use_fp16, model_type
        self.model = NETWORKS[model_type](
            img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
            label_dim=label_dim, **model_kwargs,
        )  # fmt: skip
        self.init_kwargs = {
            "img_resolution": img_resolution, "img_channels": img_channels,
            "label_dim": label_dim, "use_fp16": use_fp16, "model_type": model_type,
            **params, **model_kwargs,
        }  # fmt: skip

    def coefficients(self, sigma: Tensor) -> tuple[Tensor | float, ...]:
        """``(c_skip, c_out, c_in, c_noise)`` at noise levels ``sigma: (B, 1, 1, 1)``."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        labels = None
        if self.label_dim:
            labels = (
                torch.zeros([1, self.label_dim], dtype=x.dtype, device=x.device)
                if class_labels is None
                else class_labels.to(x.dtype).reshape(-1, self.label_dim)
            )
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        out = self.model(c_in * x, c_noise.flatten(), class_labels=labels)
        return c_skip * x + c_out * out.to(x.dtype)


class VPPrecond(Precond):
    """Variance preserving (Song et al. 2021; EDM Table 1, "VP"): ``c_skip = 1``, ``c_out = −σ``,
    ``c_in = 1/√(σ²+1)``, ``c_noise = (M−1)·σ⁻¹(σ)``, so the network ``F`` predicts ε, with

    ``σ(t) = √(exp(½β_d t² + β_min t) − 1)``,
    ``σ⁻¹(σ) = (√(β_min² + 2β_d log(1+σ²)) − β_min)/β_d``.
    """

    param_names = ("beta_d", "beta_min", "M", "epsilon_t")

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,  # noqa: N803 - EDM's name
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(
            img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
            beta_d=beta_d, beta_min=beta_min, M=M, epsilon_t=epsilon_t,
        )  # fmt: skip
        # plain floats, so the object can also be built on the meta device
        self.sigma_min = math.sqrt(math.expm1(0.5 * beta_d * epsilon_t**2 + beta_min * epsilon_t))
        self.sigma_max = math.sqrt(math.expm1(0.5 * beta_d + beta_min))

    def sigma(self, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t)
        return torch.sqrt(torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

    def sigma_inv(self, sigma: Tensor | float) -> Tensor:
        sigma = torch.as_tensor(sigma)
        root = torch.sqrt(self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2))
        return (root - self.beta_min) / self.beta_d

    def coefficients(self, sigma: Tensor) -> tuple[Tensor | float, ...]:
        return 1.0, -sigma, 1 / torch.sqrt(sigma**2 + 1), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(Precond):
    """Variance exploding (Song et al. 2021; EDM Table 1, "VE"): ``c_skip = 1``, ``c_out = σ``,
    ``c_in = 1``, ``c_noise = log(σ/2)``."""

    param_names = ("sigma_min", "sigma_max")

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.02,
        sigma_max: float = 100.0,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(
            img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
            sigma_min=sigma_min, sigma_max=sigma_max,
        )  # fmt: skip

    def coefficients(self, sigma: Tensor) -> tuple[Tensor | float, ...]:
        return 1.0, sigma, 1.0, torch.log(0.5 * sigma)


class EDMPrecond(Precond):
    """EDM's own (Karras et al. 2022, Table 1): with ``σ_d = sigma_data``,
    ``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σ σ_d/√(σ²+σ_d²)``, ``c_in = 1/√(σ²+σ_d²)``,
    ``c_noise = ¼ log σ``."""

    param_names = ("sigma_min", "sigma_max", "sigma_data")

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__(
            img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs,
            sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
        )  # fmt: skip

    def coefficients(self, sigma: Tensor) -> tuple[Tensor | float, ...]:
        sd2 = self.sigma_data**2
        norm = torch.sqrt(sigma**2 + sd2)
        return (
            sd2 / (sigma**2 + sd2),
            sigma * self.sigma_data / norm,
            1 / norm,
            torch.log(sigma) / 4,
        )


PRECONDS: dict[str, type[Precond]] = {
    "VPPrecond": VPPrecond,
    "VEPrecond": VEPrecond,
    "EDMPrecond": EDMPrecond,
}
