"""Data-parallel training and extraction under torchrun (or srun): one process per device.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (with MASTER_ADDR and MASTER_PORT); under SLURM's
srun without torchrun, SLURM_PROCID, SLURM_LOCALID and SLURM_NTASKS stand in for them once
MASTER_ADDR is set. With a world of one process, nothing here communicates and every helper is
the identity, so the training code has one path.

The backend is NCCL on CUDA and gloo on CPU. Each process uses cuda:LOCAL_RANK when CUDA is there.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional  # noqa: F401
# Imported before any process group exists, on purpose: this module binds `group=group.WORLD` as
# default arguments, so importing it later (transformers does, through torch.distributed.fsdp) pins
# the default group forever. A pinned gloo group outlives destroy_process_group, and its worker
# threads can then release a finished broadcast's tensors during interpreter shutdown, which aborts
# the process ("terminate called without an active exception") after the job has succeeded.

from geovario.backbones import resolve_device
from geovario.errors import GeovarioError
from geovario.machine import environment_number

# Long enough for rank 0 to fit the initial variogram on millions of features while the others wait.
TIMEOUT_MINUTES = 60.0  # $GEOVARIO_DIST_TIMEOUT_MIN overrides it


def launch_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's variables, else SLURM's, else a single process; a variable
    that is not a count is one line naming it."""
    env = os.environ

    def count(name: str, default: int, minimum: int = 0) -> int:
        return environment_number(name, default, f"a whole number of at least {minimum} (it is set by torchrun or srun)",
                                  minimum=minimum)

    if "RANK" in env and "WORLD_SIZE" in env:
        rank, local, world = count("RANK", 0), count("LOCAL_RANK", 0), count("WORLD_SIZE", 1, minimum=1)
        names = ("RANK", "WORLD_SIZE")
    elif "SLURM_PROCID" in env and "MASTER_ADDR" in env and count("SLURM_NTASKS", 1, minimum=1) > 1:
        rank, local, world = count("SLURM_PROCID", 0), count("SLURM_LOCALID", 0), count("SLURM_NTASKS", 1, minimum=1)
        names = ("SLURM_PROCID", "SLURM_NTASKS")
    else:
        return 0, 0, 1
    if rank >= world:
        raise GeovarioError(f"{names[0]}={rank} is not below {names[1]}={world}: a process's rank counts from 0")
    return rank, local, world


def is_main_process() -> bool:
    return (dist.get_rank() if dist.is_initialized() else launch_env()[0]) == 0


@dataclass
class Dist:
    """This process's place in the job, and the collectives the training loop uses."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_rows(self, global_batch: int) -> slice:
        """This rank's rows of a global batch: rank r holds rows [r * b, (r + 1) * b)."""
        b = global_batch // self.world_size
        return slice(self.rank * b, (self.rank + 1) * b)

    def share(self, n: int) -> slice:
        """This rank's share of n items cut into equal contiguous shares of ceil(n / W).

        Only the last non-empty share can be short, so gathering the shares padded to full length
        and keeping the first n rows rebuilds the n items in order.
        """
        size = -(-n // self.world_size)
        return slice(self.rank * size, (self.rank + 1) * size)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows in rank order, without gradient (GPS, frozen features)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_with_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows in rank order; the gradient of each part flows back to its rank.

        torch's autograd-aware all-gather sums, in backward, what every rank's loss sends to each
        part. DDP then averages parameter gradients over ranks, which together give exactly the
        gradient of the single-process loss on the whole global batch.
        """
        if not self.enabled:
            return tensor
        return _AllGatherWithGrad.apply(tensor.contiguous(), self.world_size)

    def all_reduce_sum(self, array: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return array
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()

    def mean(self, value: float) -> float:
        return float(self.all_reduce_sum(np.array([value]))[0]) / self.world_size

    def broadcast(self, obj):
        """Rank 0's ``obj`` (any picklable value produced by this code) on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _device(name: str, local_rank: int) -> torch.device:
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join the process group the launcher describes (once per process) and pick this rank's device."""
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
        return Dist(rank, local, world), _device(device_name, local)
    rank, local, world = launch_env()
    device = _device(device_name, local)
    if world == 1:
        return Dist(), device
    if "MASTER_ADDR" not in os.environ:
        raise GeovarioError(f"WORLD_SIZE={world} but MASTER_ADDR is not set; launch with torchrun (see docs/distributed.md)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    minutes = environment_number("GEOVARIO_DIST_TIMEOUT_MIN", TIMEOUT_MINUTES, "minutes a collective may wait (more than 0)", kind=float,
                                 minimum=1e-3)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=minutes))
    return Dist(rank, local, world), device


def teardown() -> bool:
    """Leave the process group once every rank is done with it; True when the group is freed.

    Freed means its communication threads have been joined, so nothing of torch.distributed is
    left running when the interpreter shuts down.
    """
    if not dist.is_initialized():
        return True
    group = weakref.ref(dist.group.WORLD)
    dist.barrier()  # no rank tears down while a peer is still inside a collective
    dist.destroy_process_group()
    return group() is None


class DistributedBatchSampler:
    """Global batches cut from one seeded permutation per epoch; each rank reads its rows of them.

    Unlike torch's ``DistributedSampler``, which deals indices out round-robin, rank r reads the
    contiguous rows [r * b, (r + 1) * b) of the global batch. Gathering the ranks' rows in rank order
    therefore rebuilds exactly the batch, in the order, one process would take; with per-sample
    randomness drawn for the global batch too, W processes follow the single-process run.
    """

    def __init__(self, n_samples: int, global_batch: int, seed: int, world: Dist):
        if global_batch % world.world_size:
            raise GeovarioError(f"config key train.batch_size: the global batch {global_batch} must be divisible by "
                                f"the {world.world_size} processes")
        self.n, self.global_batch, self.seed, self.world = n_samples, global_batch, seed, world
        self.steps_per_epoch = n_samples // global_batch  # the last partial batch is dropped
        self._orders: dict[int, torch.Tensor] = {}

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            # Two epochs kept: the store's read-ahead asks for the next epoch's first steps before the last of this one.
            self._orders = {e: order for e, order in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = torch.randperm(self.n, generator=generator)
        return self._orders[epoch]

    def batch(self, step: int) -> tuple[np.ndarray, slice]:
        """(the global batch's sample indices, this rank's rows of it) for a step counted from 0."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        b = self.global_batch
        return order[position * b : (position + 1) * b].numpy(), self.world.local_rows(b)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums, over ranks, the gradient each rank's loss sends to this rank's rows.

    What ``torch.distributed.nn.all_gather`` does; that one and ``all_gather_into_tensor`` print a
    FutureWarning on every rank under torch 2.13. The backward is an all-reduce and a slice, which gloo
    and NCCL both support.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, world_size: int) -> torch.Tensor:
        ctx.rows = len(tensor)
        gathered = torch.empty((world_size * len(tensor), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        dist.all_gather_single(gathered, tensor)
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank = dist.get_rank()
        return grad[rank * ctx.rows : (rank + 1) * ctx.rows], None
