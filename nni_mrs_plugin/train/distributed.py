"""torch.distributed plumbing for ``fit``: one process per GPU (or per CPU worker with gloo) under ``torchrun``.

Data order is a function of (seed, epoch) alone, through ``DistributedSampler`` even in a single process: the
union of the ranks' batches at a step is then exactly the single-process batch, which is what makes a
2-process run match a 1-process run, and a resumed run match an uninterrupted one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..device import check_device

__all__ = ["Context", "init", "shard_train_loader", "shard_eval_loader", "all_sum", "gather_rng", "set_rng",
           "sync_buffers", "barrier", "wrap"]


@dataclass(frozen=True)
class Context:
    world_size: int
    rank: int
    local_rank: int
    device: torch.device
    started_here: bool  # this call created the process group and must destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: Optional[torch.device | str] = None) -> Context:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1), or the one the
    caller already started; otherwise a single process. Backend: nccl for CUDA, gloo for CPU."""
    device = check_device(device) if device is not None else None  # a bad name fails before a group is joined
    started = False
    wants_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
        started = True
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    local_rank = int(os.environ.get("LOCAL_RANK", rank if world > 1 else 0))
    if device is None:
        device = check_device(f"cuda:{local_rank}" if wants_cuda else "cpu")
    if device.type == "cuda":
        if device.index is None:
            device = check_device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    return Context(world, rank, local_rank, device, started)


def _loader_like(loader: DataLoader, dataset: Any, batch_size: int, **kwargs: Any) -> DataLoader:
    workers = loader.num_workers
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last, worker_init_fn=loader.worker_init_fn,
                      persistent_workers=loader.persistent_workers if workers > 0 else False, **kwargs)


def shard_train_loader(loader: DataLoader, ctx: Context, seed: int) -> Tuple[DataLoader, DistributedSampler]:
    """This rank's share of ``loader``: same dataset, batch size / world size, reshuffled every epoch from
    (seed, epoch) by ``DistributedSampler``; call ``sampler.set_epoch(epoch)`` before each epoch."""
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise ValueError("fit needs train_loader to be a torch DataLoader built with batch_size "
                         "(no custom batch_sampler): it reshards and reshuffles the dataset itself")
    if loader.batch_size % ctx.world_size:
        raise ValueError(f"the train batch size {loader.batch_size} is the global batch and must divide evenly "
                         f"among {ctx.world_size} processes")
    sampler = DistributedSampler(loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    return _loader_like(loader, loader.dataset, loader.batch_size // ctx.world_size, sampler=sampler), sampler


def shard_eval_loader(loader: DataLoader, ctx: Context, max_samples: Optional[int] = None) -> DataLoader:
    """Every world_size-th item of the first ``max_samples`` (no padding, so counts summed over ranks are exact)."""
    n = len(loader.dataset) if max_samples is None else min(len(loader.dataset), max_samples)
    if ctx.world_size == 1 and n == len(loader.dataset):
        return loader
    return _loader_like(loader, Subset(loader.dataset, range(ctx.rank, n, ctx.world_size)), loader.batch_size or 1)


def all_sum(values: Sequence[float], ctx: Context) -> List[float]:
    """Sum numbers over ranks (one all-reduce)."""
    if ctx.world_size == 1:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng(ctx: Context) -> List[Dict[str, torch.Tensor]]:
    """Every rank's RNG state, in rank order (all ranks must call it)."""
    state = _rng_state(ctx.device)
    if ctx.world_size == 1:
        return [state]
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, {k: v.cpu() for k, v in state.items()})
    return gathered


def set_rng(states: List[Dict[str, torch.Tensor]], ctx: Context) -> bool:
    """Restore this rank's RNG from ``gather_rng``'s list; False if the world size changed (nothing restored)."""
    if len(states) != ctx.world_size:
        return False
    # both setters take CPU byte tensors; a checkpoint loaded with map_location=cuda holds them on the GPU
    torch.set_rng_state(states[ctx.rank]["cpu"].cpu())
    if ctx.device.type == "cuda" and "cuda" in states[ctx.rank]:
        torch.cuda.set_rng_state(states[ctx.rank]["cuda"].cpu(), ctx.device)
    return True


def sync_buffers(model: nn.Module, ctx: Context) -> None:
    """Rank 0's buffers (BatchNorm running statistics) everywhere. DDP broadcasts them only at the start of a
    forward pass, so after an epoch each rank holds its own; validation and the saved model use rank 0's."""
    if ctx.world_size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel around ``model`` when there is more than one process."""
    if ctx.world_size == 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
