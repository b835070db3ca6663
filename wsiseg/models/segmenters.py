"""Registry of segmenters (segmentation-models-pytorch and one tiny network of our own).

Every built-in entry is built with ``encoder_weights=None``: weights are never
downloaded; trained weights come from wsiseg checkpoints. Every built-in entry is
wrapped in :class:`PadToMultiple`, so any input size works (the input is padded
on the bottom/right to a multiple of the network's output stride and the logits
are cropped back; padding on the far side keeps pixel centres where they were,
which the ``align_corners=True`` convention relies on).

Measured at a 128 x 128 input, ``in_channels=3``, ``num_classes=3``, batch 1, eval
mode (parameters from ``parameters()``; multiply-adds from
``torch.utils.flop_counter.FlopCounterMode`` as FLOPs / 2, i.e. convolutions and
matmuls; fp16 size = the state dict at 2 bytes per float, the size of a ``half``
checkpoint's weights):

==========================  ==========  ===========  ========  ======
name                        parameters  MACs @ 128²  fp16 MB   stride
==========================  ==========  ===========  ========  ======
``unet-resnet18``           12,157,043  0.878 G      24.34     32
``unet-resnet34``           22,265,203  1.482 G      44.57     32
``fpn-resnet18``            11,706,499  0.730 G      23.43     32
``deeplabv3plus-resnet18``  11,647,187  1.047 G      23.32     16
``unet-tiny``               110,275     0.141 G      0.22      8
==========================  ==========  ===========  ========  ======

The U-Net decoders default to ``(96, 64, 32, 16, 16)`` channels instead of smp's
``(256, 128, 64, 32, 16)`` so that a half-precision DeformSeg checkpoint
(segmenter + saliency net) stays under 25 MB; FPN and DeepLabV3+ decoders are
slimmed for the same reason (``unet-resnet34`` is the larger option and does not
fit that budget). Any default can be overridden through the keyword arguments of
:func:`build_segmenter`. An input whose sides are not multiples of the stride
costs as much as its padded size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsiseg.errors import WsisegError

__all__ = [
    "PadToMultiple",
    "SegmenterFactory",
    "TinyUNet",
    "UnknownSegmenterError",
    "build_segmenter",
    "known_segmenters",
    "register_segmenter",
]

logger = logging.getLogger(__name__)


class SegmenterFactory(Protocol):
    """Builds a segmenter mapping ``[B, in_channels, H, W]`` to ``[B, num_classes, H, W]``."""

    def __call__(self, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module: ...


class UnknownSegmenterError(WsisegError, KeyError):
    """A segmenter name that is not in the registry (the message lists the known ones)."""

    def __str__(self) -> str:
        # KeyError would quote the message; keep it one plain line.
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, SegmenterFactory] = {}


def register_segmenter(name: str) -> Callable[[SegmenterFactory], SegmenterFactory]:
    """Register a segmenter factory under ``name`` (decorator).

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"unet-resnet18"``; must not be registered already.

    Returns
    -------
    Callable
        A decorator that stores the factory and returns it unchanged.

    Raises
    ------
    ValueError
        If ``name`` is empty or already registered.
    """
    if not name:
        raise ValueError("segmenter name must be a non-empty string")

    def decorator(factory: SegmenterFactory) -> SegmenterFactory:
        if name in _REGISTRY:
            raise ValueError(f"segmenter {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def known_segmenters() -> list[str]:
    """Return the registered segmenter names, sorted."""
    return sorted(_REGISTRY)


def build_segmenter(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered segmenter with freshly initialised weights.

    Parameters
    ----------
    name : str
        A name from :func:`known_segmenters`.
    in_channels : int
        Input channels (3 for RGB).
    num_classes : int
        Output channels (logits, one per class).
    **kwargs
        Passed on to the factory (e.g. ``decoder_channels`` for the U-Nets).

    Returns
    -------
    torch.nn.Module
        Maps ``[B, in_channels, H, W]`` to logits ``[B, num_classes, H, W]`` for any H, W.

    Raises
    ------
    UnknownSegmenterError
        If ``name`` is not registered (a ``KeyError`` and a ``WsisegError``).
    ValueError
        If ``in_channels`` or ``num_classes`` is not positive, or ``encoder_weights``
        is passed with a value other than ``None``.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise UnknownSegmenterError(
            f"unknown segmenter {name!r}; known segmenters: {', '.join(known_segmenters())}"
        )
    if in_channels < 1 or num_classes < 1:
        raise ValueError(
            f"in_channels and num_classes must be positive, got {in_channels}, {num_classes}"
        )
    if kwargs.get("encoder_weights") is not None:
        raise ValueError(
            "encoder_weights must be None: wsiseg never downloads weights at run time; "
            "load trained weights from a checkpoint instead"
        )
    kwargs.pop("encoder_weights", None)
    model = factory(in_channels, num_classes, **kwargs)
    logger.debug(
        "built segmenter %s (%d parameters)", name, sum(p.numel() for p in model.parameters())
    )
    return model


class PadToMultiple(nn.Module):
    """Pad the input to a multiple of ``multiple`` (bottom/right), run ``model``, crop back.

    Parameters
    ----------
    model : torch.nn.Module
        A network whose input sides must be multiples of ``multiple`` and whose
        output has the input's spatial size.
    multiple : int
        The network's output stride (32 for a 5-level ResNet encoder).
    mode : str
        Padding mode for :func:`torch.nn.functional.pad`; ``"replicate"`` (the
        default) avoids an artificial dark frame and works for any input size.
    """

    def __init__(self, model: nn.Module, multiple: int, mode: str = "replicate") -> None:
        super().__init__()
        if multiple < 1:
            raise ValueError(f"multiple must be positive, got {multiple}")
        self.model = model
        self.multiple = int(multiple)
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``[B, C, H, W]`` for input ``[B, in_channels, H, W]``."""
        h, w = x.shape[-2:]
        pad_h = -h % self.multiple
        pad_w = -w % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=self.mode)
        out: Tensor = self.model(x)
        return out[..., :h, :w] if (pad_h or pad_w) else out

    def extra_repr(self) -> str:
        return f"multiple={self.multiple}, mode={self.mode!r}"


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """A small U-Net (three levels, two 3x3 conv-BN-ReLU per block) for fast tests.

    Parameters
    ----------
    in_channels : int
        Input channels.
    num_classes : int
        Output channels.
    widths : tuple of int
        Channels per level, finest first; the input sides must be multiples of
        ``2 ** (len(widths) - 1)`` (wrap it in :class:`PadToMultiple`).
    """

    def __init__(
        self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (8, 16, 32, 64)
    ) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError("TinyUNet needs at least two levels")
        self.widths = tuple(int(c) for c in widths)
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in self.widths:
            self.down.append(nn.Sequential(_conv_bn_relu(c_prev, c), _conv_bn_relu(c, c)))
            c_prev = c
        self.up = nn.ModuleList()
        for c_skip in reversed(self.widths[:-1]):
            self.up.append(nn.Sequential(_conv_bn_relu(c_prev + c_skip, c_skip)))
            c_prev = c_skip
        self.head = nn.Conv2d(c_prev, num_classes, 1)

    @property
    def output_stride(self) -> int:
        """The factor by which the input sides must be divisible."""
        return int(2 ** (len(self.widths) - 1))

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``[B, num_classes, H, W]``."""
        skips: list[Tensor] = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        out: Tensor = self.head(x)
        return out


# -- built-in entries ------------------------------------------------------------------

_UNET_DECODER = (96, 64, 32, 16, 16)


def _smp_stride(model: nn.Module, default: int = 32) -> int:
    encoder = getattr(model, "encoder", None)
    stride = getattr(encoder, "output_stride", default)
    return int(stride)


def _smp_kwargs(defaults: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    merged.update(kwargs)
    merged["encoder_weights"] = None  # never download
    return merged


def _smp_unet(encoder: str) -> SegmenterFactory:
    def factory(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
        import segmentation_models_pytorch as smp

        net = smp.Unet(
            **_smp_kwargs(
                {"encoder_name": encoder, "decoder_channels": _UNET_DECODER},
                kwargs,
            ),
            in_channels=in_channels,
            classes=num_classes,
        )
        return PadToMultiple(net, _smp_stride(net))

    return factory


register_segmenter("unet-resnet18")(_smp_unet("resnet18"))
register_segmenter("unet-resnet34")(_smp_unet("resnet34"))


@register_segmenter("fpn-resnet18")
def _fpn_resnet18(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    import segmentation_models_pytorch as smp

    net = smp.FPN(
        **_smp_kwargs(
            {
                "encoder_name": "resnet18",
                "decoder_pyramid_channels": 128,
                "decoder_segmentation_channels": 64,
            },
            kwargs,
        ),
        in_channels=in_channels,
        classes=num_classes,
    )
    return PadToMultiple(net, _smp_stride(net))


@register_segmenter("deeplabv3plus-resnet18")
def _deeplabv3plus_resnet18(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    import segmentation_models_pytorch as smp

    net = smp.DeepLabV3Plus(
        **_smp_kwargs({"encoder_name": "resnet18", "decoder_channels": 128}, kwargs),
        in_channels=in_channels,
        classes=num_classes,
    )
    return PadToMultiple(net, _smp_stride(net, default=16))


@register_segmenter("unet-tiny")
def _unet_tiny(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    net = TinyUNet(in_channels, num_classes, **kwargs)
    return PadToMultiple(net, net.output_stride)
