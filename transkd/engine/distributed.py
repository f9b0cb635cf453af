"""Multi-process training with ``torchrun``: process-group set-up, samplers and reductions.

One GPU (or CPU process) per rank; launch exactly as a single run, prefixed by ``torchrun``::

    torchrun --nproc_per_node 4 -m transkd distill --config configs/cityscapes/...yaml

Several machines: run the same command on every node with the rendezvous options, e.g. on each
of 2 nodes with 8 GPUs::

    torchrun --nnodes 2 --nproc_per_node 8 --node_rank <0|1> \\
             --rdzv_backend c10d --rdzv_endpoint <host-of-node-0>:29500 \\
             -m transkd distill --config ...

``train.batch_size`` is the batch *per process*; the global batch is batch_size × world size ×
``train.grad_accum``. The backend is NCCL on CUDA and gloo on the CPU. Only rank 0 prints,
logs and writes checkpoints; the validation confusion matrix is summed over all ranks.

DDP wraps the Distiller itself: its submodules are the student and the adapters, while the
teacher is hidden from ``nn.Module`` registration, so it is never broadcast or all-reduced and
stays frozen on each rank. BatchNorm statistics are per rank unless ``train.sync_bn`` converts
them to ``SyncBatchNorm`` (CUDA only in PyTorch).
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler, get_worker_info


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def elastic_restart() -> int:
    """How many times torchrun has restarted this job (``--max-restarts``); 0 on a first start.

    After a restart every process starts the same command again; a run then continues from its
    last checkpoint by itself, as ``--resume auto`` would."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); no-op otherwise."""
    world_size = env_world_size()
    if world_size <= 1:
        return DistEnv()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        timeout = datetime.timedelta(minutes=30)
        dist.init_process_group(backend=backend, store=_attempt_store(rank, world_size, timeout),
                                rank=rank, world_size=world_size, timeout=timeout)
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def _attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store of this start, its keys prefixed by torchrun's restart count.

    After a restart (``--max-restarts``) the processes of the new attempt could otherwise read
    the addresses the dead attempt published in the same store and fail to connect ("Connection
    refused"); a prefix per attempt keeps them apart. Under torchrun the agent hosts the store;
    launched by hand (``MASTER_ADDR``/``MASTER_PORT``) rank 0 hosts it, as ``env://`` does."""
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent_hosts and rank == 0, timeout=timeout)
    return dist.PrefixStore(f"transkd/attempt_{elastic_restart()}", store)


def cleanup_distributed(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def any_true(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps ranks in lock-step)."""
    if not env.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_ranks(values: dict[str, float], env: DistEnv, device: torch.device) -> dict[str, float]:
    """Average scalar logs over ranks (for logging only)."""
    if not env.enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: float(v) / env.world_size for k, v in zip(keys, tensor.tolist())}


def wrap_ddp(module: nn.Module, env: DistEnv, device: torch.device,
             find_unused_parameters: bool = False) -> nn.Module:
    """DDP over the trainable part (the Distiller: student + adapters; the teacher is hidden).

    Every built-in method uses all of its adapters in every step, so unused-parameter search is
    off by default (it costs a graph traversal per step). Buffers (BatchNorm running statistics) are
    broadcast from rank 0 at each forward, so every rank validates with the same statistics.
    """
    if not env.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=True,
                                   find_unused_parameters=find_unused_parameters)


class EpochSampler(Sampler[tuple[int, int]]):
    """Seeded per-epoch shuffle, sharded over ranks, that can start part-way into an epoch.

    Yields ``(epoch, index)`` pairs, so the dataset side knows the epoch of every sample even in
    persistent worker processes (see :class:`EpochIndexedDataset`). The permutation of epoch
    ``e`` depends only on ``(seed, e)``, like ``DistributedSampler``; indices are repeated to give
    every rank the same count. ``set_epoch(e, skip)`` starts ``skip`` samples in (exact resume).
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0
        self.per_rank = math.ceil(length / world_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.indices()[self.skip:]])

    def __len__(self) -> int:
        return self.per_rank - self.skip


class StreamSampler(Sampler[tuple[int, int]]):
    """A second data stream (unlabelled images) read alongside the epochs of the first.

    The stream runs through its own seeded per-epoch shuffles (an :class:`EpochSampler`: sharded
    over ranks, every rank the same count), one after another without end; ``set_window(start,
    count)`` makes the next iterator yield ``count`` ``(epoch, index)`` pairs from position
    ``start`` of this rank's stream. The trainer derives ``start`` from the labelled position
    alone (batches consumed × images per batch), so a resumed run reads exactly the images the
    uninterrupted one would have, with no extra state in the checkpoint.
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.epochs = EpochSampler(length, seed, rank, world_size)
        self.start = 0
        self.count = 0

    @property
    def per_rank(self) -> int:
        return self.epochs.per_rank

    def set_window(self, start: int, count: int) -> None:
        self.start, self.count = start, count

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_rank = self.epochs.per_rank
        position, end = self.start, self.start + self.count
        while position < end:
            epoch, offset = divmod(position, per_rank)
            self.epochs.set_epoch(epoch)
            indices = self.epochs.indices()[offset:offset + end - position]
            yield from ((epoch, i) for i in indices)
            position += len(indices)

    def __len__(self) -> int:
        return self.count


class EpochIndexedDataset(Dataset):
    """Takes ``(epoch, index)`` keys and sets the wrapped dataset's epoch before reading, so the
    per-sample augmentation seed ``[seed, epoch, index]`` is right in every worker process.

    Each worker also notes, in memory shared with the trainer, its pid and the sample it is
    reading, so a worker that dies (killed, out of memory, a crash in a decoder) can be named
    with the file it was reading (:meth:`reading`)."""

    MAX_WORKERS = 256

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        # [worker id] -> (pid, sample index or -1); shared with the worker processes.
        self.slots = torch.full((self.MAX_WORKERS, 2), -1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if self.dataset.epoch != epoch:
            self.dataset.set_epoch(epoch)
        worker = get_worker_info()
        slot = self.slots[worker.id] if worker is not None and worker.id < self.MAX_WORKERS else None
        if slot is not None:
            slot[0], slot[1] = os.getpid(), index
        sample = self.dataset[index]
        if slot is not None:
            slot[1] = -1
        return sample

    def reading(self, pids: set[int] | None = None) -> list[tuple[int, int, int]]:
        """``(worker id, pid, sample index)`` of the workers caught mid-read (of ``pids`` if given)."""
        return [(worker, int(pid), int(index)) for worker, (pid, index) in enumerate(self.slots.tolist())
                if index >= 0 and (pids is None or pid in pids)]


class ShardSampler(Sampler[int]):
    """Every sample exactly once over all ranks (rank r takes r, r+W, ...): for evaluation,
    where padding would count duplicated pixels in the confusion matrix."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
