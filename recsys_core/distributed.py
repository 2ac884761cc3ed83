"""Several processes, one model: data-parallel training with ``torch.distributed`` (DistributedDataParallel;
gloo on CPU, NCCL on GPU).

Two ways to start the processes, one code path:

- the stage itself, on this host: ``recsys train ... --nproc N`` (the ``nproc`` option of every model
  trained by the loop) spawns N processes here (``spawn``); on CUDA process r uses GPU r;
- ``torchrun`` (one host or several): every process runs the same ``recsys train`` command and
  ``from_environment`` joins the process group the launcher describes (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR/PORT); on CUDA process r uses GPU LOCAL_RANK.

What each process does (``recsys_core.training_loop`` and the estimators read ``current()``): every process
reads the same split folder (CSR files) and, each epoch, draws the same permutation of the training
examples from ``np.random.default_rng([seed, epoch])``; each global batch of ``batch_size`` examples is cut
into ``world`` interleaved parts and process r takes part r (``local_part``), so ``batch_size`` keeps
its meaning (examples per optimizer step, over all processes) and the learning rate carries over. DDP
averages the gradients, every process takes the same optimizer step and holds the same weights. Process 0
(``is_main``) validates, takes the early-stopping decision and broadcasts it, writes the checkpoint and,
after training, every file of the run folder; the others only train.
"""

from __future__ import annotations

import ctypes
import inspect
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from recsys_core.errors import RecsysError


@dataclass
class DistContext:
    """This process's place in the group: ``rank`` of ``world`` processes (``local_rank`` on its host)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- the model ----------------------------------------------------------------------------------
    def step_runner(self, model: torch.nn.Module) -> Callable[[Callable[[], Any]], Any]:
        """``run(compute)`` calls ``compute()`` (the estimator's code that produces one loss from ``model``).

        With several processes ``compute`` runs as the forward call of a DistributedDataParallel wrapper of
        ``model``, so the backward of the loss it returns all-reduces (averages) the gradients, overlapped
        with the backward itself. Whatever methods of ``model`` the estimator calls, they run inside that
        one call. Buffers (constants here) are not re-broadcast at every call."""
        if not self.enabled:
            return lambda compute: compute()
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # torch 2.13 renamed broadcast_buffers (deprecated there) forward_sync_buffers; older ones know the old
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
            ddp = DistributedDataParallel(_Compute(model), device_ids=device_ids, forward_sync_buffers=False)
        else:
            ddp = DistributedDataParallel(_Compute(model), device_ids=device_ids, broadcast_buffers=False)
        return lambda compute: ddp(compute)

    # --- collectives (no-ops in a single process) ------------------------------------------------------
    def broadcast(self, obj: Any) -> Any:
        """Process 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of ``values`` over the processes (float64)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(tensor)
        return tensor.cpu().tolist()

    def first_error(self, message: str | None) -> str | None:
        """The error of the lowest process that has one (``None`` when none has): every process raises the
        same error at the same point instead of one failing while the others wait for it."""
        if not self.enabled:
            return message
        if self.sum([0.0 if message is None else 1.0])[0] == 0:
            return None
        messages: list[str | None] = [None] * self.world
        torch.distributed.all_gather_object(messages, message)
        return next(m for m in messages if m is not None)

    def decide(self, decision: Callable[[], Any]) -> Any:
        """``decision()`` run by process 0 alone (it may read and change files), its value (or its RecsysError)
        given to every process."""
        if not self.enabled:
            return decision()
        outcome = None
        if self.is_main:
            try:
                outcome = ("value", decision())
            except RecsysError as err:
                outcome = ("error", str(err))
        kind, value = self.broadcast(outcome)
        if kind == "error":
            raise RecsysError(value)
        return value

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _comm_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


class _Compute(torch.nn.Module):
    """What DDP wraps: ``forward(compute)`` returns ``compute()``; ``net`` holds the parameters."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, compute: Callable[[], Any]) -> Any:
        return compute()


SINGLE = DistContext()
_current = SINGLE
_owned = False  # whether this module made the group (and destroys it)


def current() -> DistContext:
    """The context of this process: the group it joined (``join``), else a single process."""
    return _current


def local_part(indices):
    """This process's part of one global batch (numpy array or torch tensor of example positions):
    positions r, r + world, r + 2 world ... A global batch with fewer examples than processes (the last
    of an epoch, at most) gives each process one example, some of them twice, as DistributedSampler pads."""
    ctx = _current
    if not ctx.enabled:
        return indices
    if len(indices) >= ctx.world:
        return indices[ctx.rank::ctx.world]
    return indices[ctx.rank % len(indices):ctx.rank % len(indices) + 1]


def rank_seed(seed: int) -> int:
    """A torch seed for this process (dropout and noise masks differ between processes; rank 0 keeps ``seed``)."""
    return seed + 7_919 * _current.rank


# ------------------------------------------------------------------------------------------- joining
def _backend(device: torch.device) -> str:
    if not torch.distributed.is_available():
        raise RecsysError("this torch build has no torch.distributed: train with nproc 1")
    return "nccl" if device.type == "cuda" else "gloo"


def check_processes(nproc: int, device: torch.device) -> None:
    """Refuse, in one sentence, a number of processes this machine cannot run on ``device``."""
    if device.type == "cuda":
        if nproc > 1 and device.index is not None:
            raise RecsysError(f"nproc {nproc} puts one process on each GPU: give --device cuda, not {device}")
        count = torch.cuda.device_count()
        if nproc > count:
            raise RecsysError(f"nproc {nproc} needs {nproc} GPUs (one per process) but this machine has {count}")


def join(rank: int, world: int, local_rank: int, device: torch.device, init_method: str) -> DistContext:
    """Join the process group (this process is ``rank`` of ``world``) and make it ``current()``."""
    global _current, _owned
    backend = _backend(device)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    torch.distributed.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    _current, _owned = DistContext(rank, world, local_rank, device), True
    if rank:
        os.environ["RECSYS_PROGRESS"] = "0"  # one progress bar: process 0's
    return _current


def leave() -> None:
    """Back to a single process; the group is destroyed where ``join`` made it."""
    global _current, _owned
    if _owned:
        _current.close()
    _current, _owned = SINGLE, False


# The rendezvous of processes started by a launcher: torchrun's MASTER_ADDR/MASTER_PORT (env://) unless this
# names another torch init method, e.g. file:///path/on/a/filesystem/every/host/shares/store (no TCP store:
# launchers other than torchrun, or hosts where a port must not be opened).
INIT_METHOD_VARIABLE = "RECSYS_INIT_METHOD"


def from_environment(device: torch.device) -> DistContext:
    """The group a launcher such as torchrun describes in the environment (WORLD_SIZE > 1), joined (or
    adopted, when the calling program already initialized torch.distributed); else ``current()``."""
    global _current
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if _current.enabled:
        return _current
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if device.type == "cuda":
                device = torch.device("cuda", local_rank)
            _current = DistContext(torch.distributed.get_rank(), world, local_rank, device)
        return _current
    if world <= 1:
        return _current
    try:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise RecsysError("WORLD_SIZE is set but RANK is not: start several processes with torchrun "
                          "(or train --nproc N on one host)") from None
    if device.type == "cuda":
        check_processes(int(os.environ.get("LOCAL_WORLD_SIZE", world)), torch.device("cuda"))
    return join(rank, world, local_rank, device, os.environ.get(INIT_METHOD_VARIABLE) or "env://")


# ------------------------------------------------------------------------------------------- spawning
# A process that failed is given this long to exit after the others are told to stop, then killed.
STOP_GRACE_S = 10.0


def spawn(nproc: int, device: torch.device, fn: Callable[..., Any], *args, threads: int | None = None) -> Any:
    """Run ``fn(*args)`` (a module-level function) in ``nproc`` new Python processes on this host, joined
    in one group (process r on GPU r on CUDA); returns process 0's return value.

    The processes are fresh interpreters (``python -m recsys_core.distributed``), not forks and not
    re-imports of the caller's ``__main__``, so any script, notebook or flow can call this. When one
    fails the others are stopped; a RecsysError in any process is raised here as its one sentence (the
    lowest process's), any other failure names the process whose traceback was printed. CPU processes
    run ``threads`` torch threads each (None: share this process's, torch.get_num_threads() // nproc each)."""
    check_processes(nproc, device)
    _backend(device)
    if threads is None:
        threads = max(1, torch.get_num_threads() // nproc)
    with tempfile.TemporaryDirectory(prefix="recsys-ddp-") as tmp:
        with open(Path(tmp) / "task.pkl", "wb") as f:
            pickle.dump((fn, args), f)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                        os.environ.get("PYTHONPATH")]))}
        loopback = _loopback_interface()
        if loopback and "GLOO_SOCKET_IFNAME" not in env:
            env["GLOO_SOCKET_IFNAME"] = loopback  # one host: gloo's sockets listen on 127.0.0.1 only
        procs = [subprocess.Popen([sys.executable, "-m", "recsys_core.distributed", tmp, str(rank), str(nproc),
                                   device.type, str(threads), str(os.getpid())], env=env) for rank in range(nproc)]
        try:
            failed = _wait(procs)
        except BaseException:
            _stop(procs)
            raise
        if failed is not None:
            errors = sorted(Path(tmp).glob("error-*.txt"))
            if errors:
                raise RecsysError(errors[0].read_text())
            raise RuntimeError(f"training process {failed} of {nproc} failed (exit status {procs[failed].returncode}); "
                               "its error is printed above")
        with open(Path(tmp) / "result.pkl", "rb") as f:
            return pickle.load(f)


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((name for name in names if name in ("lo", "lo0")), None)


def _wait(procs: list[subprocess.Popen]) -> int | None:
    """Wait for every process; on the first failure stop the others and return its rank (None: all fine)."""
    while True:
        codes = [p.poll() for p in procs]
        bad = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if bad:
            _stop(procs)
            return bad[0]
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGTERM when the process that spawned it dies (even by SIGKILL); one that
    died before this line ran (this process's parent is no longer ``parent``) ends it here."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(143)


def _run_spawned(tmp: str, rank: int, world: int, device_type: str, threads: int, parent: int) -> int:
    _die_with_parent(parent)
    if device_type == "cpu":
        torch.set_num_threads(threads)
    with open(Path(tmp) / "task.pkl", "rb") as f:
        fn, args = pickle.load(f)
    try:
        join(rank, world, rank, torch.device(device_type), f"file://{tmp}/store")
        try:
            result = fn(*args)
        finally:
            leave()
    except RecsysError as err:
        Path(tmp, f"error-{rank:04d}.txt").write_text(str(err))
        return 2
    if rank == 0:
        with open(Path(tmp) / "result.pkl", "wb") as f:
            pickle.dump(result, f)
    return 0


if __name__ == "__main__":
    # Run as recsys_core.distributed, not as __main__: the group joined must be the one current() returns
    # to the code it runs (a second copy of this module would hold another _current).
    from recsys_core import distributed as _module

    # SIGTERM (from spawn's _stop, or PR_SET_PDEATHSIG when the parent died) keeps its default action: the
    # process ends at once, even inside a collective waiting for a process that is gone (a Python handler
    # would only run once that collective returned or timed out).
    sys.exit(_module._run_spawned(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
                                      int(sys.argv[6])))
