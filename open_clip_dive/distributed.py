"""Collectives that work the same under torch.distributed (torchrun / srun) and Horovod."""

import torch
import torch.distributed as dist


def _horovod():
    import horovod.torch as hvd

    return hvd


def all_reduce_sum(tensor: torch.Tensor, world_size: int, use_horovod: bool) -> torch.Tensor:
    """Sum of `tensor` over all ranks (returned as a new tensor; the input is not modified)."""
    if world_size <= 1:
        return tensor.clone()
    if use_horovod:
        return _horovod().allreduce(tensor, op=_horovod().Sum)
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(flag: bool, world_size: int, use_horovod: bool, device) -> bool:
    """True on every rank when `flag` is True on at least one (used to agree on stopping)."""
    if world_size <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t, world_size, use_horovod).item() > 0)


def barrier(world_size: int, use_horovod: bool):
    if world_size <= 1:
        return
    if use_horovod:
        _horovod().join()
    else:
        dist.barrier()
