"""Running under ``torchrun``: the process group, rank helpers and error agreement.

``torchrun --nproc-per-node N -m nctune …`` starts N copies of the command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`process_group`
reads them, initialises ``torch.distributed`` (NCCL on CUDA, gloo on CPU) and tears it down
on every exit path. Without those variables nothing is initialised and every helper here
is the identity of a one-process run, so a plain ``nctune …`` behaves exactly as before.

**No rank is left waiting.** A rank that fails (bad input, a corrupt image in its shard,
out of memory) cannot simply exit: its peers would wait in their next collective until the
group's timeout. Instead every collective of this module starts with a one-integer
all-reduce of an error flag (:func:`_flag`), and the failing rank, on its way out of
:func:`process_group`, sends that same flag set. The
peers' next collective therefore sees it, every rank exchanges the first failure's message
and exit code, and every rank raises — the failing one its own error, the others a
:class:`PeerFailure` with the same one-line message and exit code. The rule that keeps this
sound: between two of this module's calls a rank runs no other collective but DDP's, and
the trainer calls :func:`check` after each forward pass, before DDP's gradient all-reduce.

A crash *inside* such a foreign collective (out of memory in the backward pass) cannot be
announced; then ``torchrun`` stops the other workers when the failed one exits, and the
process group's timeout (``NCTUNE_DIST_TIMEOUT`` seconds, default 1800) bounds the wait.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Subset

from nctune.collapse import CollapseStats, all_reduce_stats
from nctune.errors import ConfigError, NctuneError, one_line

T = TypeVar("T")

#: Environment variable: the process group's timeout in seconds (a hung collective's limit).
TIMEOUT_ENV = "NCTUNE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0

#: Set while :func:`local` runs: collectives and sharding act as in a one-process run.
_local_depth = 0
#: Set once the ranks have agreed on a failure: no further agreement is sent (the peers
#: are on their way out), whatever exception carries the failure on from there.
_failed = False


@dataclass(frozen=True)
class DistEnv:
    """What torchrun told this process.

    Attributes:
        rank: global rank, 0 … world_size − 1.
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


class PeerFailure(NctuneError):
    """Another rank failed; this rank stops with the same message and exit code.

    Attributes:
        code: the exit code the failing rank ends with (2 bad input, 1 internal error,
            130 interrupted).
        rank: the failing rank.
    """

    def __init__(self, message: str, code: int, rank: int) -> None:
        super().__init__(message)
        self.code, self.rank = code, rank


def read_env(environ: dict[str, str] | None = None) -> DistEnv | None:
    """The torchrun variables, or None when this process was not started by a launcher.

    Args:
        environ: the environment (default ``os.environ``).

    Returns:
        A :class:`DistEnv` when ``WORLD_SIZE`` is set, else None.

    Raises:
        ConfigError: a variable is set but not a valid integer, or ``RANK`` is out of range.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(
            "RANK / WORLD_SIZE / LOCAL_RANK must be integers (start nctune with torchrun)"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}; start nctune with torchrun")
    return DistEnv(rank, world, local)


def _active() -> bool:
    return _local_depth == 0 and dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the group (1 outside torchrun or inside :func:`local`)."""
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank (0 outside torchrun or inside :func:`local`)."""
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    """True on the rank that prints and writes (rank 0; always True in one process)."""
    return rank() == 0


def is_distributed() -> bool:
    """True when collectives reach more than this process."""
    return world_size() > 1


def local_device(device: torch.device) -> torch.device:
    """``cuda`` (no index) → ``cuda:LOCAL_RANK`` under torchrun: one GPU per process.

    Args:
        device: the resolved recipe device.

    Returns:
        The device this rank should use.
    """
    env = read_env()
    if env is not None and env.world_size > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
    return device


@contextmanager
def process_group(device: str = "auto") -> Iterator[DistEnv]:
    """Initialise ``torch.distributed`` from torchrun's variables for the ``with`` body.

    Without torchrun (no ``WORLD_SIZE``, or a world of one) nothing is initialised. Otherwise
    the backend is NCCL when CUDA is available and ``device`` is not ``cpu``, else gloo; the
    current CUDA device becomes ``cuda:LOCAL_RANK``. On exit — normal, error or Ctrl-C —
    the ranks agree on the outcome (see the module docstring) and the group is destroyed.

    Args:
        device: the recipe's device string (``cpu`` forces gloo).

    Yields:
        This process's :class:`DistEnv`.

    Raises:
        PeerFailure: another rank failed; this one ends with its message and exit code.
    """
    env = read_env()
    if env is None or env.world_size == 1 or dist.is_initialized():
        yield env or DistEnv()
        return
    use_cuda = torch.cuda.is_available() and not str(device).startswith(("cpu", "mps"))
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    try:
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds") from None
    # CPU tensors (the error flags, a CPU run's statistics) go through gloo, CUDA tensors
    # through NCCL: one group serves a recipe on either device.
    dist.init_process_group(
        "cpu:gloo,cuda:nccl" if use_cuda else "gloo",
        timeout=datetime.timedelta(seconds=timeout),
    )
    global _failed
    _failed = False
    try:
        try:
            yield env
        except BaseException as err:
            if not _failed:
                _agree(err)
            raise
        _agree(None)  # a late failure on another rank must end this one too
    finally:
        # A DDP wrapper left in a reference cycle keeps the group (and gloo's threads)
        # alive past destroy_process_group; freed at interpreter exit instead, those threads
        # can abort the process (seen once: "terminate called without an active exception").
        gc.collect()
        dist.destroy_process_group()


@contextmanager
def local() -> Iterator[None]:
    """Within the body every helper acts as in a one-process run (e.g. a sweep's own runs).

    Yields:
        Nothing.
    """
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


# ----------------------------------------------------------------- error agreement
def exit_code(err: BaseException) -> int:
    """The CLI's exit code for ``err``: 2 bad input, 130 interrupted, 1 anything else."""
    if isinstance(err, PeerFailure):
        return err.code
    if isinstance(err, NctuneError):
        return 2
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, SystemExit):
        return err.code if isinstance(err.code, int) else 1
    code = getattr(err, "exit_code", None)  # the CLI's own typer.Exit(code)
    return code if isinstance(code, int) else 1


def _flag_device() -> torch.device:
    # CPU tensors go through gloo; only a pure NCCL group (a user's own) needs CUDA ones
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _flag(value: int) -> int:
    """All-reduce (MAX) one integer: the preamble of every collective here."""
    t = torch.tensor([value], dtype=torch.int64, device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _agree(err: BaseException | None, value: int = 0) -> int:
    """Send this rank's error flag (or ``value`` when fine); raise if any rank failed.

    Returns the all-reduced ``value`` when no rank failed.
    """
    failed = _flag(_FAILED if err is not None else value)
    if failed != _FAILED:
        return failed
    mine = None
    if err is not None:
        mine = (dist.get_rank(), exit_code(err), one_line(err))
    reports: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, mine)
    first = next(r for r in reports if r is not None)
    global _failed
    _failed = True
    if err is not None:
        raise err
    raise PeerFailure(first[2], first[1], first[0])


_FAILED = 1 << 62  # larger than any value a caller all-reduces with _agree


def check() -> None:
    """A phase boundary: return when every rank got here fine, raise when one failed."""
    if _active():
        _agree(None)


# ------------------------------------------------------------------- collectives
def all_reduce_sum(*values: float | int) -> list[float]:
    """Sums of ``values`` over all ranks (float64; integers stay exact below 2⁵³).

    Args:
        values: this rank's numbers.

    Returns:
        The sums, in order (``values`` as floats in one process).
    """
    if not _active():
        return [float(v) for v in values]
    _agree(None)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_flag_device())
    dist.all_reduce(t)
    return t.tolist()


def reduce_stats(stats: CollapseStats | None) -> CollapseStats | None:
    """:func:`~nctune.collapse.all_reduce_stats` behind the error agreement.

    Args:
        stats: this rank's statistics (None: not tracked; then None on every rank).

    Returns:
        ``stats`` holding the union of every rank's samples.

    Raises:
        CollapseError: some rank saw no sample (on every rank: fewer samples than ranks).
    """
    if stats is None or not _active():
        return stats
    _agree(None)
    return all_reduce_stats(stats)


def any_rank(poll: Callable[[], bool] | None) -> bool:
    """Whether ``poll()`` is True on any rank (a stop request seen by one stops all).

    Args:
        poll: e.g. the CLI's stop flag; None means never.

    Returns:
        The agreed answer (``poll()`` itself in one process).
    """
    if poll is None:
        return False
    asked = bool(poll())
    return bool(all_reduce_sum(asked)[0]) if _active() else asked


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order (``[obj]`` in one process)."""
    if not _active():
        return [obj]
    _agree(None)
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, in place."""
    if not _active():
        return
    _agree(None)
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def shard(n: int) -> range:
    """This rank's indices of ``range(n)``: ``rank, rank + W, …`` — no padding, no overlap.

    Every sample is seen by exactly one rank, so sums over shards equal the
    one-process sums; the shards differ in size by at most one.

    Args:
        n: dataset size.

    Returns:
        The indices (``range(n)`` in one process).
    """
    return range(rank(), n, world_size())


def shard_dataset(dataset: Any) -> Any:
    """This rank's :func:`shard` of a map-style dataset (the dataset itself in one process).

    Args:
        dataset: anything with ``__len__`` and ``__getitem__``.

    Returns:
        ``dataset``, or a :class:`torch.utils.data.Subset` of it.
    """
    if not is_distributed():
        return dataset
    return Subset(dataset, shard(len(dataset)))


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` over the trainable parameters of ``module`` only.

    Frozen parameters are left out of DDP's buckets and its start-up broadcast
    (``_set_params_and_buffers_to_ignore_for_model``), so SCL, linear and LoRA runs neither
    all-reduce nor broadcast the frozen backbone. Buffers are not broadcast each step
    (``broadcast_buffers=False``); :func:`broadcast_buffers` makes them rank 0's before
    each evaluation, which is what a broadcast before every step would leave as well.

    Args:
        module: the model to train (already on ``device``).
        device: this rank's device.

    Returns:
        The DDP wrapper (``module`` itself in one process).
    """
    if not _active():
        return module
    _agree(None)
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    frozen += [n for n, _ in module.named_buffers()]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=ids,
        broadcast_buffers=False,
    )
