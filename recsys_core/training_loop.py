"""THE training loop of iterative models (``fit``): epochs of batches, one optimizer step per loss the
estimator yields, validation and early stopping, a checkpoint after every epoch, exact resume. Models
solved in closed form (EASE, ALS sweeps) fit themselves and never come here. The stage API that writes a
run folder around it is ``recsys_core.train``.

Determinism: every epoch draws its shuffling/sampling from ``np.random.default_rng([seed, epoch])``
and re-seeds torch with ``seed, epoch`` before its first batch, so epoch e is the same computation
whether the run went straight through or was resumed from the checkpoint of epoch e - 1.

Several processes (``recsys_core.distributed``): each trains on its part of every batch, the gradients are
averaged by DistributedDataParallel, process 0 validates, decides early stopping for all and writes the
checkpoint; a diverging loss in any process stops every process with the same error.

``checkpoint.pt`` holds only tensors and plain containers (loads with ``torch.load(weights_only=True)``):
model and optimizer state, the schedule, RNG states, the epoch, history and early-stopping state.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_core import distributed
from recsys_core.errors import RecsysError
from recsys_core.io import atomic_file
from recsys_core.options import ModelOptions, option, options
from recsys_core.progress import progress_bar
from recsys_core.row_optim import ROW_OPTIMIZERS, SplitOptimizer

log = logging.getLogger("recsys_core")

CHECKPOINT = "checkpoint.pt"
SYNC_EVERY = 20  # batches between the loop's looks at the loss (each look waits for the GPU)
EXPLODE_FACTOR = 1e4  # a batch loss this many times the run's first one counts as diverged


# The optimizers the loop offers, by option value: torch.optim class name and whether it takes momentum.
OPTIMIZERS = {"sgd": ("SGD", True), "adam": ("Adam", False), "adagrad": ("Adagrad", False),
              "rmsprop": ("RMSprop", True)}


@options
class LoopOptions(ModelOptions):
    """Options of every model trained by ``fit``: epochs of mini-batches and an optimizer."""

    seed: int = option(0, "seed of weights, shuffling, dropout and sampling", low=0)
    epochs: int = option(40, "maximum number of epochs", low=1, resumable=True)
    batch_size: int = option(128, "examples per batch: users (autoencoders) or ratings (MF, MLP, NCF)", low=1)
    optimizer: str = option("adam", "sgd is momentum SGD (the paper's choice with lr 0.001..0.005)",
                            choices=OPTIMIZERS)
    lr: float = option(0.001, "learning rate", low=0, low_open=True, log=True)
    weight_decay: float = option(0.0, "L2 on weight matrices and embeddings through the optimizer (not biases)",
                                 low=0)
    momentum: float = option(0.9, "momentum of sgd and rmsprop", low=0, high=1, high_open=True)
    lr_milestones: tuple[int, ...] = option((), "epochs after which lr is multiplied by lr_gamma (the paper's "
                                                "schedule: 24,36,48,66,72)", item_low=1)
    lr_gamma: float = option(0.5, "factor of the step schedule", low=0, low_open=True)
    patience: int = option(5, "early stopping: epochs without a better valid metric (0 = never stop early)",
                           low=0, resumable=True)


def sparse_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """The tables whose gradients are row-sparse: embeddings made with ``sparse=True`` and whatever the
    network names in ``row_sparse_parameters()``."""
    found = [m.weight for m in model.modules()
             if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and m.sparse]
    found += list(getattr(model, "row_sparse_parameters", lambda: [])())
    return list({id(p): p for p in found}.values())


def make_optimizer(model: torch.nn.Module, config: LoopOptions):
    """Weight decay applies to weight matrices and embeddings, not to biases and scalars. Tables with
    row-sparse gradients (``sparse_parameters``) get the row-wise step of ``recsys_core.row_optim`` (adam and
    adagrad only), the rest the loop's optimizer; both behind one ``SplitOptimizer``."""
    sparse = sparse_parameters(model)
    if not sparse:
        return _dense_optimizer(list(model.parameters()), config)
    if config.optimizer not in ROW_OPTIMIZERS:
        raise RecsysError(f"optimizer {config.optimizer} has no row-wise step for sparse gradients; choose "
                          f"one of {', '.join(ROW_OPTIMIZERS)}")
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in ids]
    decay = float(config.weight_decay)
    groups = [{"params": [p for p in sparse if p.dim() >= 2], "weight_decay": decay},
              {"params": [p for p in sparse if p.dim() < 2], "weight_decay": 0.0}]
    # a network that names row_catch_up gets the row-wise step that catches up skipped rows (row_optim.RowAdam)
    rowwise = ROW_OPTIMIZERS[config.optimizer]([g for g in groups if g["params"]], lr=float(config.lr),
                                               catch_up=bool(getattr(model, "row_catch_up", False)))
    return SplitOptimizer(_dense_optimizer(dense, config) if dense else None, rowwise)


def _dense_optimizer(params: list, config: LoopOptions) -> torch.optim.Optimizer:
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": float(config.weight_decay)},
              {"params": other, "weight_decay": 0.0}]
    class_name, takes_momentum = OPTIMIZERS[config.optimizer]
    optimizer_class = getattr(torch.optim, class_name)
    extra = {"momentum": float(config.momentum)} if takes_momentum else {}
    # Fused kernels: on CPU one pass over the parameters instead of a dozen (Adam: 17x faster step).
    try:
        return optimizer_class(groups, lr=float(config.lr), fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):
        return optimizer_class(groups, lr=float(config.lr), foreach=True, **extra)


class OwnStep:
    """The optimizer of an estimator that updates its weights itself inside ``losses()`` (MF's
    ``solver: sgd``): no gradients and no state. The loop sets each epoch's lr in ``param_groups`` (the
    estimator reads it there), checks and reports the yielded losses, and takes no backward or step."""

    def __init__(self, lr: float):
        self.param_groups = [{"lr": float(lr)}]

    @property
    def lr(self) -> float:
        return float(self.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def uses_sparse_rows(config) -> bool:
    """Whether an embedding model's tables take sparse gradients and the row-wise step: option ``sparse``
    on and an optimizer that has a row-wise step (adam, adagrad)."""
    return bool(getattr(config, "sparse", False)) and config.optimizer in ROW_OPTIMIZERS


def lr_for_epoch(config: LoopOptions, epoch: int) -> float:
    """Step schedule: lr * gamma ** (number of milestones <= epoch); epochs count from 1."""
    passed = sum(1 for m in config.lr_milestones if epoch > int(m))
    return float(config.lr) * float(config.lr_gamma) ** passed


def _rng_state() -> dict:
    state: dict[str, torch.Tensor | list[torch.Tensor]] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RecsysError(f"{path} does not exist: there is no run to resume there") from None
    except Exception as err:  # a truncated or foreign file
        raise RecsysError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None


def new_history() -> dict:
    return {"epoch": [], "train_loss": [], "valid": [], "lr": [], "seconds": []}


def fit(estimator, config: LoopOptions, run_dir: Path | None = None, resume: bool = False,
        on_epoch=None) -> dict:
    """Train ``estimator.model`` for ``config.epochs`` epochs (or until early stopping).

    The estimator answers ``n_batches()``, ``batches(rng)``, ``losses(batch)`` (one optimizer step per
    yielded loss), ``validate()`` and ``valid_metric``/``higher_is_better``. With a ``run_dir`` a checkpoint
    is written after every epoch (``resume=True`` continues from it).

    ``on_epoch(epoch, valid)``, when given, is called after every epoch's validation; a true answer stops
    training there (a sweep's pruner: the run ends as if stopped early, ``pruned`` names the epoch).

    Returns {"history", "best_epoch", "best_valid", "stopped_early", "epochs_done", "pruned"}; the model
    holds the best weights by the valid metric (the last ones when there is no valid part).
    """
    model = estimator.model
    # an estimator that steps itself (``own_step()`` gives an OwnStep) gets no torch optimizer
    own = getattr(estimator, "own_step", lambda: None)()
    optimizer = own if own is not None else make_optimizer(model, config)
    seed = int(config.seed)
    checkpoint_path = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    if resume and checkpoint_path is None:
        raise RecsysError("resuming needs the run folder that holds the checkpoint")
    history = new_history()
    state: dict[str, Any] = {"best_valid": None, "best_epoch": 0, "best_model": None, "bad_epochs": 0,
             "stopped_early": False, "reference_loss": None, "pruned": None}
    ctx = distributed.current()
    start_epoch = 1
    if resume and checkpoint_path is not None:  # (resume without one was refused above)
        ckpt = load_checkpoint(checkpoint_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        history = ckpt["history"]
        state = ckpt["early_stopping"]
        start_epoch = int(ckpt["epoch"]) + 1
        log.info("resuming %s from epoch %d", checkpoint_path, start_epoch - 1)
    run_step = ctx.step_runner(model)  # after resuming: DDP starts every process from process 0's weights

    higher = estimator.higher_is_better
    for epoch in range(start_epoch, int(config.epochs) + 1):
        if state["stopped_early"]:
            break
        lr = lr_for_epoch(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(distributed.rank_seed(seed * 1_000_003 + epoch))
        rng = np.random.default_rng([seed, epoch])
        model.train()
        started = time.perf_counter()
        totals = {"total": 0.0, "count": 0}
        pending: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        with progress_bar(f"epoch {epoch}/{config.epochs}", estimator.n_batches(), "batches") as bar:
            for b, batch in enumerate(estimator.batches(rng), start=1):
                for step, (loss, reported) in enumerate(_steps(estimator.losses(batch), run_step)):
                    if own is None:
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    pending.append((b, loss.detach(), reported.detach() if step == 0 else None))
                bar.advance()
                if b % SYNC_EVERY == 0:
                    _drain(pending, totals, state, epoch, config, lr, ctx)
                    bar.update(loss=totals["total"] / max(totals["count"], 1))
            _drain(pending, totals, state, epoch, config, lr, ctx)
        if isinstance(optimizer, SplitOptimizer):  # rows a row-wise step skipped are brought up to date
            optimizer.flush()
        total, count = ctx.sum([totals["total"], totals["count"]])
        train_loss = total / max(count, 1)
        valid = _validate_once(estimator, state, higher, epoch, model, int(config.patience), ctx)
        seconds = time.perf_counter() - started
        for key, value in (("epoch", epoch), ("train_loss", train_loss), ("valid", valid), ("lr", lr),
                           ("seconds", seconds)):
            history[key].append(value)
        log.info("epoch %d: train loss %.4f, valid %s %s, %.1f s", epoch, train_loss, estimator.valid_metric,
                 "-" if valid is None else f"{valid:.4f}", seconds)
        if on_epoch is not None and not state["stopped_early"]:
            # process 0 asks the hook (a sweep's pruner); every process stops with it
            prune = ctx.broadcast(bool(on_epoch(epoch, valid)) if ctx.is_main else None)
            if prune:
                state.update(stopped_early=True, pruned=epoch)
                log.info("pruned after epoch %d: valid %s is not promising", epoch, estimator.valid_metric)
        if checkpoint_path is not None and ctx.is_main:
            save_checkpoint(checkpoint_path, {
                "model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": {"lr": float(config.lr), "milestones": [int(m) for m in config.lr_milestones],
                              "gamma": float(config.lr_gamma), "last_epoch": epoch},
                "rng": _rng_state(), "epoch": epoch, "history": history, "early_stopping": state})
    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    return {"history": history, "best_epoch": state["best_epoch"] or (history["epoch"][-1] if history["epoch"] else 0),
            "best_valid": state["best_valid"], "stopped_early": state["stopped_early"],
            "epochs_done": history["epoch"][-1] if history["epoch"] else 0, "pruned": state.get("pruned")}


def _steps(losses, run_step):
    """The estimator's (loss, reported) pairs, each computed inside ``run_step`` (with several processes,
    the forward call of DDP, so that the loss's backward averages the gradients over the processes)."""
    while (item := run_step(lambda: next(losses, None))) is not None:
        yield item


def _validate_once(estimator, state: dict, higher: bool, epoch: int, model, patience: int, ctx):
    """The valid metric and the early-stopping decision, taken by process 0 and given to every process."""
    valid = None
    if ctx.is_main:
        valid = estimator.validate()
        _early_stopping(state, valid, higher, epoch, model, patience)
    shared = ("best_valid", "best_epoch", "bad_epochs", "stopped_early")
    valid, decision = ctx.broadcast((valid, {key: state[key] for key in shared}))
    state.update(decision)
    return valid


def _drain(pending: list, totals: dict, state: dict, epoch: int, config: LoopOptions, lr: float,
           ctx=distributed.SINGLE) -> None:
    """Check and sum the losses of the last batches with one device-to-host copy, not one per step."""
    problem = None
    if pending:
        losses = torch.stack([loss.float() for _, loss, _ in pending]).cpu().tolist()
        reports = [r for _, _, r in pending if r is not None]
        reported = torch.stack([r.float() for r in reports]).cpu().tolist() if reports else []
        try:
            for (batch, _, _), value in zip(pending, losses):
                _check_loss(value, state, epoch, batch, config, lr)
        except RecsysError as err:
            problem = str(err)
    problem = ctx.first_error(problem)  # every process stops at the same batch with the same sentence
    if problem is not None:
        raise RecsysError(problem)
    if not pending:
        return
    totals["total"] += sum(reported)
    totals["count"] += len(reported)
    pending.clear()


def _check_loss(value: float, state: dict, epoch: int, batch: int, config: LoopOptions, lr: float) -> None:
    reference = state["reference_loss"]
    if reference is None and math.isfinite(value):
        reference = state["reference_loss"] = max(value, 1e-8)
    if reference is None or not math.isfinite(value) or value > EXPLODE_FACTOR * reference:
        # (no reference: the very first loss was not finite)
        first = "not finite either" if reference is None else f"{reference:.4g}"
        raise RecsysError(
            f"training diverged in epoch {epoch}, batch {batch}: the loss became {value:.4g} "
            f"(first loss {first}) with {getattr(config, 'step_name', None) or 'optimizer ' + config.optimizer} "
            f"at lr {lr:g}; "
            f"lower --lr (the checkpoint of epoch {epoch - 1} is intact)")


def _early_stopping(state: dict, valid, higher: bool, epoch: int, model, patience: int) -> None:
    if valid is None:
        return
    best = state["best_valid"]
    if best is None or (valid > best if higher else valid < best):
        state.update(best_valid=float(valid), best_epoch=epoch, bad_epochs=0,
                     best_model=copy.deepcopy(_cpu_state(model)))
        return
    state["bad_epochs"] += 1
    if patience > 0 and state["bad_epochs"] >= patience:
        state["stopped_early"] = True
        log.info("early stopping after epoch %d: no better valid metric for %d epochs (best: epoch %d)",
                 epoch, patience, state["best_epoch"])
