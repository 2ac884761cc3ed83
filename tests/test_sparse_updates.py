"""Row-sparse updates of the embedding models (recsys_core/row_optim.py) and their whole-catalogue scoring
(``score_all``, issue 21): the row-wise steps compute what the dense optimizers compute where they must
agree, touch nothing else, and ``score_all`` gives every pair's forward value."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from recsys_core import models
from recsys_core.errors import RecsysError
from recsys_core.models.mf import BiasedMF
from recsys_core.models.mlp import EmbeddingMLP
from recsys_core.models.ncf import NCF
from recsys_core.row_optim import RowAdagrad, RowAdam, SplitOptimizer
from recsys_core.training_loop import make_optimizer


def _train(table: nn.Embedding, optimizer, batches, targets) -> torch.Tensor:
    for rows, target in zip(batches, targets):
        optimizer.zero_grad(set_to_none=True)
        loss = ((table(rows) - target) ** 2).sum()
        loss.backward()
        optimizer.step()
    return table.weight.detach().clone()


def _tables(n: int = 12, dim: int = 3) -> tuple[nn.Embedding, nn.Embedding]:
    torch.manual_seed(0)
    dense = nn.Embedding(n, dim)
    sparse = nn.Embedding(n, dim, sparse=True)
    sparse.weight.data.copy_(dense.weight.data)
    return dense, sparse


def test_row_adagrad_equals_dense_adagrad():
    """An untouched row's gradient is zero: dense Adagrad leaves it as it is too, so the two agree."""
    dense, sparse = _tables()
    batches = [torch.randint(0, 12, (7,)) for _ in range(20)]  # rows repeat within a batch and some never come
    targets = [torch.randn(7, 3) for _ in range(20)]
    expected = _train(dense, torch.optim.Adagrad(dense.parameters(), lr=0.1), batches, targets)
    got = _train(sparse, RowAdagrad(sparse.parameters(), lr=0.1), batches, targets)
    assert torch.allclose(got, expected, atol=1e-6)


def test_row_adam_equals_dense_adam_when_every_row_is_touched():
    dense, sparse = _tables()
    batches = [torch.cat([torch.arange(12), torch.randint(0, 12, (5,))]) for _ in range(20)]
    targets = [torch.randn(17, 3) for _ in range(20)]
    expected = _train(dense, torch.optim.Adam(dense.parameters(), lr=0.05, weight_decay=0.1), batches, targets)
    got = _train(sparse, RowAdam(sparse.parameters(), lr=0.05, weight_decay=0.1), batches, targets)
    assert torch.allclose(got, expected, atol=1e-5)


def test_row_adam_leaves_untouched_rows_and_their_moments_alone():
    _, sparse = _tables()
    optimizer = RowAdam(sparse.parameters(), lr=0.05, weight_decay=0.1)
    before = sparse.weight.detach().clone()
    _train(sparse, optimizer, [torch.tensor([1, 4, 4])] * 3, [torch.randn(3, 3)] * 3)
    moved = (sparse.weight.detach() != before).any(1)
    assert moved.nonzero().flatten().tolist() == [1, 4]
    state = optimizer.state[sparse.weight]
    assert (state["exp_avg"].abs().sum(1) > 0).nonzero().flatten().tolist() == [1, 4]
    assert float(state["step"]) == 3


def test_a_split_optimizer_round_trips_its_state():
    """Resuming a run loads the optimizer state: a fresh optimizer given the state continues identically."""
    torch.manual_seed(0)
    model = EmbeddingMLP(10, 8, 4, (6,), 0.0, 3.0, sparse=True)
    config = models.resolve_options("mlp", {"lr": 0.01})
    optimizer = make_optimizer(model, config)
    assert isinstance(optimizer, SplitOptimizer)
    users, items = torch.tensor([0, 3, 3, 9]), torch.tensor([1, 1, 7, 2])

    def step(opt):
        opt.zero_grad(set_to_none=True)
        (model(users, items) ** 2).mean().backward()
        opt.step()

    step(optimizer)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved = copy.deepcopy(optimizer.state_dict())  # the state holds the optimizer's live tensors
    step(optimizer)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(saved_model)
    again = make_optimizer(model, config)
    again.load_state_dict(saved)
    step(again)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_sparse_tables_need_an_optimizer_with_a_row_wise_step():
    model = BiasedMF(5, 5, 2, sparse=True)
    with pytest.raises(RecsysError, match="row-wise step"):
        make_optimizer(model, models.resolve_options("mf", {"optimizer": "sgd"}))


@pytest.mark.parametrize("name, options, sparse", [("mf", {}, True), ("mf", {"sparse": False}, False),
                                                    ("mlp", {"optimizer": "sgd"}, False), ("neumf", {}, True)])
def test_the_sparse_option_decides_the_tables(name, options, sparse):
    estimator = models.create(name, **options)
    assert estimator.sparse_rows is sparse


@pytest.mark.parametrize("make", [
    lambda: EmbeddingMLP(30, 50, 8, (16, 8), 0.3, 3.5),
    lambda: EmbeddingMLP(30, 50, 8, (), 0.3, 3.5),
    lambda: NCF(30, 50, "gmf", 8),
    lambda: NCF(30, 50, "mlp", 8, (16, 8), 0.2),
    lambda: NCF(30, 50, "neumf", 8, (16, 8)),
    lambda: NCF(30, 50, "mlp", 8, ()),
], ids=["mlp", "mlp-no-hidden", "gmf", "ncf-mlp", "neumf", "ncf-mlp-no-hidden"])
def test_score_all_equals_the_forward_of_every_pair(make, monkeypatch):
    import recsys_core.models.mlp as mlp_module

    monkeypatch.setattr(mlp_module, "GRID_FLOATS", 16 * 50 * 3)  # blocks of 3 users: the blocking is exercised
    torch.manual_seed(0)
    model = make()
    for param in model.parameters():
        nn.init.normal_(param, std=0.5)
    model.eval()
    users = torch.tensor([0, 5, 29, 5, 17, 2, 8])
    with torch.no_grad():
        grid = model.score_all(users)
        pairs = model(users.repeat_interleave(50), torch.arange(50).repeat(len(users))).view(len(users), 50)
    assert torch.allclose(grid, pairs, atol=1e-5)


# --- the row models (autoencoder, AutoRec): row-sparse input and output layers --------------------------------

def _linear_train(table: nn.Embedding, optimizer, batches, targets) -> torch.Tensor:
    """A loss whose gradient does not depend on the weights: a lazy step that catches rows up can equal dense
    Adam exactly (with the weights in the loss, a skipped row's gradient is taken where it stood)."""
    for rows, target in zip(batches, targets):
        optimizer.zero_grad(set_to_none=True)
        (table(rows) * target).sum().backward()
        optimizer.step()
    return table.weight.detach().clone()


def test_row_adam_catching_rows_up_equals_dense_adam():
    """Without weight decay, catch_up gives a skipped row what dense Adam gave it (moments decayed, the
    momentum it carried applied); flush brings the rows not touched since up to date too."""
    dense, sparse = _tables()
    batches = [torch.randint(0, 12, (4,)) for _ in range(30)] + [torch.arange(12)] + [
        torch.randint(0, 12, (4,)) for _ in range(30)]  # a dense gradient in between touches every row
    targets = [torch.randn(len(rows), 3) for rows in batches]
    expected = _linear_train(dense, torch.optim.Adam(dense.parameters(), lr=0.05), batches, targets)
    optimizer = RowAdam(sparse.parameters(), lr=0.05, catch_up=True)
    got = _linear_train(sparse, optimizer, batches, targets)
    assert not torch.allclose(got, expected, atol=1e-3)  # rows untouched since their last batch lag behind
    optimizer.flush()
    assert torch.allclose(sparse.weight.detach(), expected, atol=1e-5)
    plain = _tables()[1]
    lazy = _linear_train(plain, RowAdam(plain.parameters(), lr=0.05), batches, targets)
    assert not torch.allclose(lazy, expected, atol=1e-3)  # plain lazy Adam does not


def _row_batch():
    cols = torch.tensor([3, 7, 9, 7, 1, 3, 40])  # two rows: columns repeat across rows, most never come
    return cols, torch.randn(7), torch.tensor([0, 3]), torch.tensor([0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("constrained", [False, True], ids=["untied", "tied"])
def test_the_row_models_wide_layers_take_row_sparse_gradients_equal_to_the_dense_ones(constrained):
    from recsys_core.models.autoencoder import DeepAutoencoder

    torch.manual_seed(0)
    dense = DeepAutoencoder(50, [8, 4], "selu", 0.0, constrained, False)
    sparse = DeepAutoencoder(50, [8, 4], "selu", 0.0, constrained, False, sparse_rows=True)
    sparse.load_state_dict(dense.state_dict())
    cols, values, offsets, owner = _row_batch()
    for model in (dense, sparse):
        touched = model.touched_rows(cols)
        assert (touched is None) is (model is dense)
        hidden = model.decode_hidden(model.encode_sparse(cols, values, offsets, touched))
        ((model.output_at(hidden, owner, cols, touched) - values) ** 2).mean().backward()
    wide = {id(p) for p in sparse.row_sparse_parameters()}
    assert len(wide) == (1 if constrained else 2)
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        assert b.grad is not None and a.grad is not None
        assert b.grad.is_sparse is (id(b) in wide), name
        got = b.grad.to_dense() if b.grad.is_sparse else b.grad
        assert torch.equal(got, a.grad), name
        if b.grad.is_sparse:  # one row per distinct column, nothing else
            assert sorted(b.grad.coalesce().indices()[0].tolist()) == [1, 3, 7, 9, 40]
    with torch.no_grad():
        assert sparse.touched_rows(cols) is None  # evaluation gathers nothing


@pytest.mark.parametrize("name, options, sparse", [
    ("autoencoder", {"sparse_min_rows": 0}, True), ("autorec-item", {"sparse_min_rows": 40}, True),
    ("autorec-item", {}, False),  # 40 rows: under the default's 100,000
    ("autorec-user", {"sparse": False, "sparse_min_rows": 0}, False),
    ("autoencoder", {"optimizer": "sgd", "sparse_min_rows": 0}, False),
    ("autoencoder", {"preset": "N3M", "sparse_min_rows": 0}, False)])
def test_the_sparse_option_decides_the_row_models_tables(name, options, sparse):
    estimator = models.create(name, **options)
    model = estimator.build({"n_users": 40, "n_items": 30})
    optimizer = make_optimizer(model, estimator.options)
    assert isinstance(optimizer, SplitOptimizer) is sparse
    if sparse:
        rowwise = optimizer.parts[-1]
        assert isinstance(rowwise, RowAdam) and all(group["catch_up"] for group in rowwise.param_groups)
        assert {id(p) for group in rowwise.param_groups for p in group["params"]} == {
            id(model.enc_w[0]), id(model.dec_w[0])}


def test_a_catching_up_row_adam_resumes_exactly():
    """The rows' step counts (int64) come back as they were saved, and the run goes on bit for bit."""
    torch.manual_seed(0)
    table = nn.Embedding(12, 3, sparse=True)
    optimizer = RowAdam(table.parameters(), lr=0.05, weight_decay=0.1, catch_up=True)
    batches = [torch.randint(0, 12, (4,)) for _ in range(20)]
    targets = [torch.randn(4, 3) for _ in range(20)]
    _train(table, optimizer, batches[:10], targets[:10])
    saved_weights, saved = table.weight.detach().clone(), copy.deepcopy(optimizer.state_dict())
    expected = _train(table, optimizer, batches[10:], targets[10:])
    table.weight.data.copy_(saved_weights)
    again = RowAdam(table.parameters(), lr=0.05, weight_decay=0.1, catch_up=True)
    again.load_state_dict(saved)
    assert again.state[table.weight]["last"].dtype == torch.int64
    assert torch.equal(_train(table, again, batches[10:], targets[10:]), expected)


def test_several_processes_keep_the_row_models_tables_dense(monkeypatch):
    """DistributedDataParallel takes sparse gradients only from sparse embedding modules: with several
    processes the row models' gathered tables stay dense (a 2-process I-AutoRec run failed in backward)."""
    from types import SimpleNamespace

    from recsys_core import distributed

    estimator = models.create("autorec-item", sparse_min_rows=0)
    assert estimator.build({"n_users": 40, "n_items": 30}).row_sparse_parameters()
    monkeypatch.setattr(distributed, "current", lambda: SimpleNamespace(enabled=True))
    assert estimator.build({"n_users": 40, "n_items": 30}).row_sparse_parameters() == []
