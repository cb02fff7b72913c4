"""lunakit.train.metrics and losses against hand-computed cases and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lunakit.train.losses import dice_loss, segmentation_loss
from lunakit.train.metrics import (
    average_ranks,
    classification_metrics,
    confusion,
    roc_auc,
    roc_curve,
    segmentation_metrics,
)


def test_confusion_precision_recall_f1_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    predicted = np.array([1, 0, 1, 1, 0, 0, 0, 0])
    c = confusion(labels, predicted)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 2, 3)
    assert c.precision == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 4)
    assert c.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    empty = confusion(np.zeros(3), np.zeros(3))
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)


def test_roc_auc_hand_computed_with_ties():
    # positives 0.9, 0.4, 0.35; negatives 0.8, 0.4, 0.1.
    # Pairs (pos > neg): 0.9 beats all 3; 0.4 beats 0.1, ties 0.4; 0.35 beats 0.1.
    # AUC = (3 + 1 + 0.5 + 1) / 9 = 5.5 / 9
    labels = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.4, 0.35, 0.8, 0.4, 0.1])
    assert roc_auc(labels, scores) == pytest.approx(5.5 / 9)
    assert roc_auc([0, 1], [0.2, 0.7]) == 1.0
    assert roc_auc([1, 0], [0.2, 0.7]) == 0.0
    assert roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_average_ranks_match_scipy():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 7, size=200).astype(float)
    np.testing.assert_allclose(average_ranks(values), stats.rankdata(values))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_mann_whitney(seed):
    rng = np.random.default_rng(seed)
    n = 500
    labels = rng.random(n) < 0.3
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes many ties
    u = stats.mannwhitneyu(scores[labels], scores[~labels], alternative="two-sided").statistic
    expected = u / (labels.sum() * (~labels).sum())
    assert roc_auc(labels, scores) == pytest.approx(expected, rel=1e-12)


def test_roc_curve_area_equals_auc_and_ends():
    rng = np.random.default_rng(5)
    labels = rng.random(300) < 0.4
    scores = np.round(rng.random(300) + labels * 0.3, 2)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.isinf(thresholds[0]) and np.all(np.diff(thresholds[1:]) < 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(labels, scores), rel=1e-12)
    # each point: fraction of each class scoring >= its threshold
    k = len(thresholds) // 2
    assert tpr[k] == pytest.approx(np.mean(scores[labels] >= thresholds[k]))
    assert fpr[k] == pytest.approx(np.mean(scores[~labels] >= thresholds[k]))


def test_classification_metrics_per_class():
    labels = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.3, 0.6, 0.2, 0.1])
    losses = np.array([0.1, 1.2, 0.9, 0.2, 0.1])
    m = classification_metrics(labels, p, losses)
    assert m["loss"] == pytest.approx(2.5 / 5)
    assert m["loss_pos"] == pytest.approx(1.3 / 2)
    assert m["loss_neg"] == pytest.approx(1.2 / 3)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 2)
    assert m["correct"] == pytest.approx(3 / 5)
    assert m["correct_pos"] == pytest.approx(0.5) and m["correct_neg"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(5 / 6)  # 0.9 beats all 3 negatives, 0.3 beats 0.2 and 0.1


def test_segmentation_metrics_from_sums():
    m = segmentation_metrics(tp=30, fn=10, fp=20, loss_sum=3.0, count=4)
    assert m["recall"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 * 30 / (2 * 30 + 20 + 10))  # Dice of the masks
    assert m["fn_fraction"] == pytest.approx(0.25) and m["fp_fraction"] == pytest.approx(0.5)
    assert m["loss"] == pytest.approx(0.75)


def test_dice_loss_by_hand():
    pred = torch.tensor([0.5, 1.0, 0.0, 0.25]).reshape(1, 1, 2, 2)
    label = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    # |P.L| = 1.5, |P| = 1.75, |L| = 2 -> 1 - (3 + 1) / (3.75 + 1)
    assert float(dice_loss(pred, label)) == pytest.approx(1 - 4 / 4.75)
    # false-negative Dice: P*L = [0.5, 1, 0, 0] -> |P.L| = 1.5, |P| = 1.5 -> 1 - 4 / 4.5
    expected = (1 - 4 / 4.75) + 8 * (1 - 4 / 4.5)
    assert float(segmentation_loss(pred, label)) == pytest.approx(expected)
    perfect = label.clone()
    assert float(segmentation_loss(perfect, label)) == pytest.approx(0.0, abs=1e-7)


def test_bce_term_by_hand():
    pred = torch.tensor([0.5, 1.0, 0.0, 0.25]).reshape(1, 1, 2, 2)
    label = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    # per-pixel -log(p) where labeled, -log(1 - p) elsewhere: ln 2, 0, 0, -ln 0.75; mean of four
    bce = (math.log(2.0) - math.log(0.75)) / 4
    book = float(segmentation_loss(pred, label, fn_weight=2.0))
    assert float(segmentation_loss(pred, label, fn_weight=2.0, bce_weight=3.0)) == pytest.approx(book + 3 * bce)
    # An empty window: Dice barely moves with the false positives, the BCE term does.
    empty = torch.zeros_like(label)
    few, many = torch.full_like(pred, 0.1), torch.full_like(pred, 0.9)
    assert float(
        segmentation_loss(many, empty, bce_weight=1.0) - segmentation_loss(few, empty, bce_weight=1.0)
    ) == pytest.approx(math.log(0.9) - math.log(0.1) + (1 / 1.4 - 1 / 4.6), rel=1e-5)
