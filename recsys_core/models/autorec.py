"""AutoRec (Sedhain et al. 2015): one sigmoid hidden layer (the paper's 500; 150 by default),
item-based (I-AutoRec: an item's ratings by every user in, all users out) or user-based (U-AutoRec). The
autoencoder's network and estimator with AutoRec's defaults; the orientation is fixed by the model name."""

from __future__ import annotations

from typing import ClassVar

from recsys_core.models import register
from recsys_core.models.autoencoder import RowsEstimator, RowsOptions
from recsys_core.options import options


# Defaults chosen on the valid parts of real MovieLens (chrono and random splits of ml-latest-small), the
# generated sample as a guard; every point tried is in docs/train.md ("The defaults on real data").
@options
class AutoRecOptions(RowsOptions):
    layers: tuple[int, ...] = (150,)
    activation: str = "sigmoid"
    dropout: float = 0.0
    center: str = "bias"
    bias_shrink: float = 50.0
    weight_decay: float = 0.001
    batch_size: int = 32
    patience: int = 5
    # A sweep's default space (docs/sweeps.md), shared by autorec-item and autorec-user.
    sweep_space: ClassVar[dict] = {"layers": {"choices": [[100], [300], [500]]},
                                   "lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                   "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True}}


register("autorec-item", options=AutoRecOptions, orientation="item",
         help="I-AutoRec: item vector in, all users out, one sigmoid layer (150)")(RowsEstimator)
@options
class UserAutoRecOptions(AutoRecOptions):
    bias_shrink: float = 150.0
    weight_decay: float = 0.0003


register("autorec-user", options=UserAutoRecOptions, orientation="user",
         help="U-AutoRec: user vector in, all items out, one sigmoid layer (150)")(RowsEstimator)
