"""Saliency network: a low-resolution view of a region -> sampling density.

The layout is the official "fovsimple" one (conv3x3 3->192, ReLU, conv3x3
192->192, ReLU, conv3x3 192->24, ReLU, conv1x1 24->1) with the width as a
setting. The official widths cost ~378k multiply-adds per input pixel, more on a
64² view than a ResNet-18 U-Net on a 128² sample; the default width here (24)
costs ~11k (see :meth:`SaliencyNet.macs_per_pixel`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OFFICIAL_WIDTH", "SaliencyNet"]

logger = logging.getLogger(__name__)

#: Width of the official saliency net (for cost comparisons).
OFFICIAL_WIDTH = 192

# Std of the last layer's initial weights. Small, so that the initial logits are
# nearly constant and the initial density nearly uniform, yet not zero, so that
# every layer gets a gradient from the first step (a zero last layer would block
# the gradient to the layers before it until it has moved).
_LAST_INIT_STD = 1e-3


class SaliencyNet(nn.Module):
    """Fully convolutional saliency net; its output is a density over the saliency grid.

    Parameters
    ----------
    width : int
        Channels of the first two 3x3 convolutions (official: 192).
    bottleneck : int
        Channels of the third 3x3 convolution (official: 24).
    in_channels : int
        Input channels (3 for a normalised RGB view).

    Notes
    -----
    Padding keeps the spatial size. The last (1x1) layer starts near zero with a
    zero bias, so the initial logits are almost constant and the density almost
    uniform: training starts from (almost exactly) uniform downsampling, a sound
    baseline, and learns where to deviate from it, instead of starting from a
    random warp that the segmenter would first have to undo.
    """

    def __init__(self, width: int = 24, bottleneck: int = 24, in_channels: int = 3) -> None:
        super().__init__()
        if width < 1 or bottleneck < 1 or in_channels < 1:
            raise ValueError(
                f"width, bottleneck and in_channels must be positive, got "
                f"{width}, {bottleneck}, {in_channels}"
            )
        self.width = int(width)
        self.bottleneck = int(bottleneck)
        self.in_channels = int(in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, bottleneck, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(bottleneck, 1, 1)
        nn.init.normal_(self.head.weight, std=_LAST_INIT_STD)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def logits(self, x: Tensor) -> Tensor:
        """Return the raw saliency logits ``[B, 1, s_h, s_w]`` at the input's size."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        out: Tensor = self.head(self.features(x))
        return out

    def forward(self, x: Tensor, out_hw: Sequence[int]) -> Tensor:
        """Return the sampling density on an ``out_hw`` grid.

        Parameters
        ----------
        x : torch.Tensor
            Normalised low-resolution view ``[B, in_channels, s_h, s_w]``.
        out_hw : sequence of two ints
            Saliency grid size ``(h, w)``.

        Returns
        -------
        torch.Tensor
            Float32 density ``[B, 1, h, w]``: positive, each image sums to 1.
            The logits are resized bilinearly (``align_corners=True``), then a
            softmax runs over all ``h * w`` positions, in float32 even under
            autocast (grids stay float32).
        """
        h, w = (int(v) for v in out_hw)
        if h < 1 or w < 1:
            raise ValueError(f"out_hw must be positive, got {tuple(out_hw)}")
        z = self.logits(x).float()
        if z.shape[-2:] != (h, w):
            z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=True)
        b = z.shape[0]
        with torch.autocast(device_type=z.device.type, enabled=False):
            d = torch.softmax(z.reshape(b, -1).float(), dim=1)
        return d.reshape(b, 1, h, w)

    def macs_per_pixel(self) -> int:
        """Multiply-adds per input pixel (convolution weights; biases and ReLUs not counted).

        The convolutions keep the spatial size, so the cost of a view of ``n``
        pixels is ``n * macs_per_pixel()`` (plus the negligible resize and softmax).
        """
        total = 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                total += kh * kw * (m.in_channels // m.groups) * m.out_channels
        return total

    def extra_repr(self) -> str:
        return f"width={self.width}, bottleneck={self.bottleneck}, in_channels={self.in_channels}"
