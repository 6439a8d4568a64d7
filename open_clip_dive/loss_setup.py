"""What a registry loss declares about the model, applied to the freshly built (pre-trained) model before
open_clip_train.main builds its optimizer, wraps DDP and resumes:

- `init_from_model(model, tokenizer)`: the loss builds what it needs from the pre-trained model (the zero-shot
  classification head, CAR-FT's context prompts);
- `image_tower_only`: everything but `model.visual` is frozen (requires_grad False), so the text tower and the
  logit scale are neither in the optimizer nor expected by DDP to get gradients;
- the loss's own parameters (a classification head) are registered on the model under `dive_loss_params`, shared,
  not copied. open_clip's optimizer therefore takes them with its own weight-decay rule (decay on the head's
  weight, none on its bias), DDP and Horovod average their gradients, and `--resume` restores their optimizer
  state exactly. The model's state_dict leaves them out, so checkpoints stay loadable by
  `open_clip.create_model_and_transforms(pretrained=ckpt)`; their values are saved with the loss state
  (checkpoint['dive']['loss_state']) and restored from it.
"""

import open_clip
from torch import nn

from .losses import image_tower_only

ATTR = "dive_loss_params"


def _owned(key: str) -> bool:
    return f".{ATTR}." in f".{key}"


def _drop_from_state_dict(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if _owned(k[len(prefix):]) and k.startswith(prefix)]:
        del state_dict[key]


def _ignore_missing(module, incompatible_keys):
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if not _owned(k)]


def attach_loss_parameters(model: nn.Module, loss: nn.Module) -> int:
    """Register the loss's parameters on the model (outside its state_dict); returns how many tensors."""
    named = list(loss.named_parameters())
    if not named:
        return 0
    holder = nn.Module()
    for name, param in named:
        holder.register_parameter(name.replace(".", "_"), param)  # e.g. head_weight, head_bias
    model.add_module(ATTR, holder)
    model.register_state_dict_post_hook(_drop_from_state_dict)
    model.register_load_state_dict_post_hook(_ignore_missing)
    return len(named)


def freeze_all_but_image_tower(model: nn.Module) -> int:
    frozen = 0
    for name, param in model.named_parameters():
        if not name.startswith("visual."):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def prepare_loss(loss: nn.Module, model: nn.Module, args):
    """Apply the loss's declarations to the pre-trained model (see the module docstring)."""
    init = getattr(loss, "init_from_model", None)
    if init is not None:
        tokenizer = open_clip.get_tokenizer(args.model, cache_dir=args.cache_dir,
                                            context_length=args.force_context_length)
        init(model, tokenizer)
    if image_tower_only(loss):
        freeze_all_but_image_tower(model)
    return attach_loss_parameters(model, loss)
