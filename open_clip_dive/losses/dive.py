"""DiVE: Difference Vector Equalization (Suzuki et al., AAAI 2026, arXiv 2511.09973).

On a reference batch of image-caption pairs the difference vectors are
    u_j = f_ft(x_j) - f_pre(x_j)        v_j = g_ft(t_j) - g_pre(t_j)
on the L2-normalised embeddings. DiVE asks all of them to be one shared vector m (AVL)
and each image's to equal its caption's (PVL); if every difference vector is the same,
fine-tuning is a translation and the embedding geometry is kept.
"""

import torch
from torch import nn

from ..distributed import all_reduce_sum


REDUCTIONS = ("sum", "mean")  # of each squared norm over the D dimensions; `mean` is F.mse_loss's, 1/D of `sum`
EMA_ORDERS = ("before", "after")  # the loss reads m from before this step's update, or with this batch folded in
SPACES = ("normalized", "raw")  # difference vectors of the L2-normalised embeddings, or of the raw features


def squared_norm(x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """||x||^2 per row: the sum over dimensions, or its mean (`reduction='mean'`, as F.mse_loss reduces)."""
    return x.pow(2).sum(-1) if reduction == "sum" else x.pow(2).mean(-1)


def avl_loss(u: torch.Tensor, v: torch.Tensor, m: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Average vector loss: mean_j ( ||u_j - m||^2 + ||v_j - m||^2 ), u/v [B, D], m [D] (a constant)."""
    m = m.detach().to(u.dtype)
    return (squared_norm(u - m, reduction) + squared_norm(v - m, reduction)).mean()


def pvl_loss(u: torch.Tensor, v: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Pairwise vector loss: mean_j ||u_j - v_j||^2 (each image with its own caption only)."""
    return squared_norm(u - v, reduction).mean()


@torch.no_grad()
def difference_stats(u: torch.Tensor, v: torch.Tensor) -> dict:
    """What the regulariser sees (this rank's reference batch): mean ||u||, mean ||v||, and the share of each
    difference that is common to the batch (||mean u|| / mean ||u||: 1 for a pure translation). 0-d tensors, so
    the step does not wait for the device; they become numbers only when logged."""
    stats = {}
    for name, d in (("u", u), ("v", v)):
        mean_norm = d.norm(dim=-1).mean()
        stats[f"dive/{name}_norm"] = mean_norm
        common = d.mean(0).norm() / mean_norm.clamp_min(torch.finfo(mean_norm.dtype).tiny)
        stats[f"dive/{name}_common"] = torch.where(mean_norm > 0, common, torch.ones_like(common))
    return stats


class DifferenceVectorEMA(nn.Module):
    """The shared vector m: an EMA of the mean difference vector, a buffer saved with the run.

    The loss reads m as it was before the optimizer step; `update()` then folds in the detached mean
    of all 2B' difference vectors seen since the last step (every micro-batch, every rank):
    m <- a * m + (1 - a) * mean. m starts at zero.
    """

    def __init__(self, dim: int = 0, momentum: float = 0.99, world_size: int = 1, use_horovod: bool = False):
        super().__init__()
        self.momentum = momentum
        self.world_size = world_size
        self.use_horovod = use_horovod
        self.register_buffer("ema", torch.zeros(dim))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._pending_sum = None
        self._pending_count = 0

    @torch.no_grad()
    def observe(self, *diffs: torch.Tensor):
        """Record difference vectors [N, D] of this micro-batch for the next update."""
        flat = torch.cat([d.detach().float() for d in diffs])
        batch_sum = flat.sum(0)
        self._pending_sum = batch_sum if self._pending_sum is None else self._pending_sum + batch_sum
        self._pending_count += flat.shape[0]

    def current(self, like: torch.Tensor) -> torch.Tensor:
        if self.ema.numel() != like.shape[-1]:  # first use: size the buffer from the embedding width
            self.ema = torch.zeros(like.shape[-1], device=like.device)
        return self.ema

    @torch.no_grad()
    def folded(self, *diffs: torch.Tensor) -> torch.Tensor:
        """m with this micro-batch's global mean folded in, as the update will (the `after` reading); a
        collective when distributed (every rank calls it for every micro-batch)."""
        flat = torch.cat([d.detach().float() for d in diffs])
        stats = torch.cat([flat.sum(0), flat.new_tensor([flat.shape[0]])])
        stats = all_reduce_sum(stats, self.world_size, self.use_horovod)
        m = self.current(flat)
        return self.momentum * m + (1.0 - self.momentum) * (stats[:-1] / stats[-1]).to(m.device)

    @torch.no_grad()
    def update(self):
        """Fold the observed vectors into m; a collective, so every rank must call it every step."""
        if self._pending_sum is None:
            return
        stats = torch.cat([self._pending_sum, self._pending_sum.new_tensor([self._pending_count])])
        stats = all_reduce_sum(stats, self.world_size, self.use_horovod)
        batch_mean = stats[:-1] / stats[-1]
        self.current(batch_mean)
        self.ema.mul_(self.momentum).add_(batch_mean.to(self.ema.device), alpha=1.0 - self.momentum)
        self.num_updates += 1
        self._pending_sum, self._pending_count = None, 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the buffer is sized lazily; take the saved size before the default copy
        saved = state_dict.get(prefix + "ema")
        if saved is not None and saved.shape != self.ema.shape:
            self.ema = torch.zeros_like(saved, device=self.ema.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ReferenceLoss(nn.Module):
    """ID contrastive loss plus weighted terms on the reference batch.

    `forward(**model_outputs, output_dict=True)` takes the trainable model's outputs on the ID batch
    (image_features, text_features, logit_scale[, logit_bias]), on the reference batch
    (ref_image_features, ref_text_features) and the frozen model's on the
    reference batch (ref0_image_features, ref0_text_features); it ignores other keys and returns
    named, weighted `*_loss` terms.
    """

    needs_reference = True
    frozen_batch = "reference"

    def __init__(self, contrastive: nn.Module):
        super().__init__()
        self.contrastive = contrastive

    def id_losses(self, image_features, text_features, logit_scale, logit_bias=None):
        extra = () if logit_bias is None else (logit_bias,)
        losses = dict(self.contrastive(image_features, text_features, logit_scale, *extra, output_dict=True))
        self.id_keys = tuple(losses)  # the rest are reference terms (averaged over accumulated micro-batches)
        return losses

    @staticmethod
    def difference_vectors(ref_image_features, ref_text_features, ref0_image_features, ref0_text_features):
        u = ref_image_features.float() - ref0_image_features.float()
        v = ref_text_features.float() - ref0_text_features.float()
        return u, v

    def on_optimizer_step(self):
        """Called by the training loop once after every optimizer step."""


class DiVELoss(ReferenceLoss):
    """FLYP contrastive + w_avl * AVL + w_pvl * PVL (a zero weight drops the term).

    The readings the paper leaves open (paper digest §1.2-1.5), with the best-supported default first:
    `reduction` of each squared norm (`sum` over dimensions; `mean` divides by D, so the paper's 1000 under
    `mean` is 1000 / D under `sum`), `ema_order` (`before`: the loss reads m from before this step's update;
    `after`: with this micro-batch's global mean folded in) and `reference_space` (`normalized` embeddings, or
    `raw` features; the training step reads it and passes the reference features in that space).
    """

    def __init__(self, contrastive: nn.Module, avl_weight: float = 1000.0, pvl_weight: float = 1000.0,
                 momentum: float = 0.99, world_size: int = 1, use_horovod: bool = False, reduction: str = "sum",
                 ema_order: str = "before", space: str = "normalized"):
        super().__init__(contrastive)
        self.avl_weight = avl_weight
        self.pvl_weight = pvl_weight
        self.reduction, self.ema_order, self.reference_space = reduction, ema_order, space
        self.average = DifferenceVectorEMA(0, momentum, world_size, use_horovod) if avl_weight > 0 else None
        self.last_stats = {}

    def forward(self, image_features, text_features, logit_scale, ref_image_features, ref_text_features,
                ref0_image_features, ref0_text_features, logit_bias=None, output_dict=False, **_):
        losses = self.id_losses(image_features, text_features, logit_scale, logit_bias)
        u, v = self.difference_vectors(ref_image_features, ref_text_features, ref0_image_features, ref0_text_features)
        if self.average is not None:
            m = self.average.current(u)
            if self.ema_order == "after" and self.training:
                m = self.average.folded(u, v)
            losses["avl_loss"] = self.avl_weight * avl_loss(u, v, m, self.reduction)
            if self.training:
                self.average.observe(u, v)
        if self.pvl_weight > 0:
            losses["pvl_loss"] = self.pvl_weight * pvl_loss(u, v, self.reduction)
        self.last_stats = difference_stats(u, v)
        return losses if output_dict else tuple(losses.values())

    def metrics(self) -> dict:
        """Scalars for the log line, TensorBoard and W&B (the plugin logs what a loss returns here): the last
        micro-batch's difference-vector statistics and ||m|| after the last update."""
        ema = {} if self.average is None else {"dive/ema_norm": self.average.ema.norm()}
        return {name: float(value) for name, value in {**self.last_stats, **ema}.items()}

    def on_optimizer_step(self):
        if self.average is not None:
            self.average.update()
