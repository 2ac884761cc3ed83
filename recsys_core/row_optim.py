"""Row-wise (lazy) optimizers for tables whose gradient is row-sparse: an embedding with ``sparse=True``
gives a gradient that holds only the rows its batch looked up, and these steps read and write only those
rows of the table and of the optimizer's moments. With dense Adam every step of an embedding model reads
and writes every row of every table and its two moments (47K + 17.5K users and items at 10% of Netflix,
365K at full scale), although a batch of 1,024 ratings touches at most 2,048 of them: the work of an epoch
grows with users x items x batches instead of with the ratings.

- ``RowAdam``: Adam's update on the touched rows only (what ``torch.optim.SparseAdam`` and TensorFlow's
  LazyAdam do): the moments of untouched rows stay as they are (they do not decay), the bias correction
  counts the table's steps. ``weight_decay`` is L2 added to the gradient of the touched rows (torch Adam's
  coupled decay, applied where the batch looks).
- ``RowAdagrad``: Adagrad on the touched rows; without weight decay the same numbers as dense Adagrad (an
  untouched row's gradient is zero, so dense Adagrad leaves it as it is too).

Both take dense gradients as well (all rows touched), so a table may be used densely too. They are
``torch.optim.Optimizer`` subclasses: ``state_dict``/``load_state_dict`` hold tensors only, as the loop's
checkpoints need. ``SplitOptimizer`` puts a dense optimizer (the loop's fused one) and a row-wise one
behind one object for the loop.
"""

from __future__ import annotations

import math

import torch


def _rows_and_values(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(unique rows, their gradient rows) of a sparse gradient (duplicates summed); (None, grad) if dense."""
    if not grad.is_sparse:
        return None, grad
    grad = grad.coalesce()
    return grad.indices()[0], grad.values()


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam: the Adam step of ``torch.optim.Adam`` on the rows a sparse gradient holds."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                rows, grad = _rows_and_values(param.grad)
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = float(state["step"])
                table = param if rows is None else param.index_select(0, rows)
                if decay:
                    grad = grad.add(table, alpha=decay)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if rows is None:
                    m, v = exp_avg.lerp_(grad, 1 - beta1), exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                else:
                    m = exp_avg.index_select(0, rows).lerp_(grad, 1 - beta1)
                    v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    exp_avg.index_copy_(0, rows, m)
                    exp_avg_sq.index_copy_(0, rows, v)
                denom = v.sqrt().div_(math.sqrt(1 - beta2 ** step)).add_(eps)
                update = m.div(denom).mul_(-lr / (1 - beta1 ** step))
                if rows is None:
                    param.add_(update)
                else:
                    param.index_add_(0, rows, update)


class RowAdagrad(torch.optim.Optimizer):
    """Adagrad (``torch.optim.Adagrad``'s step, no lr decay) on the rows a sparse gradient holds."""

    def __init__(self, params, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["sum"] = torch.zeros_like(param)
                rows, grad = _rows_and_values(param.grad)
                if decay:
                    grad = grad.add(param if rows is None else param.index_select(0, rows), alpha=decay)
                if rows is None:
                    total = state["sum"].addcmul_(grad, grad)
                    param.addcdiv_(grad, total.sqrt().add_(eps), value=-lr)
                else:
                    total = state["sum"].index_select(0, rows).addcmul_(grad, grad)
                    state["sum"].index_copy_(0, rows, total)
                    param.index_add_(0, rows, grad.div(total.sqrt().add_(eps)).mul_(-lr))


ROW_OPTIMIZERS = {"adam": RowAdam, "adagrad": RowAdagrad}


class SplitOptimizer:
    """A dense optimizer and a row-wise one as one: the loop sets ``lr`` through ``param_groups`` (both
    optimizers' groups), steps, zeroes and checkpoints them together."""

    def __init__(self, *parts: torch.optim.Optimizer | None):
        self.parts = [part for part in parts if part is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self.parts for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("parts") if isinstance(state, dict) else None
        if parts is None or len(parts) != len(self.parts):
            raise ValueError("the checkpoint's optimizer state was written by another optimizer layout")
        for part, part_state in zip(self.parts, parts):
            part.load_state_dict(part_state)
