"""open_clip's own losses (`clip`) and FLYP (`flyp`: the CLIP loss on class prompts)."""

from open_clip.loss import ClipLoss, SigLipLoss
from open_clip import create_loss as open_clip_create_loss


def contrastive_loss(args):
    """The contrastive term every registry loss starts from, as open_clip would pick it for CLIP/SigLIP."""
    if getattr(args, "siglip", False):
        return SigLipLoss(rank=args.rank, world_size=args.world_size, dist_impl=args.loss_dist_impl)
    return ClipLoss(
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
