"""Losses of the training apps: cross-entropy for the classifiers, Dice for the U-Net.

The book trains the segmentation model on `Dice + 8 x false-negative Dice`: the second
term is the Dice loss of the prediction restricted to the positive pixels, i.e. it only
counts missed nodule pixels, so the model is pushed towards recall (the classifier
downstream removes the false positives).

A window with no nodule pixels (see the segmentation dataset's `negatives`) gives that Dice
almost no gradient, 1 - 1 / (|P| + 1), however much it marks; an optional per-pixel binary
cross-entropy term (`bce_weight`) penalizes those false positives pixel by pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FALSE_NEGATIVE_WEIGHT = 8.0


def dice_loss(prediction: torch.Tensor, label: torch.Tensor, epsilon: float = 1.0) -> torch.Tensor:
    """Per-sample soft Dice loss, 1 - (2 |P.L| + eps) / (|P| + |L| + eps).

    prediction: probabilities [B, 1, H, W]; label: 0/1 of the same shape. Returns [B].
    """
    dims = tuple(range(1, prediction.dim()))
    label = label.to(prediction.dtype)
    correct = (prediction * label).sum(dim=dims)
    ratio = (2 * correct + epsilon) / (prediction.sum(dim=dims) + label.sum(dim=dims) + epsilon)
    return 1 - ratio


def segmentation_loss(
    prediction: torch.Tensor, label: torch.Tensor, fn_weight: float = FALSE_NEGATIVE_WEIGHT, bce_weight: float = 0.0
) -> torch.Tensor:
    """Per-sample loss: dice(P, L) + fn_weight * dice(P * L, L) (the book's), plus
    bce_weight * mean binary cross-entropy of the pixels; [B]."""
    prediction = prediction.float()
    label = label.to(prediction.dtype)
    loss = dice_loss(prediction, label) + fn_weight * dice_loss(prediction * label, label)
    if bce_weight:
        bce = F.binary_cross_entropy(prediction, label, reduction="none")
        loss = loss + bce_weight * bce.flatten(1).mean(dim=1)
    return loss


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy [B] of logits [B, 2] against class indices [B]."""
    return F.cross_entropy(logits.float(), labels, reduction="none")
