"""WiSE-FT: theta_a = (1 - a) * theta_pre + a * theta_ft for every floating-point tensor (both towers, the
logit scale, everything), evaluated along a sweep of a. The form (1 - a) * p + a * f is exact at the ends:
a = 0 gives theta_pre and a = 1 gives theta_ft bit for bit."""

import math
from typing import Dict, List

import torch

from ..errors import DiveUsageError

GRID_TOLERANCE = 1e-9  # in steps: 0.3 / 0.1 = 2.9999999999999996 is the grid point 3
MAX_POINTS = 1001


def parse_alphas(text: str) -> List[float]:
    """'0,0.25,1' or 'START:STOP:STEP': START, START + STEP, ... up to STOP, which is included when it falls on the
    grid (0:1:0.1 -> 0.0, 0.1, ..., 1.0; 0:1:0.6 -> 0.0, 0.6; 0:0.5:0.3 -> 0.0, 0.3)."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = min(math.floor((stop - start) / step + GRID_TOLERANCE) + 1, MAX_POINTS + 1)
            alphas = [round(start + i * step, 10) for i in range(count)]
        else:
            alphas = [float(x) for x in text.split(",") if x.strip()]
    except (ValueError, OverflowError):
        raise DiveUsageError(f"--wise-ft '{text}': expected a comma list (0,0.5,1) or START:STOP:STEP with STEP > 0 and "
                             "STOP >= START (0:1:0.1)") from None
    if len(alphas) > MAX_POINTS:
        raise DiveUsageError(f"--wise-ft '{text}': more than {MAX_POINTS} alphas (each is a full evaluation)")
    if not alphas or any(not 0 <= a <= 1 for a in alphas):  # also refuses nan
        raise DiveUsageError(f"--wise-ft '{text}': every alpha must lie in [0, 1]")
    return sorted(set(alphas))


def interpolate_state_dicts(pre: Dict[str, torch.Tensor], ft: Dict[str, torch.Tensor], alpha: float) -> Dict[str, torch.Tensor]:
    if set(pre) != set(ft):
        extra, missing = sorted(set(ft) - set(pre)), sorted(set(pre) - set(ft))
        raise DiveUsageError(f"WiSE-FT needs two checkpoints of one architecture: keys only in the fine-tuned "
                             f"model {extra[:3]}, only in the pre-trained one {missing[:3]}")
    out = {}
    for key, p in pre.items():
        f = ft[key]
        if p.shape != f.shape:
            raise DiveUsageError(f"WiSE-FT: '{key}' has shape {tuple(f.shape)} in the fine-tuned model and "
                                 f"{tuple(p.shape)} in the pre-trained one")
        if p.is_floating_point():
            out[key] = (1.0 - alpha) * p + alpha * f.to(p.dtype)
        else:  # integer buffers (e.g. token ids, masks) are not weights: keep the fine-tuned copy
            out[key] = f.clone()
    return out


def snapshot(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A CPU copy of the weights, unaffected by later load_state_dict calls on the model."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
