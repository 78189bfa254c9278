"""One avatar on several GPUs (or CPU processes): Lightning's DDP strategy, with the gradient all-reduce
done by us instead of torch's ``DistributedDataParallel`` wrapper.

Why not the wrapper: DDP registers the parameters once, in buckets, when it wraps the module; densify /
prune replaces the Gaussians' ``nn.Parameter`` s by new ones of another length, which the wrapper cannot
follow. So :class:`GaussianDDPStrategy` keeps everything else of Lightning's DDP (process launch, the
process group, rank-0-only checkpoints and logs, barriers) and the system calls :func:`average_gradients`
after each backward: one flat all-reduce of every parameter gradient plus the screen-space densify
statistics. Every rank then steps Adam on the same numbers and takes the same densify decision, so the
replicas stay bitwise identical; :func:`replica_checksums` checks that at every densify event.

Ranks before the process group exists (launch.py decides who creates the trial directory) come from
the environment variables that Lightning's launcher, ``torchrun`` and SLURM set.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy

from threestudio.utils.errors import UserError

TRIAL_DIR_ENV = "GIP_TRIAL_DIR"
"""launch.py on rank 0 puts the trial directory here; the ranks Lightning starts inherit it."""


def launch_rank() -> int:
    """Global rank of this process as its launcher set it in the environment (0 when not distributed):
    ``RANK`` (torchrun), ``SLURM_PROCID`` (srun with more than one task), else
    ``NODE_RANK`` × ``LOCAL_WORLD_SIZE`` + ``LOCAL_RANK`` (Lightning's launcher; only 0 matters here)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    return int(env.get("NODE_RANK", "0")) * int(env.get("LOCAL_WORLD_SIZE", "1")) + int(env.get("LOCAL_RANK", "0"))


def is_initialized() -> bool:
    """Whether a default ``torch.distributed`` process group exists (Lightning made one)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the default process group (1 when there is none)."""
    return dist.get_world_size() if is_initialized() else 1


def check_split(views_per_step: int, processes: int, key: str) -> None:
    """The global batch (the paper's views per step) is split evenly over the processes.

    Raises:
        UserError: ``views_per_step`` is not a multiple of ``processes``.
    """
    if processes < 1 or views_per_step % processes:
        raise UserError(
            f"{key}={views_per_step} views per step cannot be split evenly over {processes} processes "
            f"(trainer.devices × trainer.num_nodes); use a device count that divides {views_per_step}"
        )


def rank_slice(views: int, rank: int, processes: int) -> slice:
    """The views of ``rank`` in a global batch of ``views`` (contiguous, equal shares; :func:`check_split`)."""
    check_split(views, processes, "views per step")
    share = views // processes
    return slice(rank * share, (rank + 1) * share)


def rank_share(trainer, views: int) -> slice:
    """The share of ``trainer``'s rank in a global batch of ``views`` (:func:`rank_slice`); all of the
    views without a trainer (a data module used on its own).

    Raises:
        UserError: ``views`` is not a multiple of the trainer's world size.
    """
    return slice(None) if trainer is None else rank_slice(views, trainer.global_rank, trainer.world_size)


@torch.no_grad()
def average_gradients(params: list[torch.Tensor], extra: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mean over all ranks of every parameter's ``.grad`` and of the ``extra`` tensors, in one all-reduce
    (no host synchronisation).

    Every rank must call it with parameters and tensors of the same shapes, in the same order. A
    parameter without a gradient on this rank gets a zero one before the reduction (in this project
    every trained tensor takes part in every render, so that only happens to empty tensors). The
    gradients are replaced in place; returns the averaged ``extra`` tensors (float32, shapes kept).
    """
    n = world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1).float() for p in params] + [e.reshape(-1).float() for e in extra])
    dist.all_reduce(flat)  # SUM: the reduction every backend (gloo, NCCL) has
    flat /= n
    i = 0
    for p in params:
        p.grad.copy_(flat[i : i + p.numel()].view_as(p))
        i += p.numel()
    out = []
    for e in extra:
        out.append(flat[i : i + e.numel()].view(e.shape))
        i += e.numel()
    return out


@torch.no_grad()
def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``x`` over all ranks (a new tensor)."""
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    return y


@torch.no_grad()
def checksum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A cheap fingerprint of ``tensors``: per tensor its element count, sum and a position-weighted sum
    (so that a permutation changes it), in float64 [3 × len(tensors)]. Bitwise equal tensors give
    bitwise equal checksums."""
    out = []
    for t in tensors:
        x = t.detach().reshape(-1).double()
        w = torch.cos(torch.arange(x.numel(), device=x.device, dtype=torch.float64))
        out += [torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device), x.sum(), (x * w).sum()]
    return torch.stack(out)


@torch.no_grad()
def replica_checksums(tensors: list[torch.Tensor]) -> list[str]:
    """:func:`checksum` of ``tensors`` on every rank (collective), as hex strings in rank order.
    Equal strings mean the replicas hold the same parameters."""
    c = checksum(tensors)
    if not is_initialized():
        return [_hex(c)]
    everyone = [torch.empty_like(c) for _ in range(world_size())]
    dist.all_gather(everyone, c)
    return [_hex(x) for x in everyone]


def _hex(c: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha1(c.cpu().numpy().tobytes()).hexdigest()[:16]


class GaussianDDPStrategy(DDPStrategy):
    """Lightning's DDP strategy (one process per device; ``torch.distributed`` with NCCL on GPUs, gloo
    on CPUs) without the ``DistributedDataParallel`` module wrapper, whose parameter buckets cannot follow
    densification (see the module docstring). The LightningModule averages its gradients itself
    (:func:`average_gradients`). Checkpoints, loggers and progress bars stay rank-0 as in Lightning."""

    strategy_name = "gaussian_ddp"

    def configure_ddp(self) -> None:
        """Keep the module unwrapped (gradients are averaged by the system after each backward)."""
