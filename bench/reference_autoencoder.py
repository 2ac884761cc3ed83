"""A re-implementation of how the public reference (NVIDIA DeepRecommender, reco_encoder/) trains and
evaluates the deep autoencoder, kept only as the baseline of ``bench_train.py``.

What it reproduces: ratings kept as Python dicts of per-user (item, rating) lists; every batch built in
Python into a ``torch.sparse`` tensor and densified with ``to_dense()``; a dense forward/backward over
all items with the masked MSE; the re-feeding step on the dense output; evaluation one user at a time
(batch size 1, dense input and dense target vectors), as its ``evaluate`` does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_core.models.autoencoder import ACTIVATIONS


class ReferenceAutoEncoder(nn.Module):
    """reco_encoder.model.AutoEncoder: weights [out, in], F.linear, dropout on the code."""

    def __init__(self, layer_sizes, nl_type="selu", dp_drop_prob=0.0, last_layer_activations=True):
        super().__init__()
        self.act = ACTIVATIONS[nl_type]
        self.last_layer_activations = last_layer_activations
        self.drop = nn.Dropout(dp_drop_prob)
        self.encode_w = nn.ParameterList([nn.Parameter(torch.empty(layer_sizes[i + 1], layer_sizes[i]))
                                          for i in range(len(layer_sizes) - 1)])
        self.encode_b = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in layer_sizes[1:]])
        rev = list(reversed(layer_sizes))
        self.decode_w = nn.ParameterList([nn.Parameter(torch.empty(rev[i + 1], rev[i])) for i in range(len(rev) - 1)])
        self.decode_b = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in rev[1:]])
        for w in [*self.encode_w, *self.decode_w]:
            nn.init.xavier_uniform_(w)

    def forward(self, x):
        for w, b in zip(self.encode_w, self.encode_b):
            x = self.act(F.linear(x, w, b))
        x = self.drop(x)
        last = len(self.decode_w) - 1
        for i, (w, b) in enumerate(zip(self.decode_w, self.decode_b)):
            x = F.linear(x, w, b)
            if i < last or self.last_layer_activations:
                x = self.act(x)
        return x

    def copy_from(self, model) -> None:
        """Take the weights of a ``recsys_core`` DeepAutoencoder (unconstrained)."""
        depth = len(model.enc_w)
        with torch.no_grad():
            for k in range(depth):
                self.encode_w[k].copy_(model.enc_w[k].T)
                self.encode_b[k].copy_(model.enc_b[k])
                self.decode_w[depth - 1 - k].copy_(model.dec_w[k])
                self.decode_b[depth - 1 - k].copy_(model.dec_b[k])


def mse_loss(inputs, targets):
    """reco_encoder.model.MSEloss: masked on targets != 0, returns (sum, count)."""
    mask = targets != 0
    num_ratings = torch.sum(mask.float())
    return torch.sum(((inputs * mask.float()) - targets) ** 2), num_ratings


def as_user_lists(csr) -> dict[int, list[tuple[int, float]]]:
    """The reference data layer keeps {user: [(item, rating), ...]} in Python."""
    data = {}
    for u in range(csr.shape[0]):
        lo, hi = csr.indptr[u], csr.indptr[u + 1]
        if hi > lo:
            data[u] = list(zip(csr.indices[lo:hi].tolist(), csr.data[lo:hi].tolist()))
    return data


def dense_batch(data, users, n_items):
    """reco_encoder.data.input_layer.iterate_one_epoch: Python lists -> torch.sparse -> to_dense."""
    rows, cols, vals = [], [], []
    for i, u in enumerate(users):
        for item, rating in data[u]:
            rows.append(i)
            cols.append(item)
            vals.append(rating)
    index = torch.LongTensor([rows, cols])
    return torch.sparse_coo_tensor(index, torch.FloatTensor(vals), torch.Size([len(users), n_items])).to_dense()


def train_batches(model, optimizer, data, users_in_order, n_items, batch_size, refeed=1, max_batches=None):
    """The reference training loop body (run.py): pass, step, then ``aug_step`` re-feeding passes."""
    model.train()
    done = 0
    for start in range(0, len(users_in_order), batch_size):
        if max_batches is not None and done >= max_batches:
            break
        inputs = dense_batch(data, users_in_order[start:start + batch_size], n_items)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss, num_ratings = mse_loss(outputs, inputs)
        loss = loss / num_ratings
        loss.backward()
        optimizer.step()
        for _ in range(refeed):
            inputs = outputs.detach()
            optimizer.zero_grad()
            outputs = model(inputs)
            loss, num_ratings = mse_loss(outputs, inputs)
            loss = loss / num_ratings
            loss.backward()
            optimizer.step()
        done += 1
    return done


def evaluate_users(model, train_data, eval_data, n_items, users):
    """run.py ``evaluate``: one user per batch, dense input and target; returns (sum sq, count, sum sq of
    the predictions clipped to 1..5 as recsys_core evaluates)."""
    model.eval()
    total, count, clipped = 0.0, 0.0, 0.0
    with torch.no_grad():
        for u in users:
            inputs = dense_batch(train_data, [u], n_items) if u in train_data else torch.zeros(1, n_items)
            targets = dense_batch(eval_data, [u], n_items)
            outputs = model(inputs)
            loss, num = mse_loss(outputs, targets)
            total += float(loss)
            count += float(num)
            clipped += float(mse_loss(outputs.clamp(1.0, 5.0), targets)[0])
    return total, count, clipped


def rmse_of(total: float, count: float) -> float:
    return float(np.sqrt(total / count))
