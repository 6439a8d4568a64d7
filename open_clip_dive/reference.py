"""The frozen reference model: the pre-trained weights, in eval mode, without gradients, never DDP-wrapped."""

import copy
import logging

import torch
from torch import nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class FrozenReference(nn.Module):
    """Wraps the pre-trained model; `train()` keeps it in eval mode (BatchNorm statistics, dropout off)."""

    def __init__(self, model: nn.Module, precision: str = "fp32"):
        super().__init__()
        self.model = model
        self.dtype = PRECISIONS[precision]
        self.model.requires_grad_(False)
        self.model.to(self.dtype)  # also up: a copy of a --precision pure_bf16 model is fp32 by default
        self.model.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, images, texts, normalize: bool = True):
        """The frozen model's embeddings (`normalize=False`: its raw features, for --dive-space raw)."""
        param = next(self.model.parameters())
        images = images.to(device=param.device, dtype=self.dtype)
        texts = None if texts is None else texts.to(param.device)  # None: the image tower only
        # outside the trainer's autocast: the embeddings come in the precision chosen by --dive-ref-precision
        with torch.autocast(device_type=param.device.type, enabled=False):
            if not normalize:
                return self.model.encode_image(images), self.model.encode_text(texts)
            out = self.model(images, texts)
        if not isinstance(out, dict):
            out = {"image_features": out[0], "text_features": out[1]}
        return out["image_features"], out["text_features"]


def frozen_copy(model: nn.Module, precision: str = "fp32") -> FrozenReference:
    """Deep copy of the freshly built (pre-trained) model, taken before locking, DDP and --resume."""
    return FrozenReference(copy.deepcopy(model), precision)


def build_reference(args, create_model_and_transforms, device) -> FrozenReference:
    """The frozen model from --dive-ref-pretrained, built like the trainable one (same model flags)."""
    logging.info(f"Building the frozen reference model from --dive-ref-pretrained {args.dive_ref_pretrained}")
    model, _, _ = create_model_and_transforms(
        args.model,
        args.dive_ref_pretrained,
        precision=args.precision,
        device=device,
        force_quick_gelu=args.force_quick_gelu,
        force_custom_text=args.force_custom_text,
        force_patch_dropout=args.force_patch_dropout,
        force_image_size=args.force_image_size,
        force_context_length=args.force_context_length,
        pretrained_image=args.pretrained_image,
        output_dict=True,
        cache_dir=args.cache_dir,
    )
    return FrozenReference(model, args.dive_ref_precision)
