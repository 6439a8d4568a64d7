"""Zero-shot classifier heads: class names x templates -> one unit vector per class.

The head of class c is normalize(mean_t normalize(g(template_t(c)))): the L2-normalised text embeddings are
averaged over the templates and renormalised (CLIP / WiSE-FT / FLYP's `zeroshot.py` convention), which is what
open_clip's `build_zero_shot_classifier` computes. It is always built with the text tower of the model being
evaluated, so a fine-tuned model is scored with its own head.
"""

import contextlib
import hashlib
import json
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier

Template = Callable[[str], str]


def render_prompts(classnames: Sequence[str], templates: Sequence[Template]) -> List[str]:
    """Class-major list: [t0(c0), t1(c0), ..., t0(c1), ...]."""
    return [t(c) for c in classnames for t in templates]


@torch.no_grad()
def build_zeroshot_head(model, tokenizer, classnames: Sequence[str], templates: Sequence[Template],
                        device="cpu", batch_size: int = 256, autocast=contextlib.nullcontext,
                        progress: bool = False) -> torch.Tensor:
    """[D, C] float32 head from open_clip's build_zero_shot_classifier. `batch_size` prompts (rounded down to
    whole classes, at least one class) go through the text tower at a time, so memory stays O(batch)."""
    if not classnames:
        raise ValueError("no class names to build a head from")
    if not templates:
        raise ValueError("no templates to build a head from")
    with autocast():
        head = build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates),
                                          num_classes_per_batch=max(1, batch_size // len(templates)),
                                          device=device, use_tqdm=progress)
    return head.float().contiguous()


def zeroshot_logits(image_features: torch.Tensor, head: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """Scaled cosine logits [N, C] (the scale changes no metric; it keeps the logits CLIP's)."""
    return logit_scale * F.normalize(image_features.float(), dim=-1) @ head.to(image_features.device)


class HeadCache:
    """Heads of one model, keyed by the exact prompts: the 1000-class ImageNet head is built once and shared by
    ImageNet, -V2, -R, -A, -Sketch and ObjectNet. Make a new cache whenever the weights change."""

    def __init__(self):
        self._heads: Dict[str, torch.Tensor] = {}

    @staticmethod
    def key(classnames: Sequence[str], templates: Sequence[Template]) -> str:
        """The prompts grouped per class: one class with two prompts never shares a key with two classes of one."""
        per_class = [[t(c) for t in templates] for c in classnames]
        return hashlib.sha1(json.dumps(per_class).encode()).hexdigest()

    def get(self, model, tokenizer, classnames, templates, **kwargs) -> torch.Tensor:
        k = self.key(classnames, templates)
        if k not in self._heads:
            self._heads[k] = build_zeroshot_head(model, tokenizer, classnames, templates, **kwargs)
        return self._heads[k]
