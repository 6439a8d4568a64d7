"""The loss registry and the built-in losses (`clip`, `flyp`, `dive`, `avl`, `pvl`, `snd`, `replay`)."""

from .baselines import ReplayLoss, SnDLoss
from .clip import clip, contrastive_loss, flyp
from .dive import DifferenceVectorEMA, DiVELoss, ReferenceLoss, avl_loss, pvl_loss
from .registry import (create_loss, is_loss, list_losses, loss_entrypoint, loss_flags, loss_uses_reference,
                       register_loss)


READINGS = ("dive_space", "dive_reduction")  # the paper's open readings every difference-vector loss takes


def _dive(args, avl_weight, pvl_weight):
    return DiVELoss(contrastive_loss(args), avl_weight=avl_weight, pvl_weight=pvl_weight,
                    momentum=args.dive_ema_momentum, world_size=args.world_size, use_horovod=args.horovod,
                    reduction=args.dive_reduction, ema_order=args.dive_ema_order, space=args.dive_space)


register_loss("clip", flags=())(clip)
register_loss("flyp", flags=())(flyp)


@register_loss("dive", reference=True,
               flags=("dive_avl_weight", "dive_pvl_weight", "dive_ema_momentum", "dive_ema_order") + READINGS)
def dive(args):
    """FLYP + AVL + PVL on the reference stream (the paper's method)."""
    return _dive(args, args.dive_avl_weight, args.dive_pvl_weight)


@register_loss("avl", reference=True, flags=("dive_avl_weight", "dive_ema_momentum", "dive_ema_order") + READINGS)
def avl(args):
    """FLYP + AVL only (ablation)."""
    return _dive(args, args.dive_avl_weight, 0.0)


@register_loss("pvl", reference=True, flags=("dive_pvl_weight",) + READINGS)
def pvl(args):
    """FLYP + PVL only (ablation)."""
    return _dive(args, 0.0, args.dive_pvl_weight)


@register_loss("snd", reference=True, flags=("dive_avl_weight",) + READINGS)
def snd(args):
    """FLYP + SnD image distillation on the reference stream, weight --dive-avl-weight."""
    return SnDLoss(contrastive_loss(args), args.dive_avl_weight, reduction=args.dive_reduction, space=args.dive_space)


@register_loss("replay", reference=True, flags=("dive_replay_weight",))
def replay(args):
    """FLYP + contrastive replay of the reference pairs, weight --dive-replay-weight."""
    return ReplayLoss(contrastive_loss(args), args.dive_replay_weight)


def needs_reference(loss) -> bool:
    return bool(getattr(loss, "needs_reference", False))


def needs_frozen(loss) -> bool:
    return needs_reference(loss) and bool(getattr(loss, "needs_frozen", False))


__all__ = [
    "register_loss", "create_loss", "list_losses", "is_loss", "loss_entrypoint", "loss_uses_reference", "loss_flags",
    "avl_loss", "pvl_loss", "DiVELoss", "DifferenceVectorEMA", "ReferenceLoss", "SnDLoss", "ReplayLoss",
    "contrastive_loss", "needs_reference", "needs_frozen",
]
