"""Regularised fine-tuning baselines against the frozen pre-trained model: Lipsum-FT, CAR-FT and the cosine-similarity
constraint (DiVE's ablation). Choices the papers leave open are marked "inferred" here and in docs/losses.md.

- `lipsum` (Nam et al., ICLR 2024): ce + w * (1/2M) ||v_ft(x) - v_pre(x)||^2 on the ID images, v(x)_m the
  similarity of image x to the m-th of M random-token texts drawn fresh every step. The text tower is the fixed
  pre-trained one on both sides, so the frozen model encodes the texts once (`frozen_id_texts`).
- `car-ft` (Mao et al., arXiv 2211.16175): ce + w * KL(p_pre(.|x) || p_ft(.|x)) on the ID images, p the softmax over
  context prompts, each context a template averaged over the class names (the zero-shot head built with the roles of
  class and template swapped), from the frozen text tower.
- `cosine` (DiVE's ablation): FLYP + w * the squared difference between the fine-tuned and pre-trained models'
  cosine-similarity matrices (image-image, text-text, image-text) on the reference batch.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiveUsageError
from ..prompts import stable_hash
from .classifier import CrossEntropyLoss
from .dive import ReferenceLoss


def text_token_ids(tokenizer):
    """(first id, last id, ordinary ids or None) of a text: open_clip's CLIP tokenizer (sot, eot; the ordinary ids are
    those below them) or an open_clip HFTokenizer (cls, sep; the ordinary ids are every id but the special ones:
    padding, which the text tower masks, among them). (None, None, None) for anything else."""
    sot, eot = getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None)
    if sot is not None and eot is not None:
        return sot, eot, None
    hf = getattr(tokenizer, "tokenizer", None)
    cls, sep = getattr(hf, "cls_token_id", None), getattr(hf, "sep_token_id", None)
    if cls is None or sep is None:
        return None, None, None
    special = set(hf.all_special_ids)
    return cls, sep, torch.tensor([i for i in range(len(hf)) if i not in special], dtype=torch.long)


class LipsumLoss(CrossEntropyLoss):
    """ce + weight * (1/2M) ||v_ft - v_pre||^2, v_m = exp(logit_scale_pre) * <f(x), g(t_m)> for M random texts.

    Inferred: v uses the normalised embeddings scaled by the pre-trained logit scale (the zero-shot logits against
    the random texts); each text is [SOT, L tokens drawn uniformly from the ordinary vocabulary, EOT] ([CLS] ... [SEP]
    with a Hugging Face tokenizer); the draw is
    seeded by (--seed, optimizer step), so every micro-batch and rank of a step sees the same texts and a resumed
    run draws what the uninterrupted one drew.
    """

    frozen_batch = "id"

    def __init__(self, classnames, templates, weight: float, num_texts: int = 80, num_tokens: int = 8, seed: int = 0,
                 head_init=None):
        super().__init__(classnames, templates, head_init)
        self.weight, self.num_texts, self.num_tokens, self.seed = weight, num_texts, num_tokens, seed
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # saved: resume draws the same texts
        self._tokens = None  # (sot, eot, context_length)

    def init_from_model(self, model, tokenizer):
        super().init_from_model(model, tokenizer)
        sot, eot, ordinary = text_token_ids(tokenizer)
        length = getattr(tokenizer, "context_length", None)
        if sot is None or length is None:
            raise DiveUsageError(f"--loss lipsum draws random token texts; the tokenizer of this model "
                                 f"({type(tokenizer).__name__}) has neither sot/eot (CLIP) nor cls/sep (Hugging Face) "
                                 "token ids")
        if self.num_tokens + 2 > length:
            raise DiveUsageError(f"--dive-lipsum-tokens {self.num_tokens}: at most {length - 2} for a context length "
                                 f"of {length}")
        self._tokens = (sot, eot, length, ordinary)

    def random_texts(self) -> torch.Tensor:
        sot, eot, length, ordinary = self._tokens
        g = torch.Generator().manual_seed(stable_hash("lipsum", self.seed, int(self.steps)) % 2**63)
        tokens = torch.zeros(self.num_texts, length, dtype=torch.long)
        tokens[:, 0] = sot
        if ordinary is None:  # CLIP's tokenizer: every id below sot / eot is an ordinary token
            tokens[:, 1:self.num_tokens + 1] = torch.randint(0, min(sot, eot), (self.num_texts, self.num_tokens),
                                                             generator=g)
        else:
            pick = torch.randint(0, len(ordinary), (self.num_texts, self.num_tokens), generator=g)
            tokens[:, 1:self.num_tokens + 1] = ordinary[pick]
        tokens[:, self.num_tokens + 1] = eot
        return tokens

    def frozen_id_texts(self, texts):
        """The texts the frozen model encodes with the ID images: this step's random texts."""
        return self.random_texts()

    def forward(self, image_features, labels, id0_image_features, id0_text_features, output_dict=False, **_):
        losses = self.ce_losses(image_features, labels)
        t = id0_text_features.float()  # g_pre(t_m): the fixed text tower
        v = self.scale * image_features.float() @ t.t()
        v0 = self.scale * id0_image_features.float() @ t.t()
        losses["lipsum_loss"] = self.weight * (v - v0).pow(2).sum(-1).mean() / (2 * self.num_texts)
        return losses if output_dict else tuple(losses.values())

    def on_optimizer_step(self):
        self.steps += 1


@torch.no_grad()
def context_head(model, tokenizer, classnames, templates, batch_size: int = 256) -> torch.Tensor:
    """[T, D]: for each template t, normalize(mean_c normalize(g(t(c)))) (model in eval mode, fp32)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            for template in templates:
                prompts = [template(c) for c in classnames]
                total = 0
                for start in range(0, len(prompts), batch_size):
                    tokens = tokenizer(prompts[start:start + batch_size]).to(device)
                    total = total + F.normalize(model.encode_text(tokens).float(), dim=-1).sum(0)
                rows.append(F.normalize(total / len(prompts), dim=-1))
    finally:
        model.train(was_training)
    return torch.stack(rows)


class CARFTLoss(CrossEntropyLoss):
    """ce + weight * KL(p_pre || p_ft), p(.|x) = softmax(exp(logit_scale_pre) * W_ctx f(x)) over the contexts.

    Inferred: the contexts are the --templates (OpenAI's 80 by default), each averaged over the training class
    names; the temperature is the pre-trained logit scale; the KL is taken from the pre-trained distribution
    (the target) to the fine-tuned one and averaged over the batch.
    """

    frozen_batch = "id"

    def __init__(self, classnames, templates, weight: float, head_init=None):
        super().__init__(classnames, templates, head_init)
        self.weight = weight
        self.register_buffer("contexts", torch.zeros(0), persistent=False)  # rebuilt from the pre-trained model

    def init_from_model(self, model, tokenizer):
        super().init_from_model(model, tokenizer)
        if len(self.templates) < 2:
            raise DiveUsageError("--loss car-ft needs at least 2 context prompts: use --templates openai (80) or a "
                                 "file with several templates")
        self.contexts = context_head(model, tokenizer, self.classnames, self.templates)

    def forward(self, image_features, labels, id0_image_features, output_dict=False, **_):
        losses = self.ce_losses(image_features, labels)
        w = self.contexts.to(image_features.device)
        log_p_ft = F.log_softmax(self.scale * image_features.float() @ w.t(), dim=-1)
        log_p_pre = F.log_softmax(self.scale * id0_image_features.float() @ w.t(), dim=-1)
        kl = F.kl_div(log_p_ft, log_p_pre, log_target=True, reduction="batchmean")
        losses["car_loss"] = self.weight * kl
        return losses if output_dict else tuple(losses.values())


def cosine_matrix_loss(a, b, a0, b0) -> torch.Tensor:
    """mean_jk ((a_j . b_k) - (a0_j . b0_k))^2 over the B' x B' cosine-similarity matrices (inputs normalised)."""
    return (a @ b.t() - a0 @ b0.t()).pow(2).mean()


class CosineLoss(ReferenceLoss):
    """FLYP + weight * (image-image + text-text + image-text) mean squared cosine-similarity differences.

    Inferred (the paper names the constraint only): each term is the mean over all B' x B' entries (the
    image-image and text-text diagonals are 1 on both sides and contribute 0), the three terms are summed with equal
    weight, and under --accum-freq the matrices are per micro-batch (the terms averaged over micro-batches).
    """

    def __init__(self, contrastive: nn.Module, weight: float):
        super().__init__(contrastive)
        self.weight = weight

    def forward(self, image_features, text_features, logit_scale, ref_image_features, ref_text_features,
                ref0_image_features, ref0_text_features, logit_bias=None, output_dict=False, **_):
        losses = self.id_losses(image_features, text_features, logit_scale, logit_bias)
        u, v = ref_image_features.float(), ref_text_features.float()
        u0, v0 = ref0_image_features.float(), ref0_text_features.float()
        total = cosine_matrix_loss(u, u, u0, u0) + cosine_matrix_loss(v, v, v0, v0) + cosine_matrix_loss(u, v, u0, v0)
        losses["cosine_loss"] = self.weight * total
        return losses if output_dict else tuple(losses.values())
