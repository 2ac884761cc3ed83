"""Losses. The autoencoder's is the paper's masked MSE: squared error summed over observed ratings only,
divided by the number of observed ratings (DeepRecommender ``MSEloss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense form: mean squared error over entries where ``mask`` (default ``target != 0``) holds."""
    if mask is None:
        mask = target != 0
    mask = mask.to(prediction.dtype)
    return (mask * (prediction - target) ** 2).sum() / mask.sum().clamp_min(1.0)


def observed_mse(prediction_at_observed: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """The same loss when the predictions were computed only at the observed entries (sparse form)."""
    return F.mse_loss(prediction_at_observed.float(), observed.float())


def binary_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
