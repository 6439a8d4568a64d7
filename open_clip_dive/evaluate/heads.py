"""Zero-shot classifier heads: class names x templates -> one unit vector per class.

The head of class c is normalize(mean_t normalize(g(template_t(c)))): the L2-normalised text embeddings are
averaged over the templates and renormalised (CLIP / WiSE-FT / FLYP's `zeroshot.py` convention). It is always
built with the text tower of the model being evaluated, so a fine-tuned model is scored with its own head.
"""

import contextlib
import hashlib
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

Template = Callable[[str], str]


def render_prompts(classnames: Sequence[str], templates: Sequence[Template]) -> List[str]:
    """Class-major list: [t0(c0), t1(c0), ..., t0(c1), ...]."""
    return [t(c) for c in classnames for t in templates]


@torch.no_grad()
def build_zeroshot_head(model, tokenizer, classnames: Sequence[str], templates: Sequence[Template],
                        device="cpu", batch_size: int = 256, autocast=contextlib.nullcontext,
                        progress: bool = False, desc: str = "head") -> torch.Tensor:
    """[D, C] float32 head. Prompts are encoded in batches of `batch_size` texts and summed per class,
    so memory stays O(C * D) however many templates there are."""
    if not classnames:
        raise ValueError("no class names to build a head from")
    if not templates:
        raise ValueError("no templates to build a head from")
    prompts = render_prompts(classnames, templates)
    num_t = len(templates)
    sums: Optional[torch.Tensor] = None
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for start in starts:
        chunk = prompts[start:start + batch_size]
        tokens = tokenizer(chunk).to(device)
        with autocast():
            emb = model.encode_text(tokens)
        emb = F.normalize(emb.float(), dim=-1)
        if sums is None:
            sums = torch.zeros(len(classnames), emb.shape[1], dtype=torch.float32, device=emb.device)
        owner = torch.arange(start, start + len(chunk), device=emb.device) // num_t
        sums.index_add_(0, owner, emb)
    head = F.normalize(sums / num_t, dim=-1)
    return head.t().contiguous()


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
        return hashlib.sha1("\x00".join(render_prompts(classnames, templates)).encode()).hexdigest()

    def get(self, model, tokenizer, classnames, templates, **kwargs) -> torch.Tensor:
        k = self.key(classnames, templates)
        if k not in self._heads:
            self._heads[k] = build_zeroshot_head(model, tokenizer, classnames, templates, **kwargs)
        return self._heads[k]
