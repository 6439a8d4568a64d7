"""Non-finite numbers stop the run before they reach a checkpoint: a loss term that is nan/inf after a step, and
weights that are not finite when a checkpoint is about to be written (it would replace a good one)."""

import math

import torch

from .distributed import any_rank
from .errors import DiveRunError


def non_finite_terms(losses: dict) -> list:
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()]).cpu()
    return [f"{name} = {value:g}" for (name, _), value in zip(losses.items(), values.tolist())
            if not math.isfinite(value)]


def check_losses(losses: dict, epoch: int, step: int, args):
    """All ranks agree (one all-reduce): a rank that stops alone would leave the others waiting in a collective."""
    bad = non_finite_terms(losses)
    if any_rank(bool(bad), args.world_size, args.horovod, torch.device(args.device)):
        where = f"rank {args.rank}: {', '.join(bad)}" if bad else "another rank"
        raise DiveRunError(f"non-finite loss at epoch {epoch}, step {step} ({where}); stopped without saving "
                           "these weights (the last checkpoint is kept): lower --lr or the --dive-*-weight flags, "
                           "or try --precision fp32 / --grad-clip-norm")


def check_weights(state_dict: dict, path: str):
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise DiveRunError(f"weight '{name}' is not finite: not writing {path} (the last good checkpoint is "
                               "kept); lower --lr or the --dive-*-weight flags")
