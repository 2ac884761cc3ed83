"""The deep autoencoder of arXiv 1708.01715 (NVIDIA DeepRecommender semantics): its network, options
(with the paper's presets) and estimator. AutoRec (``autorec.py``) is the same network and estimator.

A user's rating vector goes in, a prediction for every item comes out. Encoder layer sizes are given;
the decoder mirrors them. Weights are stored so that the item-facing matrices are item-major
(``[n_items, h1]``): the first layer can then take a sparse input through ``embedding_bag`` and the
last layer can be evaluated at just the needed items by gathering rows, so neither training nor
evaluation ever needs the dense input, and evaluation never needs the dense output.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_core import distributed
from recsys_core.baselines import UserItemBias
from recsys_core.distributed import local_part
from recsys_core.errors import RecsysError
from recsys_core.estimators import TorchEstimator, weights_version
from recsys_core.evaluation import rmse
from recsys_core.interactions import RowBatch, csr_triplets, group_pairs_by_row, row_batch
from recsys_core.losses import observed_mse
from recsys_core.matrices import SplitMatrices
from recsys_core.models import register
from recsys_core.options import option, options
from recsys_core.training_loop import LoopOptions, uses_sparse_rows

log = logging.getLogger("recsys_core")

ACTIVATIONS = {
    "selu": F.selu,
    "elu": F.elu,
    "lrelu": F.leaky_relu,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "swish": F.silu,
    "none": lambda x: x,
}

# The paper's architectures (encoder sizes after the input layer, dropout on the code layer).
# The paper's training, shared by its four configurations (DeepRecommender: raw ratings in, zero-initialized
# biases, one dense re-feeding step, momentum SGD with its step schedule, no weight decay, ~100 epochs).
PAPER_TRAINING = {
    "activation": "selu", "center": "none", "output_bias": "zero", "refeed": 1, "noise": 0.0,
    "constrained": False, "last_layer_activation": False, "weight_decay": 0.0, "optimizer": "sgd",
    "lr": 0.005, "momentum": 0.9, "lr_milestones": [24, 36, 48, 66, 72], "lr_gamma": 0.5,
    "batch_size": 128, "epochs": 100,
}
PRESETS = {
    "N3M": {**PAPER_TRAINING, "layers": [128, 256, 256], "dropout": 0.65},
    "N6M": {**PAPER_TRAINING, "layers": [256, 256, 512], "dropout": 0.8},
    "N1Y": {**PAPER_TRAINING, "layers": [256, 256, 512], "dropout": 0.8},
    "NF": {**PAPER_TRAINING, "layers": [512, 512, 1024], "dropout": 0.8},
}


def take_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 2-D table, with a backward that sums repeated rows in a fixed order.

    ``table[index]``'s backward (index_put_ with accumulate) adds with parallel float atomics on CPU once
    a gather holds >= 32K numbers and torch runs > 1 thread, so the order of the additions, and thus the
    last bits of the gradient, changed from run to run (two identical runs: epoch-1 loss 0.8891577980 vs
    0.8891577961). The embedding backward sums each row's contributions in index order (its threads
    split the rows, not the indices): bit-identical at any thread count, and as fast on CPU.
    """
    return F.embedding(index, table)


@dataclass(frozen=True)
class TouchedRows:
    """The rows of the input (``first``) and output (``last``) tables at a batch's distinct columns, gathered
    with row-sparse gradients, and each batch entry's index among them (``local``)."""

    first: torch.Tensor
    last: torch.Tensor  # (``first`` itself when tied, or when the batch's outputs are dense)
    local: torch.Tensor


class DeepAutoencoder(nn.Module):
    """Encoder ``n -> layers[0] -> ... -> layers[-1]`` (code), decoder mirrored back to ``n``.

    ``constrained=True`` ties each decoder weight to the transpose of its encoder weight (separate
    biases). ``last_layer_activation=False`` leaves the output linear. ``dropout`` acts on the code.
    """

    def __init__(self, n_inputs: int, layers: list[int], activation: str = "selu", dropout: float = 0.0,
                 constrained: bool = False, last_layer_activation: bool = True, sparse_rows: bool = False):
        super().__init__()
        # the wide item-facing tables (input layer, output layer) take row-sparse gradients on the sparse paths
        self.sparse_rows = sparse_rows
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        sizes = [n_inputs, *layers]
        self.sizes = sizes
        self.activation = ACTIVATIONS[activation]
        self.constrained = constrained
        self.last_layer_activation = last_layer_activation
        self.code_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # encoder k maps sizes[k] -> sizes[k+1] as x @ W_k, W_k: [sizes[k], sizes[k+1]]
        self.enc_w = nn.ParameterList([nn.Parameter(torch.empty(a, b)) for a, b in zip(sizes[:-1], sizes[1:])])
        self.enc_b = nn.ParameterList([nn.Parameter(torch.zeros(b)) for b in sizes[1:]])
        # decoder k maps sizes[k+1] -> sizes[k] as x @ V_k.T, V_k: [sizes[k], sizes[k+1]] (tied: V_k = W_k)
        self.dec_w = nn.ParameterList(
            [] if constrained else [nn.Parameter(torch.empty(a, b)) for a, b in zip(sizes[:-1], sizes[1:])])
        self.dec_b = nn.ParameterList([nn.Parameter(torch.zeros(a)) for a in sizes[:-1]])
        for w in [*self.enc_w, *self.dec_w]:
            nn.init.xavier_uniform_(w)

    def _dec_weight(self, k: int) -> torch.Tensor:
        return self.enc_w[k] if self.constrained else self.dec_w[k]

    # The row-wise step catches a row up on the steps it was skipped (row_optim.RowAdam): plain lazy Adam left
    # U-AutoRec 0.009 RMSE behind dense Adam on MovieLens chrono valid (0.8984 vs 0.8898, BENCHMARKS.md).
    row_catch_up = True

    def row_sparse_parameters(self) -> list[nn.Parameter]:
        """The tables stepped row by row (``recsys_core.training_loop.sparse_parameters``): the input layer and
        the output layer (one table when tied), when ``sparse_rows``."""
        if not self.sparse_rows:
            return []
        return [self.enc_w[0]] + ([] if self.constrained else [self.dec_w[0]])

    def touched_rows(self, cols: torch.Tensor, output: bool = True) -> "TouchedRows | None":
        """For a training batch on the sparse paths (columns ``cols``): the input and output tables' rows at the
        batch's distinct columns, gathered so that their gradients are row-sparse (one row per distinct column,
        so nothing is summed when the gradient is coalesced), and each column's place among them (the output
        table's only with ``output``: the gathered outputs read them). None when the tables are dense or no
        gradient is taken."""
        if not (self.sparse_rows and torch.is_grad_enabled()):
            return None
        unique, local = torch.unique(cols, return_inverse=True)
        first = F.embedding(unique, self.enc_w[0], sparse=True)
        last = first if self.constrained or not output else F.embedding(unique, self.dec_w[0], sparse=True)
        return TouchedRows(first, last, local)

    def _encode_rest(self, x: torch.Tensor) -> torch.Tensor:
        for w, b in zip(list(self.enc_w)[1:], list(self.enc_b)[1:]):
            x = self.activation(x @ w + b)
        return self.code_dropout(x)

    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode_rest(self.activation(x @ self.enc_w[0] + self.enc_b[0]))

    def encode_sparse(self, cols: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor,
                      touched: "TouchedRows | None" = None) -> torch.Tensor:
        """Encode a batch given as a sparse bag (column ids, values, row offsets); with ``touched`` (of these
        ``cols``), the bag reads the gathered rows."""
        table, index = (self.enc_w[0], cols) if touched is None else (touched.first, touched.local)
        first = F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=values)
        return self._encode_rest(self.activation(first + self.enc_b[0]))

    def decode_hidden(self, code: torch.Tensor) -> torch.Tensor:
        """All decoder layers but the last: returns the ``sizes[1]``-wide layer feeding the output."""
        x = code
        for k in range(len(self.sizes) - 2, 0, -1):
            x = self.activation(x @ self._dec_weight(k).T + self.dec_b[k])
        return x

    def _out_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x) if self.last_layer_activation else x

    def output_full(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._out_act(hidden @ self._dec_weight(0).T + self.dec_b[0])

    def output_full_inplace(self, hidden: torch.Tensor) -> torch.Tensor:
        """``output_full`` for inference (no autograd): the bias is added into the product's own buffer,
        the same values without a second [rows, n] tensor."""
        out = hidden @ self._dec_weight(0).T
        out += self.dec_b[0]
        return self._out_act(out)

    def output_at(self, hidden: torch.Tensor, owner: torch.Tensor, cols: torch.Tensor,
                  touched: "TouchedRows | None" = None) -> torch.Tensor:
        """Outputs only at (row ``owner[k]``, column ``cols[k]``): gathers output-weight rows, no dense output;
        with ``touched`` (of these ``cols``), from the gathered rows."""
        # in float32 even under autocast: these few products are the predictions the loss/metrics see
        table, index = (self._dec_weight(0), cols) if touched is None else (touched.last, touched.local)
        w = take_rows(table, index).float()
        bias = take_rows(self.dec_b[0].unsqueeze(1), cols).squeeze(1)
        return self._out_act((take_rows(hidden, owner).float() * w).sum(-1) + bias)

    def output_columns(self, hidden: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Outputs of every row for a subset of columns: ``[rows, len(cols)]``."""
        return self._out_act(hidden @ self._dec_weight(0)[cols].T + self.dec_b[0][cols])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense in, dense out (used for re-feeding, where the input is a previous dense output)."""
        return self.output_full(self.decode_hidden(self.encode_dense(x)))


@functools.cache
def _blend_rows_kernel():
    """``RowsEstimator._blend`` of whole rows, compiled (numba, on first use, cached on disk): each score
    becomes ``(x [+ b]) * w + b * (1 - w)`` with ``b = (mean + b_u) + b_i``, every operation in float32 in the
    numpy/torch order, so the scores are those of the five-pass version to the bit (tests/test_models.py)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def blend_rows(network, mean, user_bias, item_bias, weight, add_biases):
        for r in range(network.shape[0]):
            base = mean + user_bias[r]
            w = weight[r]
            rest = np.float32(1.0) - w
            for c in range(network.shape[1]):
                b = base + item_bias[c]
                x = network[r, c] + b if add_biases else network[r, c]
                network[r, c] = x * w + b * rest

    return blend_rows


# output_bias="mean": a column's mean is shrunk toward the overall mean as if it had this many more ratings
# (the item regularization the user+item bias baseline had until issue 14). Unshrunk, an item with one high
# rating starts at the top of every list: on the default sample that made the autoencoder's Recall@10 0.002
# (0.014 shrunk, RMSE 0.9388 -> 0.9377).
COLUMN_MEAN_SHRINK = 25.0
# center="row": a row's mean is shrunk toward the global mean as if it had this many more ratings
ROW_MEAN_SHRINK = 10.0
# the key of the blend's S in a row model's state (model.pt)
BLEND_KEY = "_blend.bias_shrink"


def shrunk_means(owners: np.ndarray, values: np.ndarray, n_owners: int, global_mean: float,
                 shrink: float = ROW_MEAN_SHRINK) -> np.ndarray:
    """Mean rating per owner (the row or column number of each value), shrunk toward ``global_mean`` as if
    each owner had ``shrink`` more ratings at it (owners with few ratings stay near it)."""
    counts = np.bincount(owners, minlength=n_owners)
    sums = np.bincount(owners, values.astype(np.float64) - global_mean, n_owners)
    return (global_mean + sums / (counts + shrink)).astype(np.float32)


@options
class RowsOptions(LoopOptions):
    """Options of the row models (a whole rating vector in, every output out): the autoencoder and AutoRec."""

    layers: tuple[int, ...] = option((64,), "encoder layer sizes after the input, e.g. 512,512,1024 (the decoder "
                                            "mirrors them)", item_low=1, min_items=1)
    activation: str = option("selu", "activation of every layer", choices=ACTIVATIONS)
    dropout: float = option(0.5, "dropout on the code layer", low=0, high=1, high_open=True)
    constrained: bool = option(False, "tie decoder weights to the transposed encoder weights")
    last_layer_activation: bool = option(False, "apply the activation to the output layer too")
    noise: float = option(0.0, "input dropout probability (denoising)", low=0, high=1, high_open=True)
    noise_loss: str = option("all", "with noise: the loss covers all observed ratings (all) or only those "
                                    "dropped from the input (dropped: copying the input earns nothing)",
                             choices=("all", "dropped"))
    refeed: int = option(0, "dense re-feeding steps per batch (the paper uses 1)", low=0)
    output_bias: str = option("mean", "initial output bias: each output's shrunk mean training rating (mean; "
                                      "linear output only) or zero (the paper)", choices=("mean", "zero"))
    center: str = option("bias", "row: the network reads and predicts residuals from each row's shrunk mean "
                                "training rating, added back to every prediction; bias: residuals from the user+item "
                                "bias baseline mu + b_u + b_i; none: raw ratings (the paper)",
                         choices=("none", "row", "bias"))
    bias_shrink: float = option(
        2.0, "blend every prediction toward the user+item bias baseline by the user's number of training ratings "
             "n: n/(n + bias_shrink) on the network, the rest on mu + b_u + b_i (users with few ratings get mostly "
             "the biases; 0 = the network alone); with blend_on_valid, the value used while training", low=0,
        high=1000)
    # The best S differs by data: 2 on the generated sample, 100-500 on real MovieLens (docs/train.md), where
    # a fixed S of 2 left the autoencoder 0.6% ahead of the biases on the chrono split and S 100 1.2%.
    blend_on_valid: bool = option(
        True, "after training, choose bias_shrink on the valid part among 0 (the network alone) to 1e5 (in effect "
              "the biases alone), so that users with short rows fall back on the biases as far as valid says; "
              "without a valid part bias_shrink stays")
    sparse: bool = option(True, "on batches that take the sparse path (embedding_bag in, gathered outputs), update "
                                "only the rows of the input and output layers at the batch's columns: row-sparse "
                                "gradients and a row-wise (lazy) step with adam or adagrad; sgd and rmsprop, and "
                                "dense batches, update every row")
    # Measured (BENCHMARKS.md, "Row-sparse updates of the row models"): the row-wise step pays where the tables
    # are much larger than what a batch touches (I-AutoRec at Netflix's 294K users: 2.9x less CPU per step);
    # at 5-18K rows (the autoencoder, U-AutoRec; every table of the 10% sample) dense Adam was as fast or faster.
    sparse_min_rows: int = option(100_000, "with sparse: only when the input and output layers have at least this "
                                           "many rows (0 = always); below it they stay dense", low=0)
    weight_decay: float = 0.005
    epochs: int = 60
    patience: int = 8


# Chosen on the valid parts of real MovieLens (ml-latest-small: chrono, random) with the generated sample as a
# guard (docs/train.md, "The defaults on real data"): a small code, weight decay and residuals from the
# user+item biases. The paper's setup stays one option set away: preset N3M|N6M|N1Y|NF.
@options
class AutoencoderOptions(RowsOptions):
    presets = PRESETS

    preset: str | None = option(None, "the paper's whole configuration for that split: " + "; ".join(
        f"{k}: layers {','.join(map(str, v['layers']))} dropout {v['dropout']}" for k, v in PRESETS.items()),
        choices=PRESETS)
    # A sweep's default space (docs/sweeps.md).
    sweep_space: ClassVar[dict] = {"layers": {"choices": [[32], [64], [128], [64, 64]]},
                                   "dropout": {"low": 0.0, "high": 0.8}, "lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                   "weight_decay": {"low": 1e-4, "high": 0.05, "log": True},
                                   "activation": {"choices": ["selu", "elu", "relu"]}}


@register("autoencoder", options=AutoencoderOptions, orientation="user",
          help="deep autoencoder of arXiv 1708.01715 (user vector in, all items out)")
class RowsEstimator(TorchEstimator):
    """Autoencoders. ``orientation="user"``: input = a user's ratings, outputs = items (the deep
    autoencoder, U-AutoRec). ``orientation="item"``: input = an item's ratings, outputs = users (I-AutoRec)."""

    options: RowsOptions
    model: DeepAutoencoder
    family = "rows"

    def __init__(self, options, *, name, device=None, settings=None, orientation: str = "user"):
        super().__init__(options, name=name, device=device, settings=settings)
        self.orientation = orientation

    def describe(self) -> dict:
        return {**super().describe(), "orientation": self.orientation}

    def build(self, dims: dict) -> DeepAutoencoder:
        c = self.options
        n = dims["n_items"] if self.orientation == "user" else dims["n_users"]
        sparse_rows = uses_sparse_rows(c) and n >= c.sparse_min_rows
        if sparse_rows and distributed.current().enabled:
            # DistributedDataParallel takes sparse gradients only from sparse nn.Embedding modules; these tables
            # are parameters gathered by the network ("Cannot access storage of SparseTensorImpl" in backward)
            log.info("%s: several processes: the input and output layers stay dense (no row-wise step)", self.name)
            sparse_rows = False
        return DeepAutoencoder(n, list(c.layers), c.activation, c.dropout, c.constrained, c.last_layer_activation,
                               sparse_rows=sparse_rows)

    def prepare(self, data: SplitMatrices) -> None:
        options = self.options
        matrix = data.train if self.orientation == "user" else data.train_by_item
        self.center = options.center
        if self.center == "bias" or options.bias_shrink > 0:
            self._fit_biases(data)
        if self.center == "bias":
            # The network sees and predicts residuals from the user+item bias baseline (mu + b_u + b_i of the
            # pair, in either orientation), added back to every prediction: the untrained network is that
            # baseline, and an unrated input reads as "what the biases expect".
            owners = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
            users, items = (owners, matrix.indices) if self.orientation == "user" else (matrix.indices, owners)
            matrix = matrix.copy()
            matrix.data = (matrix.data - self._biases(users, items)).astype(np.float32)
            self.row_offset = np.zeros(matrix.shape[0], np.float32)
        elif self.center == "row":
            # The network sees and predicts residuals from each row's (user's) shrunk mean rating; the
            # offset is added back to every prediction, so unrated inputs read as "the user's mean".
            self.global_mean = float(matrix.data.mean())
            owners = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
            self.row_offset = shrunk_means(owners, matrix.data, matrix.shape[0], self.global_mean)
            matrix = matrix.copy()
            matrix.data = (matrix.data - self.row_offset[owners]).astype(np.float32)
        else:
            self.row_offset = np.zeros(matrix.shape[0], np.float32)
        self.matrix = matrix
        self.train_rows = np.flatnonzero(np.diff(self.matrix.indptr) > 0)
        self._prepare_blend(data, float(options.bias_shrink))
        self.input_noise = float(options.noise)
        self.refeed = int(options.refeed)
        self.noise_loss = options.noise_loss
        if options.output_bias == "mean" and not self.model.last_layer_activation:
            self._init_output_bias()

    def _fit_biases(self, data: SplitMatrices) -> None:
        """The user+item bias baseline of this split (derived from the data alone, so a loaded run gets it
        back without extra state)."""
        baseline = UserItemBias(data.train)
        self.bias_mean = np.float32(baseline.mean)
        self.bias_reg_u = baseline.reg_u  # a new user's bias (fold_in) is shrunk as the baseline shrinks them
        self.bias_user = np.asarray(baseline.user_bias, np.float32)
        self.bias_item = np.asarray(baseline.item_bias, np.float32)

    def _biases(self, users: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        """mu + b_u + b_i of pairs (users[k], items[k]), or of users x every item when ``items`` is None."""
        if items is None:
            return self.bias_mean + self.bias_user[users][:, None] + self.bias_item[None, :]
        return self.bias_mean + self.bias_user[users] + self.bias_item[items]

    # S tried on valid after training: 0 (the network alone) up to 1e5 (the user+item biases alone, in effect)
    BLEND_GRID = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 1e5)

    def fit(self, data: SplitMatrices, run_dir=None, resume: bool = False, on_epoch=None) -> dict:
        result = super().fit(data, run_dir, resume, on_epoch=on_epoch)
        if self.options.blend_on_valid and data.valid.nnz:  # reported in metrics.json's training.bias_blend
            result.setdefault("report", {})["bias_blend"] = self.choose_blend()
        return result

    def choose_blend(self) -> dict:
        """Choose the blend's S on the valid part (the trained network's predictions and the biases, each
        computed once, blended at every S of ``BLEND_GRID`` and the option's value; ties go to the smaller S);
        the model predicts with it from now on. Returns the choice and the valid RMSEs behind it."""
        if not hasattr(self, "bias_mean"):
            self._fit_biases(self.data)
        users, items, values = csr_triplets(self.data.valid)
        biases = self._biases(users, items).astype(np.float64)
        network = self._network_pairs(users, items).astype(np.float64)
        if self.center == "bias":
            network += biases
        counts = np.diff(self.data.train.indptr)[users].astype(np.float64)
        low, high = self.clip
        configured = float(self.options.bias_shrink)
        scores = {}
        for shrink in sorted(set(self.BLEND_GRID) | {configured}):
            weight = counts / (counts + shrink) if shrink > 0 else 1.0
            scores[shrink] = rmse(np.clip(weight * network + (1 - weight) * biases, low, high), values)
        best = min(scores, key=lambda k: (scores[k], k))
        self._prepare_blend(self.data, best)
        log.info("%s: blend toward the user+item biases chosen on valid: S %g (valid RMSE %.4f; %.4f at the "
                 "option's S %g, %.4f the network alone, %.4f the biases alone)", self.name, best, scores[best],
                 scores[configured], configured, scores[0.0], scores[1e5])
        return {"bias_shrink": best, "valid_rmse": scores[best], "valid_rmse_at_option": scores[configured],
                "valid_rmse_network_alone": scores[0.0]}

    def state_dict(self) -> dict:
        # the blend's S (chosen on valid after training) travels with the weights
        return {**self.model.state_dict(), BLEND_KEY: torch.tensor(float(self.bias_shrink), dtype=torch.float64)}

    def load(self, state: dict, data: SplitMatrices) -> "RowsEstimator":
        state = dict(state)
        shrink = state.pop(BLEND_KEY, None)
        super().load(state, data)
        if shrink is not None and float(shrink) != self.bias_shrink:
            self._prepare_blend(data, float(shrink))
        return self

    def _prepare_blend(self, data: SplitMatrices, shrink: float) -> None:
        """Each user's weight on the network, n_u / (n_u + shrink) (n_u: the user's training ratings)."""
        self.bias_shrink = shrink
        if shrink <= 0:
            return
        if not hasattr(self, "bias_mean"):
            self._fit_biases(data)
        counts = np.diff(data.train.indptr).astype(np.float32)
        self.network_weight = counts / (counts + np.float32(shrink))

    def _blend(self, users: np.ndarray, items: np.ndarray | None, network: torch.Tensor) -> torch.Tensor:
        """``network`` (pairs: users[k], items[k]; rows: users x every item when ``items`` is None; a float32
        tensor this call may overwrite) blended in place toward mu + b_u + b_i by the users' weights."""
        if self.center != "bias" and self.bias_shrink <= 0:
            return network
        if (items is None and self.bias_shrink > 0 and network.device.type == "cpu"
                and network.dtype == torch.float32 and network.is_contiguous()):
            # the same float32 operations in one pass over the rows instead of five over a [rows, items] buffer
            # and a fresh biases buffer (~20% of the autoencoder's top-K at full-scale N3M, BENCHMARKS.md)
            _blend_rows_kernel()(network.numpy(), self.bias_mean, self.bias_user[users], self.bias_item,
                                 self.network_weight[users], self.center == "bias")
            return network
        biases = torch.from_numpy(self._biases(users, items).astype(np.float32, copy=False)).to(network.device)
        if self.center == "bias":
            network.add_(biases)
        if self.bias_shrink > 0:
            weight = torch.from_numpy(self.network_weight[users]).to(network.device)
            if items is None:
                weight = weight[:, None]
            network.mul_(weight).add_(biases.mul_(1 - weight))
        return network

    def _init_output_bias(self) -> None:
        """Start the linear output at each output column's shrunk mean training rating (the item-mean
        baseline for user vectors), instead of 0, so the first epochs learn residuals rather than the
        rating scale."""
        means = shrunk_means(self.matrix.indices, self.matrix.data, self.matrix.shape[1],
                             float(self.matrix.data.mean()), COLUMN_MEAN_SHRINK)
        with torch.no_grad():
            self.model.dec_b[0].copy_(torch.from_numpy(means))

    def n_batches(self) -> int:
        return -(-len(self.train_rows) // self.batch_size)

    def batches(self, rng):
        order = rng.permutation(self.train_rows)
        for start in range(0, len(order), self.batch_size):
            yield row_batch(self.matrix, local_part(order[start:start + self.batch_size])).to(self.device)

    def _noisy(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Input dropout WITHOUT the 1/(1-p) rescaling of nn.Dropout: a kept rating keeps its value
        (a rescaled 5 would read as a 10), a dropped one reads as unrated. Returns (values, kept mask)."""
        if self.input_noise <= 0:
            return values, None
        kept = torch.rand_like(values) >= self.input_noise
        return values * kept.to(values.dtype), kept

    def _is_dense(self, batch: RowBatch) -> bool:
        """Sparse paths (embedding_bag in, gathered outputs) pay off below ~1/16 density; denser batches
        (small catalogues, I-AutoRec) go through plain matrix products."""
        return 16 * batch.values.numel() > len(batch.rows) * self.matrix.shape[1]

    def losses(self, batch: RowBatch):
        model = self.model
        dense = self._is_dense(batch)
        # Re-feeding needs the dense output anyway, and the backward of one dense product is cheaper
        # than the scatter-adds of the gathered path; without re-feeding, sparse batches gather.
        full_output = dense or self.refeed > 0
        values, kept = self._noisy(batch.values)
        # sparse paths: the input and output rows at the batch's columns, gathered with row-sparse gradients
        touched = None if dense else model.touched_rows(batch.cols, output=not full_output)
        with self.autocast():
            if dense:
                code = model.encode_dense(batch.dense(self.matrix.shape[1], values))
            else:
                code = model.encode_sparse(batch.cols, values, batch.offsets, touched)
            hidden = model.decode_hidden(code)
            if full_output:
                full = model.output_full(hidden)
                observed = full[batch.owner, batch.cols]
            else:
                observed = model.output_at(hidden, batch.owner, batch.cols, touched)
        if kept is not None and self.noise_loss == "dropped":
            # only the ratings hidden from the input count: copying the input earns nothing
            dropped = ~kept
            loss = observed_mse(observed[dropped], batch.values[dropped]) if dropped.any() else observed.sum() * 0
        else:
            loss = observed_mse(observed, batch.values)
        if self.refeed:
            # The dense output of this pass (same dropout draw) becomes the next input; the loss then
            # covers every item, against that detached output (the paper's dense re-feeding).
            target = full.detach().float()
        yield loss, loss.detach()
        for step in range(self.refeed):
            with self.autocast():
                out = model(self._noisy(target)[0])
            refeed_loss = torch.nn.functional.mse_loss(out.float(), target)
            yield refeed_loss, None
            if step + 1 < self.refeed:
                target = out.detach().float()

    def _hidden_for(self, input_rows: np.ndarray) -> torch.Tensor:
        batch = row_batch(self.matrix, input_rows).to(self.device)
        return self.model.decode_hidden(self.model.encode_sparse(batch.cols, batch.values, batch.offsets))

    def predict_pairs(self, rows, cols):
        users, items = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        return self._blend(users, items, torch.from_numpy(self._network_pairs(users, items))).numpy()

    def _network_pairs(self, rows, cols):
        if self.orientation == "item":
            rows, cols = cols, rows
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        order, unique_rows, position = group_pairs_by_row(rows, cols)
        sorted_cols = cols[order]
        result = np.empty(len(rows), np.float32)
        bounds = np.searchsorted(position, np.arange(0, len(unique_rows) + self.eval_batch_size,
                                                     self.eval_batch_size))
        with self._eval_mode():
            for chunk, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
                if lo == hi:
                    continue
                first = chunk * self.eval_batch_size
                hidden = self._hidden_for(unique_rows[first:first + self.eval_batch_size])
                owner = torch.from_numpy(position[lo:hi] - first).to(self.device)
                item = torch.from_numpy(sorted_cols[lo:hi]).to(self.device)
                result[order[lo:hi]] = self.model.output_at(hidden, owner, item).float().cpu().numpy()
        return result + self.row_offset[rows]

    def score_rows_tensor(self, rows):
        rows = np.asarray(rows, np.int64)
        return self._blend(rows, None, self._network_rows(rows))

    def _network_rows(self, rows):
        with self._eval_mode():
            if self.orientation == "user":
                # the output layer and both offsets written into one [rows, items] buffer: no copy of it
                scores = self.model.output_full_inplace(self._hidden_for(rows)).float()
                return scores.add_(torch.from_numpy(self.row_offset[rows]).to(scores.device)[:, None])
            n_items = self.matrix.shape[0]
            out = np.empty((len(rows), n_items), np.float32)
            users = torch.from_numpy(rows).to(self.device)
            for lo, codes in zip(range(0, n_items, self.eval_batch_size), self._item_codes()):
                out[:, lo:lo + len(codes)] = self.model.output_columns(codes, users).float().cpu().numpy().T
            out += self.row_offset[None, :]
            return torch.from_numpy(out)

    def _item_codes(self) -> list[torch.Tensor]:
        """Item orientation: the decoder's last hidden layer of every item's rating vector, in chunks of
        ``eval_batch_size`` items (those of ``_network_rows``), made once and again whenever a step or a load
        changed the weights (their version counters). Recomputed per block of users, they were most of
        I-AutoRec's top-K at full-scale N3M: every block re-read all 13.7M training ratings (BENCHMARKS.md)."""
        key = (weights_version(self.model), id(self.matrix))
        cached = self.__dict__.get("_codes_cache")
        if cached is None or cached[0] != key:
            n_items = self.matrix.shape[0]
            codes = [self._hidden_for(np.arange(lo, min(lo + self.eval_batch_size, n_items)))
                     for lo in range(0, n_items, self.eval_batch_size)]
            cached = (key, codes)
            self.__dict__["_codes_cache"] = cached
        return cached[1]

    def folds_in(self) -> bool:
        """Whether this model folds a new user in (U-AutoRec and the deep autoencoder; I-AutoRec reads item vectors)."""
        return self.orientation == "user"

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Outputs for a user absent from training, from their ratings (user orientation only)."""
        if self.orientation != "user":
            raise RecsysError(f"a {self.name} model reads item vectors and cannot score a user absent from "
                              "training; use the autoencoder or autorec-user")
        cols = np.asarray(cols, np.int64)
        raw = np.asarray(values, np.float64)
        biases = None
        if self.center == "bias" or self.bias_shrink > 0:
            # the new user's bias: one ridge step over its ratings against mu + b_i (the baseline's last step)
            user_bias = (raw - self.bias_mean - self.bias_item[cols]).sum() / (self.bias_reg_u + len(raw))
            biases = (self.bias_mean + user_bias + self.bias_item).astype(np.float32)
        if self.center == "bias":
            assert biases is not None  # made above for center bias
            offset = biases
            inputs = raw - biases[cols]
        else:
            offset = (shrunk_means(np.zeros(len(raw), np.int64), raw, 1, self.global_mean)[0]
                      if self.center == "row" else np.float32(0.0))
            inputs = raw - offset
        with self._eval_mode():
            code = self.model.encode_sparse(torch.as_tensor(cols, dtype=torch.int64, device=self.device),
                                            torch.as_tensor(inputs, dtype=torch.float32, device=self.device),
                                            torch.zeros(1, dtype=torch.int64, device=self.device))
            network = self.model.output_full(self.model.decode_hidden(code)).float().cpu().numpy()[0] + offset
        if self.bias_shrink <= 0:
            return network
        assert biases is not None  # made above when bias_shrink > 0
        weight = np.float32(len(raw) / (len(raw) + self.bias_shrink))
        return weight * network + (1 - weight) * biases

    def _hidden_of_every_row(self, chunk: int = 4096) -> torch.Tensor:
        """The decoder's last hidden layer of every input row (in eval mode), ``[rows, h1]``."""
        rows = np.arange(self.matrix.shape[0])
        return torch.cat([self._hidden_for(rows[lo:lo + chunk]) for lo in range(0, len(rows), chunk)])

    def item_vectors(self) -> np.ndarray:
        """User orientation: the output-layer row that makes each item's output (``[n_items, h1]``); item
        orientation (I-AutoRec): each item's code, the decoder's last hidden layer of its rating vector."""
        with self._eval_mode():
            if self.orientation == "user":
                weight = self.model._dec_weight(0)
            else:
                weight = torch.cat(self._item_codes())  # the codes the rows of scores read
            return weight.detach().float().cpu().numpy()

    def linear_scores(self):
        """User orientation with a linear output: score(u) = h_u @ W + b + offset_u, h_u the decoder's last
        hidden layer of u's training vector, W the output layer, offset_u u's mean (center="row").
        None otherwise (I-AutoRec's outputs are users; an output activation is not linear)."""
        if self.orientation != "user" or self.model.last_layer_activation:
            return None
        with self._eval_mode():
            parts = (self._hidden_of_every_row(), self.model._dec_weight(0).T, self.model.dec_b[0])
            users, weight, bias = [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in parts]
        offset = np.asarray(self.row_offset, np.float32)
        if self.center != "bias" and self.bias_shrink <= 0:
            return users, weight, bias, offset
        # The blend toward mu + b_u + b_i stays linear with two more columns: with w_u the user's weight on
        # the network and k_u the user's total weight on the biases (1 - w_u, plus w_u when the network
        # predicts residuals from them), score = [w_u h_u, w_u, k_u] @ [W; b; b_i] + w_u offset_u +
        # k_u (mu + b_u).
        w = self.network_weight if self.bias_shrink > 0 else np.ones(len(offset), np.float32)
        k = (1 - w) + (w if self.center == "bias" else 0)
        users = np.hstack([users * w[:, None], w[:, None], k[:, None]]).astype(np.float32)
        weight = np.vstack([weight, bias[None, :], self.bias_item[None, :]]).astype(np.float32)
        offset = (w * offset + k * (self.bias_mean + self.bias_user)).astype(np.float32)
        return users, weight, np.zeros_like(bias), offset
