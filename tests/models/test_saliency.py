"""Saliency net: density output, near-uniform start, gradients, cost."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wsiseg.models.saliency import OFFICIAL_WIDTH, SaliencyNet


@pytest.mark.parametrize("out_hw", [(32, 32), (24, 40), (64, 64)])
def test_output_is_a_density(out_hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = SaliencyNet()
    d = net(torch.randn(3, 3, 64, 64), out_hw)
    assert d.shape == (3, 1, *out_hw)
    assert d.dtype == torch.float32
    assert (d > 0).all()
    torch.testing.assert_close(d.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-5, rtol=0)


def test_initial_density_is_near_uniform() -> None:
    torch.manual_seed(1)
    net = SaliencyNet()
    h, w = 32, 48
    # A strongly structured view: the untrained net must still give ~uniform density.
    x = torch.zeros(2, 3, 64, 64)
    x[:, :, :32] = 3.0
    x[1] = torch.randn(3, 64, 64) * 2
    with torch.no_grad():
        d = net(x, (h, w))
    ratio = d * (h * w)
    assert float((ratio - 1).abs().max()) < 0.02


def test_gradients_reach_every_weight() -> None:
    torch.manual_seed(2)
    net = SaliencyNet(width=8)
    d = net(torch.randn(2, 3, 32, 32), (16, 16))
    target = torch.rand_like(d)
    ((d - target / target.sum()) ** 2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name


def test_training_moves_density_towards_target() -> None:
    torch.manual_seed(3)
    net = SaliencyNet(width=8)
    x = torch.randn(1, 3, 16, 16)
    target = torch.zeros(1, 1, 16, 16)
    target[..., :, :8] = 1.0
    target /= target.sum()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch.no_grad():
        start = float(net(x, (16, 16))[..., :, :8].sum())
    for _ in range(30):
        opt.zero_grad()
        loss = ((net(x, (16, 16)) - target) ** 2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = float(net(x, (16, 16))[..., :, :8].sum())
    assert end > start + 0.1


def test_resize_uses_align_corners() -> None:
    # With align_corners=True the corner logits survive an upsampling unchanged, so
    # log-density differences between corners equal logit differences.
    torch.manual_seed(4)
    net = SaliencyNet(width=8)
    with torch.no_grad():
        net.head.weight.normal_(std=1.0)
        x = torch.randn(1, 3, 9, 9)
        z = net.logits(x)[0, 0]
        d = net(x, (17, 33))[0, 0]
    logd = d.log()
    for zi, di in [((0, -1), (0, -1)), ((-1, 0), (-1, 0)), ((-1, -1), (-1, -1))]:
        torch.testing.assert_close(logd[di] - logd[0, 0], z[zi] - z[0, 0], atol=1e-4, rtol=0)


def test_same_size_needs_no_resize() -> None:
    torch.manual_seed(5)
    net = SaliencyNet(width=8)
    x = torch.randn(1, 3, 12, 10)
    with torch.no_grad():
        expected = torch.softmax(net.logits(x).reshape(1, -1), dim=1).reshape(1, 1, 12, 10)
        torch.testing.assert_close(net(x, (12, 10)), expected)


def test_float32_under_autocast() -> None:
    net = SaliencyNet(width=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = net(torch.randn(2, 3, 16, 16), (8, 8))
    assert d.dtype == torch.float32
    torch.testing.assert_close(d.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("width", [8, 24, OFFICIAL_WIDTH])
def test_macs_per_pixel_matches_flop_counter(width: int) -> None:
    net = SaliencyNet(width=width).eval()
    x = torch.randn(1, 3, 16, 12)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.logits(x)
    assert counter.get_total_flops() == 2 * net.macs_per_pixel() * 16 * 12


def test_default_is_much_cheaper_than_official() -> None:
    official = SaliencyNet(width=OFFICIAL_WIDTH).macs_per_pixel()
    assert official == 378_456  # 9*3*192 + 9*192*192 + 9*192*24 + 24
    assert SaliencyNet().macs_per_pixel() < official / 20


def test_bad_input() -> None:
    net = SaliencyNet()
    with pytest.raises(ValueError):
        net(torch.randn(1, 4, 8, 8), (4, 4))
    with pytest.raises(ValueError):
        net(torch.randn(1, 3, 8, 8), (0, 4))
    with pytest.raises(ValueError):
        SaliencyNet(width=0)
