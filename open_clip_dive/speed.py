"""Speed paths that change no feature: convolutional image towers in channels-last memory format, token batches
cut after their last non-padding column where the text tower masks padding out, and (--dive-fused-adamw)
torch's fused AdamW kernel for open_clip's AdamW.

On the default model (EfficientNet-Lite0 at 96 px + MiniLM-L6, 32 tokens, class prompts of about 12) on one
CPU core, a FLYP step of 16 spent about 40% in the text tower's padding columns, its convolutions run ~1.5x
faster channels-last, and the fused kernel steps AdamW ~4x faster than torch's per-tensor loop
(benchmarks/speed_paths.py measures the three side by side).
"""

from typing import Optional

import torch
from torch import nn


def channels_last_image_tower(model: nn.Module) -> bool:
    """Put a convolutional image tower in channels-last format (the layout oneDNN and cuDNN convolve fastest);
    True if it was. A ViT's only convolution is its patch embedding: nothing to gain, so it is left alone."""
    visual = getattr(model, "visual", None)
    if visual is None or sum(isinstance(m, nn.Conv2d) for m in visual.modules()) < 2:
        return False
    visual.to(memory_format=torch.channels_last)
    return True


def has_channels_last_images(model: nn.Module) -> bool:
    """Whether the image tower's convolutions are channels-last (then its inputs should be too)."""
    # a 1x1 kernel is contiguous in both formats: look at the first larger one
    conv = next((m for m in getattr(model, "visual", nn.Module()).modules()
                 if isinstance(m, nn.Conv2d) and m.weight.shape[-2:].numel() > 1), None)
    return conv is not None and not conv.weight.is_contiguous() and \
        conv.weight.is_contiguous(memory_format=torch.channels_last)


def channels_last(images: torch.Tensor) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images


def text_padding_id(model: nn.Module) -> Optional[int]:
    """The pad token id when cutting columns of padding off a token batch changes no text feature, else None.

    A Hugging Face text tower (open_clip's HFTextEncoder) masks pad tokens out of attention and pooling and
    numbers positions from the start, so trailing padding only costs time. open_clip's own text transformer
    adds a positional embedding of the full context length and must get it: None."""
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    if not isinstance(text, HFTextEncoder) or getattr(text, "output_tokens", False):
        return None  # token outputs (CoCa-style) would change shape
    return text.config.pad_token_id


def cut_padding(texts: Optional[torch.Tensor], pad_id: Optional[int]) -> Optional[torch.Tensor]:
    """`texts` without the columns that are padding in every row (pad_id None: unchanged)."""
    if texts is None or pad_id is None or texts.dim() != 2:
        return texts
    used = (texts != pad_id).any(0).nonzero()
    return texts[:, :int(used[-1]) + 1] if used.numel() else texts


def cutting_tokenizer(tokenizer, pad_id: Optional[int]):
    """The tokenizer, its batches cut after their longest text (for open_clip's build_zero_shot_classifier)."""
    if pad_id is None:
        return tokenizer
    return lambda texts, *a, **kw: cut_padding(tokenizer(texts, *a, **kw), pad_id)


def use_fused_kernel(optimizer) -> bool:
    """Switch a torch AdamW / Adam to its fused kernel in place (idempotent; also under Horovod's wrapper, a
    subclass). False, and unchanged, for another optimizer or parameters the kernel does not take."""
    if not isinstance(optimizer, (torch.optim.AdamW, torch.optim.Adam)):
        return False
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not all(p.is_floating_point() and p.device.type in devices for p in params):
        return False
    for group in optimizer.param_groups:
        group["foreach"], group["fused"] = False, True
    return True
