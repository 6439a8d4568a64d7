"""Fine-tuning with a classification head: `ce` (vanilla fine-tuning as WiSE-FT and FLYP define it) and `lp-ft`.

The head is linear on the L2-normalised image embedding f (what open_clip's forward returns): logits = W f + b,
WiSE-FT's `ClassificationHead(normalize=True)`. It starts from the zero-shot head, W = exp(logit_scale) * H^T and
b = 0, where the column H_c = normalize(mean_t normalize(g(template_t(c)))) is built exactly as the evaluator builds
its zero-shot heads (`evaluate.heads.build_zeroshot_head`, the training --classnames and --templates), so at
step 0 the head's logits are the zero-shot model's. `lp-ft` starts it instead from a linear probe's head
(`tools.linear_probe`, `--dive-head-init FILE`). Only the image tower and the head train (the text tower and the
logit scale are frozen): the loss declares `image_tower_only`.

The head is an ordinary parameter of the loss module: the glue hands it to open_clip's optimizer (open_clip's
weight-decay rule: decay on W, none on b) and saves it in `checkpoint['dive']['loss_state']` (never in the model's
state_dict, so checkpoints stay loadable by open_clip). Its extra state records the class names, which is how the
evaluator finds it (`find_head`) and knows which datasets share the training classes.
"""

import dataclasses
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiveUsageError

HEAD_KIND = "open_clip_dive.classifier_head"
HEAD_FILE_KEYS = ("weight", "bias", "classnames")


class ClassifierHead(nn.Module):
    """logits = W f + b on normalised features f; W [C, D], b [C]; remembers its class names."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, classnames: Sequence[str]):
        super().__init__()
        # contiguous: the zero-shot W is a transposed view, and Horovod's allreduce rejects non-contiguous gradients
        self.weight = nn.Parameter(weight.detach().float().clone(memory_format=torch.contiguous_format))
        self.bias = nn.Parameter(bias.detach().float().clone(memory_format=torch.contiguous_format))
        self.classnames = list(classnames)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features.to(self.weight.dtype), self.weight, self.bias)

    def get_extra_state(self):
        return {"kind": HEAD_KIND, "classnames": list(self.classnames)}

    def set_extra_state(self, state):
        self.classnames = list(state["classnames"])


@torch.no_grad()
def zeroshot_head(model, tokenizer, classnames, templates) -> ClassifierHead:
    """The zero-shot head as a ClassifierHead: W = exp(logit_scale) * H^T, b = 0 (model in eval mode, fp32)."""
    from ..evaluate.heads import build_zeroshot_head

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            head = build_zeroshot_head(model, tokenizer, classnames, templates, device=device)  # [D, C]
    finally:
        model.train(was_training)
    scale = model.logit_scale.detach().float().exp()
    weight = scale * head.t()
    return ClassifierHead(weight, torch.zeros(weight.shape[0], device=device), classnames)


# --- head files (tools.linear_probe writes them, --dive-head-init reads them) ------------------------------------
def save_head_file(path: str, weight: torch.Tensor, bias: torch.Tensor, classnames: Sequence[str], **meta):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"kind": HEAD_KIND, "weight": weight.detach().float().cpu(), "bias": bias.detach().float().cpu(),
                "classnames": list(classnames), **meta}, path)


def load_head_file(path: str, num_classes: Optional[int] = None, embed_dim: Optional[int] = None,
                   flag: str = "--dive-head-init") -> Dict[str, object]:
    """Read and check a head file: {weight [C, D], bias [C], classnames [C]}; one-line errors name the flag."""
    if not os.path.isfile(path):
        raise DiveUsageError(f"{flag}: '{path}' does not exist; write one with python -m open_clip_dive.tools.linear_probe")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DiveUsageError(f"{flag}: '{path}' is not a readable torch file ({type(e).__name__})") from None
    if not isinstance(data, dict) or any(k not in data for k in HEAD_FILE_KEYS):
        raise DiveUsageError(f"{flag}: '{path}' is not a head file (needs {', '.join(HEAD_FILE_KEYS)}); write one with "
                             "python -m open_clip_dive.tools.linear_probe")
    weight, bias = data["weight"], data["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(data["classnames"]) != weight.shape[0]:
        raise DiveUsageError(f"{flag}: '{path}' has weight {tuple(weight.shape)}, bias {tuple(bias.shape)} and "
                             f"{len(data['classnames'])} class names; expected [C, D], [C] and C names")
    if num_classes is not None and weight.shape[0] != num_classes:
        raise DiveUsageError(f"{flag}: '{path}' has {weight.shape[0]} classes but --classnames has {num_classes}; "
                             "probe with the same class list")
    if embed_dim is not None and weight.shape[1] != embed_dim:
        raise DiveUsageError(f"{flag}: '{path}' is for {weight.shape[1]}-d embeddings but --model embeds in "
                             f"{embed_dim} dimensions; probe with the same --model")
    return data


@dataclasses.dataclass
class TrainedHead:
    """A checkpoint's own head (what the evaluator scores datasets with the training classes on)."""

    weight: torch.Tensor
    bias: torch.Tensor
    classnames: List[str]


def find_head(loss_state: Optional[dict]) -> Optional[TrainedHead]:
    """The ClassifierHead in a saved loss state (checkpoint['dive']['loss_state']), or None."""
    for key, value in (loss_state or {}).items():
        if key.endswith("_extra_state") and isinstance(value, dict) and value.get("kind") == HEAD_KIND:
            prefix = key[: -len("_extra_state")]
            weight, bias = (loss_state[prefix + k].detach().float().cpu() for k in ("weight", "bias"))
            return TrainedHead(weight, bias, list(value["classnames"]))
    return None


def checkpoint_head(path: str) -> Optional[TrainedHead]:
    """The head saved with an open_clip_dive training checkpoint; None for other files."""
    if not path or not os.path.isfile(path):
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    dive = checkpoint.get("dive") if isinstance(checkpoint, dict) else None
    return find_head(dive.get("loss_state")) if isinstance(dive, dict) else None


# --- the loss ----------------------------------------------------------------------------------------------------
class CrossEntropyLoss(nn.Module):
    """Cross-entropy of the classification head on the ID images' class labels (`ce`; `lp-ft` from a probe's head).

    forward(image_features, labels, ...) -> {"ce_loss"}. The head is built by `init_from_model(model, tokenizer)`,
    which the glue calls on the freshly built (pre-trained) model, before the optimizer and --resume.
    """

    needs_labels = True  # the training step passes the ID batch's class indices as `labels`
    image_tower_only = True  # the text tower and logit scale are frozen; the model runs on images only
    in_batch_negatives = False  # per-sample terms: accumulation just averages the micro-batches
    frozen_batch = None

    def __init__(self, classnames: Sequence[str], templates, head_init: Optional[str] = None):
        super().__init__()
        self.classnames = list(classnames)
        self.templates = templates
        self.head_init = head_init
        self.head: Optional[ClassifierHead] = None
        self.scale: Optional[float] = None  # the pre-trained model's exp(logit_scale), for the regularisers

    def init_from_model(self, model, tokenizer):
        device = next(model.parameters()).device
        self.scale = float(model.logit_scale.detach().float().exp())
        if self.head_init:
            # the width is checked before the build from the model config where there is one; here from the tower
            data = load_head_file(self.head_init, len(self.classnames), getattr(model.visual, "output_dim", None))
            self.head = ClassifierHead(data["weight"], data["bias"], self.classnames).to(device)
        else:
            self.head = zeroshot_head(model, tokenizer, self.classnames, self.templates)

    def ce_losses(self, image_features, labels) -> Dict[str, torch.Tensor]:
        if self.head is None:
            raise RuntimeError("CrossEntropyLoss.init_from_model(model, tokenizer) was not called")
        logits = self.head(image_features)
        return {"ce_loss": F.cross_entropy(logits, labels.to(logits.device).long())}

    def forward(self, image_features, labels, output_dict=False, **_):
        losses = self.ce_losses(image_features, labels)
        return losses if output_dict else tuple(losses.values())
