"""Validation metrics: confusion counts, precision / recall / F1, ROC curve and its area.

Written with numpy only, so the numbers can be checked against independent references
(scipy's Mann-Whitney U for the AUC, hand-computed cases for the rest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Confusion:
    """Counts of a binary decision."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 0 when nothing was called positive."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        """tp / (tp + fn); 0 when there is no positive."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 0 when both are 0."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def confusion(labels: np.ndarray, predicted: np.ndarray) -> Confusion:
    """Counts from true labels and predicted labels (bool or 0/1 arrays of one shape)."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predicted.shape} differ in shape")
    return Confusion(
        tp=int(np.count_nonzero(labels & predicted)),
        fp=int(np.count_nonzero(~labels & predicted)),
        fn=int(np.count_nonzero(labels & ~predicted)),
        tn=int(np.count_nonzero(~labels & ~predicted)),
    )


def _check_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinite values")
    return labels, scores


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start of each run of equal values in sorted order
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    run_of = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = mean_rank[run_of]
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting 1/2.

    Computed from rank sums (the Mann-Whitney U statistic divided by n_pos * n_neg).
    NaN when the labels hold only one class.
    """
    labels, scores = _check_scores(labels, scores)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(scores)
    u_pos = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_pos / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds): one point per distinct score,
    from the highest threshold down, starting at (0, 0) with threshold +inf.

    A sample counts as positive at threshold t when score >= t. The trapezoid area under
    this curve equals roc_auc.
    """
    labels, scores = _check_scores(labels, scores)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_run = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, dtype=bool)
    tps = np.cumsum(y)[last_of_run]
    fps = np.cumsum(~y)[last_of_run]
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.r_[0.0, np.zeros(len(tps))]
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.r_[0.0, np.zeros(len(fps))]
    thresholds = np.r_[np.inf, s[last_of_run]]
    return fpr, tpr, thresholds


def classification_metrics(
    labels: np.ndarray, p_positive: np.ndarray, losses: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """The book's classification metrics (loss and correct fraction per class, precision,
    recall, F1) plus the ROC AUC, for one pass over a dataset."""
    labels, p_positive = _check_scores(labels, p_positive)
    losses = np.asarray(losses, dtype=np.float64).ravel()
    counts = confusion(labels, p_positive > threshold)
    pos, neg = labels, ~labels

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else math.nan

    return {
        "loss": mean(losses),
        "loss_pos": mean(losses[pos]),
        "loss_neg": mean(losses[neg]),
        "correct": _ratio(counts.tp + counts.tn, labels.size),
        "correct_pos": _ratio(counts.tp, counts.tp + counts.fn),
        "correct_neg": _ratio(counts.tn, counts.tn + counts.fp),
        "precision": counts.precision,
        "recall": counts.recall,
        "f1": counts.f1,
        "auc": roc_auc(labels, p_positive),
        "tp": counts.tp,
        "fp": counts.fp,
        "fn": counts.fn,
        "tn": counts.tn,
        "count": int(labels.size),
    }


def segmentation_metrics(tp: float, fn: float, fp: float, loss_sum: float, count: float) -> dict[str, float]:
    """Per-pixel metrics of the segmentation model from summed counts (the book's: TP, FN and
    FP as fractions of the positive pixels, precision, recall) plus the Dice score."""
    positives = tp + fn
    counts = Confusion(tp=int(tp), fp=int(fp), fn=int(fn), tn=0)
    return {
        "loss": _ratio(loss_sum, count) if count else math.nan,
        "tp": int(tp),
        "fn": int(fn),
        "fp": int(fp),
        "tp_fraction": _ratio(tp, positives),
        "fn_fraction": _ratio(fn, positives),
        "fp_fraction": _ratio(fp, positives),
        "precision": counts.precision,
        "recall": counts.recall,
        "f1": counts.f1,  # equals the Dice score of the thresholded mask
        "count": int(count),
    }
