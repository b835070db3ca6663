"""Segmenter registry: names, odd input sizes, no downloads."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from wsiseg.errors import WsisegError
from wsiseg.models import segmenters
from wsiseg.models.segmenters import (
    PadToMultiple,
    TinyUNet,
    UnknownSegmenterError,
    build_segmenter,
    known_segmenters,
    register_segmenter,
)

REQUIRED = {"unet-resnet18", "unet-resnet34", "fpn-resnet18", "deeplabv3plus-resnet18", "unet-tiny"}


def test_required_names_registered() -> None:
    assert REQUIRED <= set(known_segmenters())
    assert known_segmenters() == sorted(known_segmenters())


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(UnknownSegmenterError) as info:
        build_segmenter("unet-resnet1000", 3, 2)
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, WsisegError)
    message = str(err)
    assert "\n" not in message and not message.startswith("'")
    assert "unet-resnet1000" in message
    for name in known_segmenters():
        assert name in message


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_runs_on_odd_sizes(name: str) -> None:
    torch.manual_seed(0)
    model = build_segmenter(name, in_channels=3, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 100, 75))
    assert out.shape == (2, 3, 100, 75)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_trains_on_odd_size_with_other_channels() -> None:
    torch.manual_seed(0)
    model = build_segmenter("unet-tiny", in_channels=1, num_classes=4).train()
    x = torch.randn(2, 1, 33, 47)
    target = torch.randint(0, 4, (2, 33, 47))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads if g is not None)


def test_no_network_access(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in known_segmenters():
        build_segmenter(name, 3, 2)


def test_encoder_weights_refused() -> None:
    with pytest.raises(ValueError, match="never downloads"):
        build_segmenter("unet-resnet18", 3, 2, encoder_weights="imagenet")
    # None is accepted (and is what is used anyway).
    assert isinstance(build_segmenter("unet-tiny", 3, 2, encoder_weights=None), nn.Module)


def test_bad_channel_counts() -> None:
    with pytest.raises(ValueError):
        build_segmenter("unet-tiny", 0, 2)
    with pytest.raises(ValueError):
        build_segmenter("unet-tiny", 3, 0)


def test_kwargs_reach_factory() -> None:
    model = build_segmenter("unet-tiny", 3, 2, widths=(4, 8))
    assert isinstance(model, PadToMultiple) and model.multiple == 2
    model = build_segmenter("unet-resnet18", 3, 2, decoder_channels=(64, 32, 16, 16, 8))
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 2, 40, 40)


def test_register_and_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segmenters, "_REGISTRY", dict(segmenters._REGISTRY))

    @register_segmenter("conv1x1")
    def _factory(in_channels: int, num_classes: int, **kwargs: object) -> nn.Module:
        return nn.Conv2d(in_channels, num_classes, 1)

    assert "conv1x1" in known_segmenters()
    assert build_segmenter("conv1x1", 3, 5)(torch.randn(1, 3, 7, 9)).shape == (1, 5, 7, 9)
    with pytest.raises(ValueError, match="already registered"):
        register_segmenter("conv1x1")(_factory)


def test_pad_to_multiple_keeps_pixels_in_place() -> None:
    # With an identity network the crop must give back the input exactly.
    wrapper = PadToMultiple(nn.Identity(), 32)
    x = torch.randn(1, 3, 37, 70)
    assert torch.equal(wrapper(x), x)
    y = torch.randn(1, 3, 64, 32)
    assert torch.equal(wrapper(y), y)


def test_tiny_unet_stride() -> None:
    assert TinyUNet(3, 2).output_stride == 8
    with pytest.raises(ValueError):
        TinyUNet(3, 2, widths=(8,))
