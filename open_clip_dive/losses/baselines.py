"""The paper's baselines on the same reference stream: SnD and FLYP + replay."""

from torch import nn

from .dive import ReferenceLoss, squared_norm


class SnDLoss(ReferenceLoss):
    """Select-and-Distill as DiVE frames it: pull reference *image* embeddings back to the frozen
    model's, i.e. AVL with m = 0 on images only: w * mean_j ||u_j||^2."""

    def __init__(self, contrastive: nn.Module, weight: float, reduction: str = "sum", space: str = "normalized"):
        super().__init__(contrastive)
        self.weight = weight
        self.reduction, self.reference_space = reduction, space

    def forward(self, image_features, text_features, logit_scale, ref_image_features, ref0_image_features,
                logit_bias=None, output_dict=False, **_):
        losses = self.id_losses(image_features, text_features, logit_scale, logit_bias)
        u = ref_image_features.float() - ref0_image_features.float()
        losses["snd_loss"] = self.weight * squared_norm(u, self.reduction).mean()
        return losses if output_dict else tuple(losses.values())


class ReplayLoss(ReferenceLoss):
    """FLYP + replay (the paper's ARF proxy): the contrastive loss also on the reference pairs."""

    frozen_batch = None

    def __init__(self, contrastive: nn.Module, weight: float):
        super().__init__(contrastive)
        self.weight = weight

    def forward(self, image_features, text_features, logit_scale, ref_image_features, ref_text_features,
                logit_bias=None, output_dict=False, **_):
        losses = self.id_losses(image_features, text_features, logit_scale, logit_bias)
        extra = () if logit_bias is None else (logit_bias,)
        replay = self.contrastive(ref_image_features, ref_text_features, logit_scale, *extra, output_dict=True)
        losses["replay_loss"] = self.weight * sum(replay.values())
        return losses if output_dict else tuple(losses.values())
