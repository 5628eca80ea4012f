"""SuDoRM-RF: efficient waveform-domain source separation.

Tzinis, Wang, Smaragdis, "Sudo rm -rf: Efficient networks for universal audio
source separation", MLSP 2020 (arXiv:2007.06833), plus the "improved" variant
from the authors' public code (GlobLN norms, a PReLU mask head and ReLU masks).

Pipeline (shapes for a mono mixture of ``T`` samples, ``F = T' / (L // 2)``
encoder frames where ``T'`` is ``T`` zero-padded to :attr:`SuDORMRF.pad_multiple`)::

    (B, T') --encoder--> (B, N, F) --norm, 1x1--> (B, C, F)
            --U-ConvBlocks x num_blocks--> (B, C, F)
            --mask head--> (B, S, N, F)   masks, multiplied with the encoder output
            --decoder--> (B, S, T') --crop--> (B, S, T)

Parameter counts (``num_sources=2``, see :data:`MODEL_CONFIGS`):

=====================  =========
config                 params
=====================  =========
``sudormrf-1.0x``      2,662,022
``sudormrf-0.5x``      1,414,790
``sudormrf-0.25x``       791,174
``sudormrf-improved``  5,016,353
``sudormrf-tiny``        112,582
=====================  =========

The original-variant counts equal the published ones only because, like the
reference implementation, the model owns one GroupNorm(N) that the forward pass
never uses (1,024 parameters at N=512).  It is kept frozen
(``requires_grad=False``) so optimisers, DDP and gradient code never see it;
pass ``reference_param_parity=False`` to drop it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .mask_conv import BandedMaskConv
from .norms import make_norm

VARIANTS = ("original", "improved")


class DepthwiseConvNorm(nn.Module):
    """Depthwise Conv1d (kernel 5, 'same' padding) followed by a norm.

    Shape:
        - Input: ``(batch, H, frames)``
        - Output: ``(batch, H, ceil(frames / stride))``
    """

    def __init__(self, channels: int, stride: int, norm: str, kernel_size: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            channels,
            channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            groups=channels,
        )
        self.norm = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def _upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling along the last axis: ``(..., n) -> (..., 2n)``.

    Same values as ``F.interpolate(x, scale_factor=2, mode="nearest")`` but
    integer-only shape arithmetic, which keeps ``torch.compile(dynamic=True)``
    free of float size expressions.
    """
    return x.unsqueeze(-1).expand(*x.shape, 2).flatten(-2)


class UConvBlock(nn.Module):
    """One U-ConvBlock: expand, analyse at ``depth`` resolutions, fuse, project back.

    1. 1x1 conv ``C -> H`` + norm + PReLU.
    2. Depthwise conv (stride 1) at level 0, then ``depth - 1`` successive
       stride-2 depthwise convs, each followed by a norm.
    3. Coarse to fine: nearest x2 upsampling of the coarser level, added to
       the next finer one.
    4. norm + PReLU on the fused map, 1x1 conv ``H -> C``.
    5. Residual connection with the block input.
       ``original``: ``PReLU(norm(norm(conv(h)) + x))``;
       ``improved``: ``conv(h) + x`` (no norm or activation on the residual path).

    ``original`` uses ``GroupNorm(1, .)`` and per-channel PReLUs, ``improved``
    uses :class:`~model.norms.GlobalLayerNorm` and single-parameter PReLUs.

    Args:
        channels: bottleneck channels ``C`` (block input and output).
        hidden_channels: channels ``H`` inside the block.
        depth: number of resolutions (upsampling depth).
        variant: ``"original"`` or ``"improved"``.

    Shape:
        - Input: ``(batch, C, frames)`` with ``frames`` divisible by ``2 ** (depth - 1)``
        - Output: ``(batch, C, frames)``
    """

    def __init__(self, channels: int, hidden_channels: int, depth: int, variant: str) -> None:
        super().__init__()
        original = variant == "original"
        norm = "groupnorm" if original else "gln"

        def prelu(n: int) -> nn.PReLU:
            return nn.PReLU(n if original else 1)

        self.original = original
        self.expand = nn.Conv1d(channels, hidden_channels, 1)
        self.expand_norm = make_norm(norm, hidden_channels)
        self.expand_act = prelu(hidden_channels)
        self.levels = nn.ModuleList(
            DepthwiseConvNorm(hidden_channels, stride=1 if i == 0 else 2, norm=norm)
            for i in range(depth)
        )
        self.fuse_norm = make_norm(norm, hidden_channels)
        self.fuse_act = prelu(hidden_channels)
        self.project = nn.Conv1d(hidden_channels, channels, 1)
        if original:
            self.project_norm = make_norm(norm, channels)
            self.out_norm = make_norm(norm, channels)
            self.out_act = prelu(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand_act(self.expand_norm(self.expand(x)))

        # Successively downsampled views of the same features.
        feats = [self.levels[0](h)]
        for level in self.levels[1:]:
            feats.append(level(feats[-1]))

        # Fuse coarse to fine; sizes match exactly because the model pads the
        # input so that frames are divisible by 2 ** (depth - 1).
        fused = feats[-1]
        for finer in reversed(feats[:-1]):
            fused = finer + _upsample_nearest_2x(fused)

        out = self.project(self.fuse_act(self.fuse_norm(fused)))
        if self.original:
            return self.out_act(self.out_norm(self.project_norm(out) + x))
        return out + x


class SuDORMRF(nn.Module):
    """SuDoRM-RF mask-based separator operating on raw waveforms.

    Args:
        num_sources: number of sources ``S`` to estimate.
        enc_kernel: encoder / decoder kernel ``L`` (odd); hop is ``L // 2``.
        enc_channels: encoder basis size ``N``
            (``enc_num_basis`` in the reference code).
        bottleneck_channels: channels ``C`` between U-ConvBlocks
            (``out_channels`` in the reference code).
        hidden_channels: channels ``H`` inside each U-ConvBlock
            (``in_channels`` in the reference code).
        num_blocks: number of U-ConvBlocks ``B``.
        upsampling_depth: resolutions per U-ConvBlock.
        variant: ``"original"`` (MLSP 2020 paper) or ``"improved"``.
        reference_param_parity: original variant only; keep the reference
            implementation's unused (frozen) GroupNorm(N) so parameter counts
            equal the published ones.
        mask_gemm: original variant only; compute the ``(N + 1, 1)`` mask
            Conv2d as a banded Toeplitz matrix product
            (:class:`~model.mask_conv.BandedMaskConv`, default, ~40x faster
            forward + backward on the CPU) or, with ``False``, with
            ``nn.Conv2d.forward`` as in the paper's code.  Same parameters and
            ``state_dict`` either way; ``model.mask_conv.gemm`` switches it later.

    Variants:
        ``original``: encoder Conv1d(1, N, L, stride L//2) + ReLU;
        GroupNorm(1, N) + 1x1 conv N -> C; U-ConvBlocks; 1x1 conv C -> N
        (skipped when C == N); a Conv2d with kernel ``(N + 1, 1)`` that mixes
        the whole basis axis into one mask per source (computed as a banded
        matrix product, see ``mask_gemm``); softmax over sources
        (sigmoid when S == 1); per-source ConvTranspose1d decoder
        (``groups=S``, with bias).

        ``improved``: linear encoder without bias (no ReLU, as in the
        reference code); GlobLN; U-ConvBlocks without the residual-path
        norm/act; mask head PReLU + 1x1 conv C -> S*N; ReLU masks; one
        ConvTranspose1d over all masked representations (``groups=1``, no
        bias).  Encoder/decoder weights use Xavier-uniform init.

    Forward:
        x: ``(batch, time)`` or ``(batch, 1, time)``, ``time >= 1``.
        return_masks: also return the masks.

    Returns:
        ``(batch, S, time)`` estimates, same ``time`` as the input; with
        ``return_masks=True`` a tuple ``(estimates, masks)`` where masks are
        ``(batch, S, N, frames)``.

    The input is zero-padded at the end to a multiple of
    :attr:`pad_multiple` ``= (L // 2) * 2 ** (upsampling_depth - 1)`` so that
    the encoder frames halve cleanly at every level; for L=21, depth=5 this
    equals the reference's ``lcm(L // 2, 2 ** depth) = 160``.  The padding
    amount is plain integer arithmetic on the static shape, so the model
    compiles with ``torch.compile(fullgraph=True)``.
    """

    def __init__(
        self,
        num_sources: int = 2,
        enc_kernel: int = 21,
        enc_channels: int = 512,
        bottleneck_channels: int = 128,
        hidden_channels: int = 512,
        num_blocks: int = 16,
        upsampling_depth: int = 5,
        variant: str = "original",
        reference_param_parity: bool = True,
        mask_gemm: bool = True,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if enc_kernel < 3 or enc_kernel % 2 == 0:
            raise ValueError(f"enc_kernel must be odd and >= 3, got {enc_kernel}")
        if num_sources < 1 or num_blocks < 0 or upsampling_depth < 1:
            raise ValueError("num_sources and upsampling_depth must be >= 1, num_blocks >= 0")
        if variant == "original" and enc_channels % 2:
            # The (N + 1)-tall mask conv keeps N rows only for even N.
            raise ValueError(f"original variant needs an even enc_channels, got {enc_channels}")

        self.num_sources = num_sources
        self.enc_kernel = enc_kernel
        self.enc_channels = enc_channels
        self.bottleneck_channels = bottleneck_channels
        self.hidden_channels = hidden_channels
        self.num_blocks = num_blocks
        self.upsampling_depth = upsampling_depth
        self.variant = variant
        original = variant == "original"

        hop = enc_kernel // 2
        self.hop = hop
        self.pad_multiple = hop * 2 ** (upsampling_depth - 1)

        # Front end: T' samples -> T' / hop frames (odd kernel, padding = hop).
        self.encoder = nn.Conv1d(
            1, enc_channels, enc_kernel, stride=hop, padding=hop, bias=original
        )
        self.encoder_act = nn.ReLU() if original else nn.Identity()

        norm = "groupnorm" if original else "gln"
        self.enc_norm = make_norm(norm, enc_channels)
        self.bottleneck = nn.Conv1d(enc_channels, bottleneck_channels, 1)

        self.blocks = nn.Sequential(
            *(
                UConvBlock(bottleneck_channels, hidden_channels, upsampling_depth, variant)
                for _ in range(num_blocks)
            )
        )

        if original:
            self.mask_reshape = (
                nn.Conv1d(bottleneck_channels, enc_channels, 1)
                if bottleneck_channels != enc_channels
                else nn.Identity()
            )
            # Slides an (N + 1)-tap kernel along the basis axis: every mask
            # entry sees every basis channel of its frame.  An nn.Conv2d
            # (same parameters and state_dict) that multiplies by the
            # equivalent banded Toeplitz matrices instead.
            self.mask_conv = BandedMaskConv(enc_channels, num_sources, gemm=mask_gemm)
            if reference_param_parity:
                # Present (but never called) in the reference implementation;
                # kept so counts match the paper, frozen so nothing trains it.
                self.unused_mask_input_norm = nn.GroupNorm(1, enc_channels, eps=1e-8)
                self.unused_mask_input_norm.requires_grad_(False)
        else:
            self.mask_act = nn.PReLU()
            self.mask_conv = nn.Conv1d(bottleneck_channels, num_sources * enc_channels, 1)

        # Back end: output_padding hop - 1 makes F frames decode to exactly
        # F * hop samples, i.e. the padded input length.
        self.decoder = nn.ConvTranspose1d(
            num_sources * enc_channels,
            num_sources,
            enc_kernel,
            stride=hop,
            padding=hop,
            output_padding=hop - 1,
            groups=num_sources if original else 1,
            bias=original,
        )

        if not original:
            nn.init.xavier_uniform_(self.encoder.weight)
            nn.init.xavier_uniform_(self.decoder.weight)

    def _masks(self, feats: torch.Tensor) -> torch.Tensor:
        """``(batch, C, frames)`` separator output -> ``(batch, S, N, frames)`` masks."""
        if self.variant == "original":
            logits = self.mask_conv(self.mask_reshape(feats).unsqueeze(1))
            if self.num_sources == 1:
                return torch.sigmoid(logits)
            return torch.softmax(logits, dim=1)
        logits = self.mask_conv(self.mask_act(feats))
        return torch.relu(logits.unflatten(1, (self.num_sources, self.enc_channels)))

    def forward(
        self, x: torch.Tensor, return_masks: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        elif x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(
                "SuDORMRF expects a mono waveform of shape (batch, time) or "
                f"(batch, 1, time); got shape {tuple(x.shape)}"
            )
        length = x.shape[-1]
        if length < 1:
            raise ValueError("input must have at least one sample")

        x = F.pad(x, (0, (-length) % self.pad_multiple))
        enc = self.encoder_act(self.encoder(x))  # (B, N, F)

        feats = self.blocks(self.bottleneck(self.enc_norm(enc)))  # (B, C, F)
        masks = self._masks(feats)  # (B, S, N, F)

        masked = (masks * enc.unsqueeze(1)).flatten(1, 2)  # (B, S*N, F)
        estimates = self.decoder(masked)[..., :length]  # (B, S, T)
        if return_masks:
            return estimates, masks
        return estimates


#: Named configurations; ``build_model`` adds ``num_sources``.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "sudormrf-1.0x": dict(
        variant="original", enc_kernel=21, enc_channels=512, bottleneck_channels=128,
        hidden_channels=512, num_blocks=16, upsampling_depth=5,
    ),
    "sudormrf-0.5x": dict(
        variant="original", enc_kernel=21, enc_channels=512, bottleneck_channels=128,
        hidden_channels=512, num_blocks=8, upsampling_depth=5,
    ),
    "sudormrf-0.25x": dict(
        variant="original", enc_kernel=21, enc_channels=512, bottleneck_channels=128,
        hidden_channels=512, num_blocks=4, upsampling_depth=5,
    ),
    "sudormrf-improved": dict(
        variant="improved", enc_kernel=21, enc_channels=512, bottleneck_channels=256,
        hidden_channels=512, num_blocks=16, upsampling_depth=5,
    ),
    # Small enough for CPU tests and quick experiments.
    "sudormrf-tiny": dict(
        variant="original", enc_kernel=21, enc_channels=128, bottleneck_channels=64,
        hidden_channels=128, num_blocks=4, upsampling_depth=4,
    ),
}


def build_model(name: str, num_sources: int = 2, **overrides: Any) -> SuDORMRF:
    """Build a named configuration from :data:`MODEL_CONFIGS`.

    Args:
        name: a key of :data:`MODEL_CONFIGS`.
        num_sources: number of sources to separate.
        **overrides: any :class:`SuDORMRF` argument, replacing the config's value
            (e.g. ``variant="improved"`` on the tiny config).
    """
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODEL_CONFIGS)}")
    kwargs = {**MODEL_CONFIGS[name], **overrides}
    return SuDORMRF(num_sources=num_sources, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model``.

    Args:
        trainable_only: count only parameters with ``requires_grad=True``
            (excludes the original variant's frozen parity norm).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
