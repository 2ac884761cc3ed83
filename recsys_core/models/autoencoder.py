"""The deep autoencoder of arXiv 1708.01715 (NVIDIA DeepRecommender semantics), also used for AutoRec.

A user's rating vector goes in, a prediction for every item comes out. Encoder layer sizes are given;
the decoder mirrors them. Weights are stored so that the item-facing matrices are item-major
(``[n_items, h1]``): the first layer can then take a sparse input through ``embedding_bag`` and the
last layer can be evaluated at just the needed items by gathering rows, so neither training nor
evaluation ever needs the dense input, and evaluation never needs the dense output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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


class DeepAutoencoder(nn.Module):
    """Encoder ``n -> layers[0] -> ... -> layers[-1]`` (code), decoder mirrored back to ``n``.

    ``constrained=True`` ties each decoder weight to the transpose of its encoder weight (separate
    biases). ``last_layer_activation=False`` leaves the output linear. ``dropout`` acts on the code.
    """

    def __init__(self, n_inputs: int, layers: list[int], activation: str = "selu", dropout: float = 0.0,
                 constrained: bool = False, last_layer_activation: bool = True):
        super().__init__()
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

    def _encode_rest(self, x: torch.Tensor) -> torch.Tensor:
        for w, b in zip(list(self.enc_w)[1:], list(self.enc_b)[1:]):
            x = self.activation(x @ w + b)
        return self.code_dropout(x)

    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode_rest(self.activation(x @ self.enc_w[0] + self.enc_b[0]))

    def encode_sparse(self, cols: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Encode a batch given as a sparse bag (column ids, values, row offsets)."""
        first = F.embedding_bag(cols, self.enc_w[0], offsets, mode="sum", per_sample_weights=values)
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

    def output_at(self, hidden: torch.Tensor, owner: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Outputs only at (row ``owner[k]``, column ``cols[k]``): gathers output-weight rows, no dense output."""
        # in float32 even under autocast: these few products are the predictions the loss/metrics see
        w = take_rows(self._dec_weight(0), cols).float()
        bias = take_rows(self.dec_b[0].unsqueeze(1), cols).squeeze(1)
        return self._out_act((take_rows(hidden, owner).float() * w).sum(-1) + bias)

    def output_columns(self, hidden: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Outputs of every row for a subset of columns: ``[rows, len(cols)]``."""
        return self._out_act(hidden @ self._dec_weight(0)[cols].T + self.dec_b[0][cols])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense in, dense out (used for re-feeding, where the input is a previous dense output)."""
        return self.output_full(self.decode_hidden(self.encode_dense(x)))
