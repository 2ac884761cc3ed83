"""How each model family meets the data: batches, per-batch losses, validation, prediction, scoring.

The training loop (``recsys_core.training.fit``) knows nothing about models; it asks an estimator for
batches and for the losses of a batch (one optimizer step per yielded loss, which is how the
autoencoder's dense re-feeding takes extra steps). Evaluation uses the same two questions every
predictor answers, models and baselines alike:

- ``predict_pairs(rows, cols)``: predictions for (user row, item column) pairs;
- ``score_rows(rows)``: a score for every item, ``[len(rows), n_items]`` (ranking, recommendations).

Families: ``RowsEstimator`` (autoencoders: a whole rating vector in, all outputs out; user- or
item-oriented), ``PairsEstimator`` (MF, embedding MLP: one rating per example) and
``ImplicitEstimator`` (NCF: interaction vs sampled non-interaction).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

from recsys_core.evaluation import hit_rate_at_k, rank_of_positive, rmse
from recsys_core.interactions import RowBatch, csr_triplets, group_pairs_by_row, rating_range, row_batch
from recsys_core.losses import binary_cross_entropy, observed_mse
from recsys_core.sampling import sample_negatives

VALID_NEGATIVES = 99  # NCF validation: the held-out item ranked among this many sampled non-interactions
# output_bias="mean": a column's mean is shrunk toward the overall mean as if it had this many more ratings
# (the item_reg of the user+item bias baseline). Unshrunk, an item with one high rating starts at the top
# of every list: on the default sample that made the autoencoder's Recall@10 0.002 (0.014 shrunk, RMSE
# 0.9388 -> 0.9377).
COLUMN_MEAN_SHRINK = 25.0
ROW_MEAN_SHRINK = 10.0  # center="row": a row's mean is shrunk toward the global mean as if it had this many more ratings


def shrunk_means(owners: np.ndarray, values: np.ndarray, n_owners: int, global_mean: float,
                 shrink: float = ROW_MEAN_SHRINK) -> np.ndarray:
    """Mean rating per owner (the row or column number of each value), shrunk toward ``global_mean`` as if
    each owner had ``shrink`` more ratings at it (owners with few ratings stay near it)."""
    counts = np.bincount(owners, minlength=n_owners)
    sums = np.bincount(owners, values.astype(np.float64) - global_mean, n_owners)
    return (global_mean + sums / (counts + shrink)).astype(np.float32)


class Estimator:
    family = ""
    rating_model = True          # predicts ratings (RMSE applies) rather than interaction scores
    valid_metric = "rmse"
    higher_is_better = False

    def __init__(self, model: torch.nn.Module, data, config: dict, device: torch.device):
        self.model = model.to(device)
        self.data = data
        self.config = config
        self.device = device
        self.batch_size = int(config["batch_size"])
        self.eval_batch_size = int(config.get("eval_batch_size", 4096))
        self.clip = rating_range(data.meta)
        self.use_amp = bool(config.get("amp", True)) and device.type == "cuda"

    def autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- training -------------------------------------------------------------------------------
    def n_batches(self) -> int:
        raise NotImplementedError

    def batches(self, rng: np.random.Generator) -> Iterator:
        raise NotImplementedError

    def losses(self, batch) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (loss to minimize, data-fit value to report); the loop takes one step per yield."""
        raise NotImplementedError

    def validate(self) -> float | None:
        valid = self.data.valid
        if valid.nnz == 0:
            return None
        rows, cols, values = csr_triplets(valid)
        return rmse(np.clip(self.predict_pairs(rows, cols), *self.clip), values)

    # --- prediction ---------------------------------------------------------------------------------
    def predict_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _eval_mode(self):
        """no_grad + eval mode, restoring the previous mode afterwards."""
        model = self.model

        @contextlib.contextmanager
        def scope():
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    yield
            finally:
                model.train(was_training)

        return scope()


class RowsEstimator(Estimator):
    """Autoencoders. ``orientation="user"``: input = a user's ratings, outputs = items (the deep
    autoencoder, U-AutoRec). ``orientation="item"``: input = an item's ratings, outputs = users (I-AutoRec)."""

    family = "rows"

    def __init__(self, model, data, config, device, orientation: str = "user"):
        super().__init__(model, data, config, device)
        self.orientation = orientation
        matrix = data.train if orientation == "user" else data.train_by_item
        self.center = config.get("center", "none")
        if self.center == "row":
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
        self.input_noise = float(config.get("noise", 0.0))
        self.refeed = int(config.get("refeed", 0))
        self.noise_loss = config.get("noise_loss", "all")
        if config.get("output_bias") == "mean" and not model.last_layer_activation:
            self._init_output_bias()

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
            yield row_batch(self.matrix, order[start:start + self.batch_size]).to(self.device)

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
        with self.autocast():
            if dense:
                code = model.encode_dense(batch.dense(self.matrix.shape[1], values))
            else:
                code = model.encode_sparse(batch.cols, values, batch.offsets)
            hidden = model.decode_hidden(code)
            if full_output:
                full = model.output_full(hidden)
                observed = full[batch.owner, batch.cols]
            else:
                observed = model.output_at(hidden, batch.owner, batch.cols)
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

    def score_rows(self, rows):
        rows = np.asarray(rows, np.int64)
        with self._eval_mode():
            if self.orientation == "user":
                return self.model.output_full(self._hidden_for(rows)).float().cpu().numpy() + self.row_offset[rows, None]
            n_items = self.matrix.shape[0]
            out = np.empty((len(rows), n_items), np.float32)
            users = torch.from_numpy(rows).to(self.device)
            for lo in range(0, n_items, self.eval_batch_size):
                items = np.arange(lo, min(lo + self.eval_batch_size, n_items))
                out[:, items] = self.model.output_columns(self._hidden_for(items), users).float().cpu().numpy().T
            return out + self.row_offset[None, :]

    def score_new_user(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Outputs for a user absent from training, from their ratings (user orientation only)."""
        offset = 0.0
        if self.center == "row":
            offset = float(shrunk_means(np.zeros(len(values), np.int64), values, 1, self.global_mean)[0])
            values = np.asarray(values, np.float32) - offset
        with self._eval_mode():
            code = self.model.encode_sparse(torch.as_tensor(cols, dtype=torch.int64, device=self.device),
                                            torch.as_tensor(values, dtype=torch.float32, device=self.device),
                                            torch.zeros(1, dtype=torch.int64, device=self.device))
            return self.model.output_full(self.model.decode_hidden(code)).float().cpu().numpy()[0] + offset


class PairsEstimator(Estimator):
    """One (user, item, rating) per example: biased MF and the embedding MLP. Loss: MSE + l2 * penalty."""

    family = "pairs"

    def __init__(self, model, data, config, device):
        super().__init__(model, data, config, device)
        rows, cols, values = csr_triplets(data.train)
        self.users = torch.from_numpy(rows)
        self.items = torch.from_numpy(cols)
        self.values = torch.from_numpy(values)
        self.l2 = float(config.get("l2", 0.0))

    def n_batches(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def batches(self, rng):
        order = torch.from_numpy(rng.permutation(len(self.users)))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield (self.users[idx].to(self.device), self.items[idx].to(self.device),
                   self.values[idx].to(self.device))

    def losses(self, batch):
        users, items, values = batch
        with self.autocast():
            pred = self.model(users, items)
        fit = observed_mse(pred, values)
        loss = fit + self.l2 * self.model.penalty(users, items) if self.l2 else fit
        yield loss, fit.detach()

    def _pairs_in_chunks(self, rows, cols, transform=None) -> np.ndarray:
        out = np.empty(len(rows), np.float32)
        step = self.eval_batch_size * 64
        with self._eval_mode():
            for lo in range(0, len(rows), step):
                u = torch.as_tensor(rows[lo:lo + step], dtype=torch.int64, device=self.device)
                i = torch.as_tensor(cols[lo:lo + step], dtype=torch.int64, device=self.device)
                pred = self.model(u, i)
                out[lo:lo + step] = (transform(pred) if transform else pred).float().cpu().numpy()
        return out

    def predict_pairs(self, rows, cols):
        return self._pairs_in_chunks(rows, cols)

    def score_rows(self, rows):
        rows = np.asarray(rows, np.int64)
        if hasattr(self.model, "score_all"):
            with self._eval_mode():
                return self.model.score_all(torch.from_numpy(rows).to(self.device)).float().cpu().numpy()
        n_items = self.data.train.shape[1]
        grid_rows = np.repeat(rows, n_items)
        grid_cols = np.tile(np.arange(n_items, dtype=np.int64), len(rows))
        return self.predict_pairs(grid_rows, grid_cols).reshape(len(rows), n_items)


class ImplicitEstimator(PairsEstimator):
    """NCF: every training rating is a positive; ``negatives`` unrated items per positive, drawn afresh
    each epoch from the epoch's seeded generator; BCE on logits. Scores are probabilities."""

    family = "implicit"
    rating_model = False
    valid_metric = "hr@10"
    higher_is_better = True

    def __init__(self, model, data, config, device):
        super().__init__(model, data, config, device)
        self.n_negatives = int(config.get("negatives", 4))
        seen = data.train + data.valid + data.test  # never sample a known interaction as a negative
        seen.sort_indices()
        self.seen = seen.tocsr()
        self._valid_ranking = None

    def n_batches(self) -> int:
        return -(-len(self.users) * (1 + self.n_negatives) // self.batch_size)

    def batches(self, rng):
        negatives = sample_negatives(self.seen, self.users.numpy(), self.n_negatives, rng)
        users = torch.cat([self.users, self.users.repeat_interleave(self.n_negatives)])
        items = torch.cat([self.items, torch.from_numpy(negatives.reshape(-1))])
        labels = torch.cat([torch.ones(len(self.users)), torch.zeros(negatives.size)])
        order = torch.from_numpy(rng.permutation(len(users)))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield users[idx].to(self.device), items[idx].to(self.device), labels[idx].to(self.device)

    def losses(self, batch):
        users, items, labels = batch
        with self.autocast():
            logits = self.model(users, items)
        loss = binary_cross_entropy(logits, labels)
        yield loss, loss.detach()

    def validate(self) -> float | None:
        """HR@10 of each valid interaction among 99 fixed sampled non-interactions."""
        if self.data.valid.nnz == 0:
            return None
        if self._valid_ranking is None:
            rows, cols, _ = csr_triplets(self.data.valid)
            negatives = sample_negatives(self.seen, rows, VALID_NEGATIVES, np.random.default_rng(12345))
            self._valid_ranking = rows, cols, negatives
        rows, cols, negatives = self._valid_ranking
        pos = self.predict_pairs(rows, cols)
        neg = self.predict_pairs(np.repeat(rows, VALID_NEGATIVES), negatives.reshape(-1))
        return hit_rate_at_k(rank_of_positive(pos, neg.reshape(len(rows), -1)), 10)

    def predict_pairs(self, rows, cols):
        return self._pairs_in_chunks(rows, cols, transform=torch.sigmoid)
