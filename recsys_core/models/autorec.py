"""AutoRec (Sedhain et al. 2015): one sigmoid hidden layer of 500, item-based (I-AutoRec: an item's
ratings by every user in, all users out) or user-based (U-AutoRec). The autoencoder's network and
estimator with AutoRec's defaults; the orientation is fixed by the model name."""

from __future__ import annotations

from recsys_core.models import register
from recsys_core.models.autoencoder import RowsEstimator, RowsOptions
from recsys_core.options import options


@options
class AutoRecOptions(RowsOptions):
    layers: tuple[int, ...] = (500,)
    activation: str = "sigmoid"
    dropout: float = 0.0
    center: str = "none"
    weight_decay: float = 0.001
    batch_size: int = 32
    patience: int = 5


register("autorec-item", options=AutoRecOptions, orientation="item",
         help="I-AutoRec: item vector in, all users out, one sigmoid layer of 500")(RowsEstimator)
register("autorec-user", options=AutoRecOptions, orientation="user",
         help="U-AutoRec: user vector in, all items out, one sigmoid layer of 500")(RowsEstimator)
