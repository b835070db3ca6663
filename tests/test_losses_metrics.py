"""Edge target, losses and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsiseg.train.losses import (
    IGNORE_INDEX,
    boundary_map,
    edge_loss,
    edge_target,
    gamma_schedule,
    segmentation_loss,
)
from wsiseg.train.metrics import bootstrap_mean_iou, confusion_matrix, iou_dice, mean_iou


def test_boundary_map_marks_both_sides_of_a_class_change() -> None:
    lab = torch.zeros(1, 6, 6, dtype=torch.long)
    lab[0, :, 3:] = 2
    b = boundary_map(lab)[0, 0]
    assert b[:, 2].all() and b[:, 3].all()
    assert b[:, :2].sum() == 0 and b[:, 4:].sum() == 0


def test_boundary_does_not_depend_on_class_ids() -> None:
    a = torch.zeros(1, 8, 8, dtype=torch.long)
    a[0, 2:6, 2:6] = 1
    b = a * 3  # same shapes, other ids (the official target scaled with id differences)
    assert torch.equal(boundary_map(a), boundary_map(b))


def test_single_class_region_gives_finite_uniform_target() -> None:
    lab = torch.full((2, 64, 64), 1, dtype=torch.long)
    t = edge_target(lab, (16, 16))
    assert torch.isfinite(t).all()
    assert torch.allclose(t, torch.ones_like(t))
    dens = torch.full((2, 1, 16, 16), 1 / 256)
    assert float(edge_loss(dens, t)) == pytest.approx(0.0, abs=1e-10)


def test_edge_target_has_mean_one_and_peaks_at_boundaries() -> None:
    lab = torch.zeros(1, 128, 128, dtype=torch.long)
    lab[0, 40:60, 40:60] = 3
    t = edge_target(lab, (16, 16))
    assert float(t.mean()) == pytest.approx(1.0, abs=1e-5)
    assert float(t[0, 0, 5, 5]) > float(t[0, 0, 14, 14])


def test_edge_loss_is_scale_free_and_has_gradients() -> None:
    logits = torch.zeros(1, 1, 8, 8, requires_grad=True)
    dens = logits.flatten(1).softmax(1).view(1, 1, 8, 8)
    target = torch.ones(1, 1, 8, 8)
    target[0, 0, 3, 3] = 5.0
    loss = edge_loss(dens, target / target.mean())
    loss.backward()
    assert float(loss.detach()) > 0 and logits.grad is not None and logits.grad.abs().sum() > 0


def test_segmentation_loss_ignores_padding() -> None:
    logits = torch.randn(1, 4, 4, 4)
    lab = torch.full((1, 4, 4), IGNORE_INDEX)
    assert float(segmentation_loss(logits, lab)) == 0.0
    lab[0, 0, 0] = 1
    assert float(segmentation_loss(logits, lab)) > 0


def test_gamma_decays_to_zero() -> None:
    vals = [gamma_schedule(s, 100, 2.0) for s in (0, 50, 99, 100)]
    assert vals[0] == 2.0 and vals[0] > vals[1] > vals[2] > vals[3] == 0.0


def test_perfect_prediction_gives_miou_one() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(50, 60))
    cm = confusion_matrix(truth, truth, 4)
    assert mean_iou(cm) == 1.0
    iou, dice = iou_dice(cm)
    assert np.allclose(iou, 1) and np.allclose(dice, 1)


def test_known_confusion() -> None:
    truth = np.array([0, 0, 1, 1, IGNORE_INDEX])
    pred = np.array([0, 1, 1, 1, 0])
    cm = confusion_matrix(pred, truth, 2)
    assert cm.tolist() == [[1, 1], [0, 2]]
    iou, dice = iou_dice(cm)
    assert iou.tolist() == pytest.approx([0.5, 2 / 3])
    assert dice.tolist() == pytest.approx([2 / 3, 0.8])


def test_bootstrap_interval_brackets_pooled_value() -> None:
    rng = np.random.default_rng(1)
    cms = []
    for _ in range(12):
        t = rng.integers(0, 3, 2000)
        p = np.where(rng.random(2000) < 0.8, t, rng.integers(0, 3, 2000))
        cms.append(confusion_matrix(p, t, 3))
    lo, hi, reps = bootstrap_mean_iou(np.stack(cms), n_boot=500)
    point = mean_iou(np.stack(cms).sum(0))
    assert lo <= point <= hi and hi - lo < 0.1 and reps.shape == (500,)
