"""open_clip's own losses (`clip`) and FLYP (`flyp`: the CLIP loss on class prompts)."""

import torch
from open_clip import create_loss as open_clip_create_loss
from open_clip.loss import ClipLoss, SigLipLoss


class _HorovodGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward *sums* the gradients of every rank's loss (torch.distributed.nn's semantics).

    Horovod's own allgather averages them in backward, so with open_clip's `--gather-with-grad --horovod` the
    cross-rank part of the contrastive gradient is world_size times too small next to DDP's."""

    @staticmethod
    def forward(ctx, tensor):
        import horovod.torch as hvd

        ctx.rows = tensor.shape[0]
        return hvd.allgather(tensor)

    @staticmethod
    def backward(ctx, grad):
        import horovod.torch as hvd

        total = hvd.allreduce(grad.contiguous(), op=hvd.Sum)
        return total.narrow(0, hvd.rank() * ctx.rows, ctx.rows)  # equal batches on every rank (drop_last)


class HorovodClipLoss(ClipLoss):
    """ClipLoss with gradients through the Horovod all-gather that match DDP's."""

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        if self.world_size == 1 or not self.gather_with_grad:
            return super().get_logits(image_features, text_features, logit_scale, logit_bias)
        all_images = _HorovodGatherWithGrad.apply(image_features)
        all_texts = _HorovodGatherWithGrad.apply(text_features)
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_texts.T
            logits_per_text = logit_scale * text_features @ all_images.T
        else:
            logits_per_image = logit_scale * all_images @ all_texts.T
            logits_per_text = logits_per_image.T
        if logit_bias is not None:
            logits_per_image = logits_per_image + logit_bias
            logits_per_text = logits_per_text + logit_bias
        return logits_per_image, logits_per_text


def contrastive_loss(args):
    """The contrastive term every registry loss starts from, as open_clip would pick it for CLIP/SigLIP."""
    if getattr(args, "siglip", False):
        return SigLipLoss(rank=args.rank, world_size=args.world_size, dist_impl=args.loss_dist_impl)
    loss_class = HorovodClipLoss if args.horovod else ClipLoss
    return loss_class(
        local_loss=args.local_loss,
        gather_with_grad=args.gather_with_grad,
        cache_labels=True,
        rank=args.rank,
        world_size=args.world_size,
        use_horovod=args.horovod,
    )


def clip(args):
    """Exactly what open_clip_train would build: ClipLoss / SigLipLoss / CoCaLoss / DistillClipLoss."""
    return open_clip_create_loss(args)


def flyp(args):
    """FLYP (Goyal et al., CVPR 2023): the CLIP contrastive loss between ID images and class prompts."""
    return contrastive_loss(args)
