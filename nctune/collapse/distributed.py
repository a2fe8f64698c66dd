"""Summing :class:`CollapseStats` across ``torch.distributed`` processes."""

from __future__ import annotations

import torch
import torch.distributed as dist

from nctune.collapse.stats import CollapseStats
from nctune.errors import CollapseError


def all_reduce_stats(stats: CollapseStats, group: dist.ProcessGroup | None = None) -> CollapseStats:
    """Sum the state of ``stats`` over every process of ``group``, in place.

    Afterwards each process holds the statistics of the union of all processes' samples,
    so :meth:`CollapseStats.compute` returns exactly the single-process numbers. First-pass
    sums are re-expressed around the first rank's shift before the sum (the sums are
    additive only around a common shift). Call it after each pass in two-pass mode, before
    :meth:`CollapseStats.next_pass`, so every process freezes the same means.

    Every process must have seen at least one batch (so the width is known). With the
    NCCL backend the state must live on the process's CUDA device, which it does when the
    features came from there.

    Args:
        stats: the local state; modified in place and returned.
        group: process group (default: the world).

    Returns:
        ``stats``, now holding the summed state.

    Raises:
        CollapseError: ``torch.distributed`` is not initialised, or some process has no
            samples (raised on every process, so none is left waiting).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise CollapseError("all_reduce_stats needs an initialised torch.distributed group")
    # Agree first on whether every rank has data: a rank raising alone would leave the
    # others waiting in the next collective until the group's timeout.
    if stats.device is not None:
        flag_device = stats.device
    elif dist.get_backend(group) == "nccl":
        flag_device = torch.device("cuda", torch.cuda.current_device())
    else:
        flag_device = torch.device("cpu")
    has_data = torch.tensor([0 if stats.shift is None else 1], device=flag_device)
    dist.all_reduce(has_data, op=dist.ReduceOp.MIN, group=group)
    if not int(has_data.item()):
        raise CollapseError(
            "all_reduce_stats: a process has no samples; feed every rank at least one batch"
        )
    src = dist.get_global_rank(group, 0) if group is not None else 0
    if stats.pass_index == 1:
        shift = stats.shift.clone()
        dist.broadcast(shift, src=src, group=group)
        stats.rebase(shift)
        # the coarsest dtype any rank fed decides what counts as rounding noise
        eps = torch.tensor([stats._eps], dtype=torch.float64, device=flag_device)
        dist.all_reduce(eps, op=dist.ReduceOp.MAX, group=group)
        stats._eps = float(eps.item())
        s = stats._sums
        tensors = [s.counts, s.sums, s.sq_norms]
        if s.second_moment is not None:
            tensors.append(s.second_moment)
    else:
        tensors = [stats._proj_sq, stats._pass2_counts]
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return stats
