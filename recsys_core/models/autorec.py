"""AutoRec (Sedhain et al. 2015): one sigmoid hidden layer of 500, item-based (I-AutoRec: an item's
ratings by every user in, all users out) or user-based (U-AutoRec). The autoencoder's network and
estimator with AutoRec's defaults; the orientation is fixed by the model name."""

from __future__ import annotations

from typing import ClassVar

from recsys_core.models import register
from recsys_core.models.autoencoder import RowsEstimator, RowsOptions
from recsys_core.options import options


# Retuned for issue 14 on valid (synth 0.01 "real" profile, netflix-time N3M: 137K train ratings, 11.6% of the
# test users with < 5 of them; bias baseline valid / test RMSE 1.0117 / 1.0129). The old defaults (center none,
# weight_decay 0.001, no blend) overfit within 1-9 epochs: U-AutoRec 1.0782 / 1.0735, I-AutoRec 1.0773 / 1.0772.
# Residuals from the biases (center bias) and more weight decay: U 1.0117 / 1.0144, I 1.0191 / 1.0205 at 0.01
# (U 1.0143 / 1.0176 at 0.05; center row + 0.01 / 0.03: U 1.0124 / 1.0117 valid); blending by the user's
# train count then helps monotonically up to the largest S tried, 50: U 1.0103 / 1.0120, I 1.0124 / 1.0141.
@options
class AutoRecOptions(RowsOptions):
    layers: tuple[int, ...] = (500,)
    activation: str = "sigmoid"
    dropout: float = 0.0
    center: str = "bias"
    bias_shrink: float = 50.0
    weight_decay: float = 0.01
    batch_size: int = 32
    patience: int = 5
    # A sweep's default space (docs/sweeps.md), shared by autorec-item and autorec-user.
    sweep_space: ClassVar[dict] = {"layers": {"choices": [[100], [300], [500]]},
                                   "lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                   "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True}}


register("autorec-item", options=AutoRecOptions, orientation="item",
         help="I-AutoRec: item vector in, all users out, one sigmoid layer of 500")(RowsEstimator)
register("autorec-user", options=AutoRecOptions, orientation="user",
         help="U-AutoRec: user vector in, all items out, one sigmoid layer of 500")(RowsEstimator)
