"""Row-wise (lazy) optimizers for tables whose gradient is row-sparse: an embedding with ``sparse=True``
gives a gradient that holds only the rows its batch looked up, and these steps read and write only those
rows of the table and of the optimizer's moments. With dense Adam every step of an embedding model reads
and writes every row of every table and its two moments (47K + 17.5K users and items at 10% of Netflix,
365K at full scale), although a batch of 1,024 ratings touches at most 2,048 of them: the work of an epoch
grows with users x items x batches instead of with the ratings.

- ``RowAdam``: Adam's update on the touched rows only (what ``torch.optim.SparseAdam`` and TensorFlow's
  LazyAdam do): the moments of untouched rows stay as they are (they do not decay), the bias correction
  counts the table's steps. ``weight_decay`` is L2 added to the gradient of the touched rows (torch Adam's
  coupled decay, applied where the batch looks). With ``catch_up=True`` a touched row first gets what dense
  Adam would have done to it in the steps it was not touched (zero gradient there): its moments decay by
  beta ** skipped and it moves by the momentum it carried, in closed form (``_momentum_tail``), so that
  without weight decay the step is dense Adam's at the cost of the touched rows (up to eps and lr changes
  in between, and the gradient being taken at the row's old place); ``flush`` does the same for every row
  (the loop, at the end of each epoch); its L2 gradient is multiplied by the steps since the row's last
  decay (the decay of the skipped steps, added at the touch); the gathered rows are stepped by torch's fused
  Adam kernel. Plain lazy Adam moves a row touched once every many steps by a tenth of what dense Adam does
  (the rest of its momentum waits for its next touch) and decays it only when touched: for U-AutoRec's item
  tables that was worth 0.009 RMSE on MovieLens valid (BENCHMARKS.md). The row models use ``catch_up``; the
  embedding models keep plain lazy Adam.
- ``RowAdagrad``: Adagrad on the touched rows; without weight decay the same numbers as dense Adagrad (an
  untouched row's gradient is zero, so dense Adagrad leaves it as it is too).

Both take dense gradients as well (all rows touched), so a table may be used densely too. They are
``torch.optim.Optimizer`` subclasses: ``state_dict``/``load_state_dict`` hold tensors only, as the loop's
checkpoints need. ``SplitOptimizer`` puts a dense optimizer (the loop's fused one) and a row-wise one
behind one object for the loop.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch


def _rows_and_values(grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(unique rows, their gradient rows) of a sparse gradient (duplicates summed); (None, grad) if dense."""
    if not grad.is_sparse:
        return None, grad
    if not grad.is_coalesced():
        rows = grad._indices()[0]
        if bool((rows[1:] > rows[:-1]).all()):
            # rows already sorted and distinct (a gather of distinct rows, e.g. the row models' input and output
            # tables): nothing to sum, so skip coalescing's sort and copy (~1 ms per table and step at 2K x 150)
            return rows, grad._values()
    grad = grad.coalesce()
    return grad.indices()[0], grad.values()


# Steps after which Adam's bias corrections are 1 to float64 precision (beta2 ** 40,000 < 1e-17 for beta2 <= 0.999)
TAIL_STEPS = 40_000


@functools.cache
def _momentum_tail(beta1: float, beta2: float) -> torch.Tensor:
    """``tail[s]`` = sum over the steps u > s of r ** (u - s) * c(u), r = beta1 / sqrt(beta2), c(u) = sqrt(1 -
    beta2 ** u) / (1 - beta1 ** u): how far (in units of lr * m / sqrt(v)) dense Adam moves a row whose
    gradient is zero from step s + 1 on (m, v its moments after step s). The move over steps s + 1 .. t - 1 is
    tail[s] - r ** (t - 1 - s) * tail[t - 1]; beyond TAIL_STEPS, c = 1 and tail = r / (1 - r)."""
    ratio = beta1 / math.sqrt(beta2)
    steps = np.arange(1, TAIL_STEPS + 2, dtype=np.float64)
    correction = np.sqrt(1 - beta2 ** steps) / (1 - beta1 ** steps)  # c(1) .. c(TAIL_STEPS + 1)
    tail = np.empty(TAIL_STEPS + 1)
    after = ratio / (1 - ratio)  # tail[TAIL_STEPS + 1]: c = 1 from there on
    for s in range(TAIL_STEPS, -1, -1):  # tail[s] = r * (c(s + 1) + tail[s + 1])
        after = ratio * (correction[s] + after)
        tail[s] = after
    return torch.from_numpy(tail)


def _take(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """A copy of ``values`` at ``rows`` (all of them when None)."""
    return values.clone() if rows is None else values.index_select(0, rows)


def _mark(values: torch.Tensor, rows: torch.Tensor | None, step: int) -> None:
    if rows is None:
        values.fill_(step)
    else:
        values.index_fill_(0, rows, step)


class RowOptimizer(torch.optim.Optimizer):
    """The walk both row-wise steps share: for each parameter with a gradient, the touched rows (all of them
    for a dense gradient), the gradient plus ``weight_decay`` times those rows (L2, coupled), the rows of each
    per-row state tensor (``row_state``) gathered, ``_update`` (the rule: updates those state rows in place
    and returns the step to add to the parameter's rows), the state rows written back and the step added.
    A dense gradient works on the parameter and its state directly (no gather, no copy back)."""

    row_state: tuple[str, ...] = ()
    _in_place = False  # whether _step_rows steps gathered rows in place (used with catch_up)

    def _step_rows(self, group: dict, state: dict, grad: torch.Tensor, rows: dict[str, torch.Tensor],
                   table: torch.Tensor) -> None:
        raise NotImplementedError

    def _catch_up(self, group: dict, state: dict, rows: torch.Tensor | None, touched: dict[str, torch.Tensor],
                  flush: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Before the step (or, with ``flush``, after the last one): bring the touched rows' state up to date
        (in place); returns the move of the rows in the steps they were skipped and the factor of each row's
        weight decay (None, None: nothing to catch up, decay as it is)."""
        return None, None

    @torch.no_grad()
    def flush(self) -> None:
        """Bring every row up to date with the steps taken so far (the loop calls it at the end of each epoch,
        before validation and the checkpoint: the weights evaluated and saved are those of every step)."""
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                if state:
                    skipped, _ = self._catch_up(group, state, None, {name: state[name] for name in self.row_state},
                                                flush=True)
                    if skipped is not None:
                        param.add_(skipped)

    def _init_state(self, state: dict, param: torch.Tensor) -> None:
        for name in self.row_state:
            state[name] = torch.zeros_like(param)

    def _update(self, group: dict, state: dict, grad: torch.Tensor, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            decay = group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    self._init_state(state, param)
                rows, grad = _rows_and_values(param.grad)
                if rows is None:
                    touched = {name: state[name] for name in self.row_state}
                else:
                    touched = {name: state[name].index_select(0, rows) for name in self.row_state}
                skipped, decay_scale = self._catch_up(group, state, rows, touched)
                if group.get("catch_up") and self._in_place:
                    # the rows gathered, caught up and stepped in place by one kernel, then written back
                    table = param if rows is None else param.index_select(0, rows)
                    if skipped is not None:
                        table.add_(skipped)
                    if decay:
                        grad = grad.add(table if decay_scale is None else table * decay_scale, alpha=decay)
                    self._step_rows(group, state, grad, touched, table)
                    if rows is not None:
                        for name, values in touched.items():
                            state[name].index_copy_(0, rows, values)
                        param.index_copy_(0, rows, table)
                    continue
                if decay:
                    table = param if rows is None else param.index_select(0, rows)
                    if skipped is not None:
                        table = table + skipped
                    grad = grad.add(table if decay_scale is None else table * decay_scale, alpha=decay)
                update = self._update(group, state, grad, touched)
                if skipped is not None:
                    update += skipped
                if rows is None:
                    param.add_(update)
                    continue
                for name, values in touched.items():
                    state[name].index_copy_(0, rows, values)
                param.index_add_(0, rows, update)


class RowAdam(RowOptimizer):
    """Lazy Adam: the Adam step of ``torch.optim.Adam`` on the rows a sparse gradient holds."""

    row_state = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, catch_up: bool = False):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "catch_up": catch_up})

    def _init_state(self, state: dict, param: torch.Tensor) -> None:
        state["step"] = torch.zeros((), dtype=torch.float64)
        super()._init_state(state, param)

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts every state tensor but "step" to its parameter's dtype: the rows' step counts stay int64
        counts = {index: {key: value[key].clone() for key in ("last", "decayed") if key in value}
                  for index, value in state_dict.get("state", {}).items()}
        super().load_state_dict(state_dict)
        params = [param for group in self.param_groups for param in group["params"]]
        for index, saved in counts.items():
            for key, value in saved.items():
                self.state[params[int(index)]][key] = value.to(params[int(index)].device)

    def _catch_up(self, group, state, rows, touched, flush=False):
        if not group.get("catch_up"):
            return None, None
        shape = (-1,) + (1,) * (state["exp_avg"].dim() - 1)
        for key in ("last", "decayed"):  # steps at which each row was last brought up to date / decayed
            if key not in state:
                state[key] = torch.zeros(len(state["exp_avg"]), dtype=torch.int64, device=state["exp_avg"].device)
        done = int(state["step"])  # steps taken before this one: the catch-up covers last + 1 .. done
        decay_scale = None
        if not flush:
            # the decay gradients of the steps the row was skipped, added at its touch (lazy coupled L2)
            decayed = _take(state["decayed"], rows)
            _mark(state["decayed"], rows, done + 1)
            decay_scale = ((done + 1) - decayed).to(state["exp_avg"].dtype).view(shape)
        last = _take(state["last"], rows)
        _mark(state["last"], rows, done if flush else done + 1)  # after this step, up to date with it
        gap = done - last  # steps each row was skipped
        if not bool((gap > 0).any()):
            return None, decay_scale
        beta1, beta2 = group["betas"]
        tail = _momentum_tail(beta1, beta2).to(last.device)
        ratio = beta1 / math.sqrt(beta2)
        factor = tail[last.clamp(max=len(tail) - 1)] - ratio ** gap.double() * tail[min(done, len(tail) - 1)]
        m, v = touched["exp_avg"], touched["exp_avg_sq"]
        skipped = m.div(v.sqrt().add_(group["eps"])).mul_((-group["lr"] * factor).to(m.dtype).view(shape))
        m.mul_((beta1 ** gap.double()).to(m.dtype).view(shape))
        v.mul_((beta2 ** gap.double()).to(v.dtype).view(shape))
        return skipped, decay_scale

    _in_place = True

    def _step_rows(self, group, state, grad, rows, table):
        """torch's fused Adam kernel on the gathered rows (one pass; the caught-up step of the row models). The
        op-by-op ``_update`` stays for the embedding models' lazy Adam, whose recorded numbers it made."""
        state["step"] += 1
        beta1, beta2 = group["betas"]
        torch.ops.aten._fused_adam_([table], [grad.contiguous()], [rows["exp_avg"]], [rows["exp_avg_sq"]], [],
                                    [state["step"].to(torch.float32)], lr=float(group["lr"]), beta1=beta1,
                                    beta2=beta2, weight_decay=0.0, eps=group["eps"], amsgrad=False, maximize=False)

    def _update(self, group, state, grad, rows):
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        m = rows["exp_avg"].lerp_(grad, 1 - beta1)
        v = rows["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = v.sqrt().div_(math.sqrt(1 - beta2 ** step)).add_(group["eps"])
        return m.div(denom).mul_(-group["lr"] / (1 - beta1 ** step))


class RowAdagrad(RowOptimizer):
    """Adagrad (``torch.optim.Adagrad``'s step, no lr decay) on the rows a sparse gradient holds. ``catch_up``
    is accepted and changes nothing: dense Adagrad does not move a row whose gradient is zero."""

    row_state = ("sum",)

    def __init__(self, params, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0,
                 catch_up: bool = False):
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay})

    def _update(self, group, state, grad, rows):
        total = rows["sum"].addcmul_(grad, grad)
        return grad.div(total.sqrt().add_(group["eps"])).mul_(-group["lr"])


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

    def flush(self) -> None:
        """Bring the rows the row-wise part skipped up to date (``RowOptimizer.flush``)."""
        for part in self.parts:
            if isinstance(part, RowOptimizer):
                part.flush()

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("parts") if isinstance(state, dict) else None
        if parts is None or len(parts) != len(self.parts):
            raise ValueError("the checkpoint's optimizer state was written by another optimizer layout")
        for part, part_state in zip(self.parts, parts):
            part.load_state_dict(part_state)
