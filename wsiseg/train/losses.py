"""Losses: segmentation loss on sampled labels, and the saliency edge loss.

The edge target fixes the official code's (see DESIGN.md §1.6): boundaries are taken
from the one-hot labels at full label resolution (so they do not depend on class ids,
and small glands survive), area-pooled to the saliency grid, blurred, and put on the
same scale as the saliency (both mean 1). A region holding one class gets a uniform
target (no NaN, no pull toward any place).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "boundary_map",
    "edge_target",
    "edge_loss",
    "segmentation_loss",
    "gamma_schedule",
]

#: Label value that losses and metrics ignore (padding outside an image).
IGNORE_INDEX = 255


def boundary_map(labels: Tensor) -> Tensor:
    """1 where a pixel's 4-neighbour has another class, else 0; [B,H,W] -> [B,1,H,W] float.

    Ignored pixels never form boundaries with their neighbours.
    """
    lab = labels.long()
    valid = lab != IGNORE_INDEX
    b = torch.zeros_like(lab, dtype=torch.bool)
    dy = (lab[:, 1:, :] != lab[:, :-1, :]) & valid[:, 1:, :] & valid[:, :-1, :]
    dx = (lab[:, :, 1:] != lab[:, :, :-1]) & valid[:, :, 1:] & valid[:, :, :-1]
    b[:, 1:, :] |= dy
    b[:, :-1, :] |= dy
    b[:, :, 1:] |= dx
    b[:, :, :-1] |= dx
    return b.unsqueeze(1).float()


def _blur(x: Tensor, sigma: float) -> Tensor:
    if sigma <= 0:
        return x
    r = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def edge_target(
    labels: Tensor, grid_hw: tuple[int, int], *, blur_cells: float = 1.0, floor: float = 0.5
) -> Tensor:
    """Edge target on the saliency grid, mean 1 per sample: [B,H,W] labels -> [B,1,h,w].

    ``floor`` mixes in a uniform share so that boundary-free parts keep some density.
    """
    b = boundary_map(labels)
    pooled = F.adaptive_avg_pool2d(b, grid_hw)
    pooled = _blur(pooled, blur_cells)
    mean = pooled.mean(dim=(2, 3), keepdim=True)
    has_edges = mean > 0
    normed = torch.where(has_edges, pooled / mean.clamp_min(1e-12), torch.ones_like(pooled))
    return floor + (1.0 - floor) * normed


def edge_loss(density: Tensor, target: Tensor) -> Tensor:
    """MSE between the saliency density scaled to mean 1 and the mean-1 edge target."""
    h, w = density.shape[-2:]
    scaled = density.float() * (h * w) / density.float().sum(dim=(2, 3), keepdim=True)
    return F.mse_loss(scaled, target.float())


def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on (sampled) labels, ignoring `IGNORE_INDEX`; 0 if nothing is valid."""
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX)


def gamma_schedule(step: int, total: int, gamma0: float, power: float = 0.9) -> float:
    """Edge-loss weight with the poly decay the paper used: gamma0 * (1 - step/total)^power."""
    if total <= 0:
        return gamma0
    return float(gamma0 * max(0.0, 1.0 - step / total) ** power)
