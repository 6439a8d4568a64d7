"""The loss registry and the built-in losses: `clip`, `flyp`, `dive`, `avl`, `pvl`, `snd`, `replay`, `cosine`
(reference stream) and `ce`, `lp-ft`, `lipsum`, `car-ft` (classification head on the ID labels).

What a loss needs is declared on the loss module and read by the glue through the helpers at the end of this file:
`needs_reference` (trains on the reference stream), `frozen_batch` (None, "reference" or "id": where the frozen
pre-trained model runs), `needs_labels` (gets the ID batch's class indices), `image_tower_only` (only the image
tower and the loss's own parameters train), `in_batch_negatives` (whether accumulation must cache other
micro-batches' features) and `init_from_model(model, tokenizer)` (built from the pre-trained model).
"""

import os

from ..errors import DiveUsageError
from .baselines import ReplayLoss, SnDLoss
from .classifier import ClassifierHead, CrossEntropyLoss, find_head, load_head_file
from .clip import clip, contrastive_loss, flyp
from .dive import DifferenceVectorEMA, DiVELoss, ReferenceLoss, avl_loss, pvl_loss
from .registry import (check_loss_args, create_loss, describe_loss, is_loss, list_losses, loss_entrypoint,
                       loss_flags, loss_uses_reference, register_loss)
from .regularizers import CARFTLoss, CosineLoss, LipsumLoss

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


@register_loss("cosine", reference=True, flags=("dive_cosine_weight",))
def cosine(args):
    """FLYP + cosine-similarity-matrix constraint on the reference stream (the paper's ablation), --dive-cosine-weight."""
    return CosineLoss(contrastive_loss(args), args.dive_cosine_weight)


# --- classification-head losses -----------------------------------------------------------------------------------
def _model_embed_dim(args):
    """The embedding width of --model from its open_clip config (or a --dive-model-config file), else None."""
    import json

    import open_clip

    config = open_clip.get_model_config(args.model)
    if config is None:
        for path in getattr(args, "dive_model_config", None) or ():
            path = os.path.join(path, f"{args.model}.json") if os.path.isdir(path) else path
            if os.path.isfile(path) and os.path.splitext(os.path.basename(path))[0] == args.model:
                with open(path) as f:
                    config = json.load(f)
    return (config or {}).get("embed_dim")


def _check_classifier(args, needs_head_file=False):
    from ..prompts import load_classnames

    if args.classnames is None:
        raise DiveUsageError(f"--loss {args.loss} trains a classifier on class labels: give --classnames FILE|imagenet "
                             "with --train-data shards whose samples carry 'cls'")
    if needs_head_file and not args.dive_head_init:
        raise DiveUsageError(f"--loss {args.loss} starts from a linear probe: write its head with python -m "
                             "open_clip_dive.tools.linear_probe and pass it as --dive-head-init FILE")
    if args.dive_head_init:
        load_head_file(args.dive_head_init, len(load_classnames(args.classnames)), _model_embed_dim(args))


def _check_lipsum(args):
    _check_classifier(args)
    for flag in ("dive_lipsum_texts", "dive_lipsum_tokens"):
        if getattr(args, flag) < 1:
            raise DiveUsageError(f"--{flag.replace('_', '-')}: must be >= 1, got {getattr(args, flag)}")


def _classifier_inputs(args):
    from ..prompts import load_classnames, load_templates

    return load_classnames(args.classnames), load_templates(args.templates)


@register_loss("ce", check=_check_classifier, flags=("dive_head_init",))
def ce(args):
    """Vanilla fine-tuning (WiSE-FT / FLYP's "FT"): image tower + zero-shot-initialised linear head, cross-entropy."""
    return CrossEntropyLoss(*_classifier_inputs(args), head_init=args.dive_head_init)


@register_loss("lp-ft", check=lambda args: _check_classifier(args, needs_head_file=True), flags=("dive_head_init",))
def lp_ft(args):
    """LP-FT (Kumar et al., ICLR 2022): ce started from a linear probe's head (--dive-head-init, tools.linear_probe)."""
    return CrossEntropyLoss(*_classifier_inputs(args), head_init=args.dive_head_init)


@register_loss("lipsum", check=_check_lipsum,
               flags=("dive_lipsum_weight", "dive_lipsum_texts", "dive_lipsum_tokens", "dive_head_init"))
def lipsum(args):
    """Lipsum-FT (Nam et al., ICLR 2024): ce + energy gap to the frozen model on random texts, --dive-lipsum-weight."""
    return LipsumLoss(*_classifier_inputs(args), weight=args.dive_lipsum_weight, num_texts=args.dive_lipsum_texts,
                      num_tokens=args.dive_lipsum_tokens, seed=args.seed, head_init=args.dive_head_init)


@register_loss("car-ft", check=_check_classifier, flags=("dive_car_weight", "dive_head_init"))
def car_ft(args):
    """CAR-FT (Mao et al., 2022): ce + KL of the frozen and fine-tuned context distributions, --dive-car-weight."""
    return CARFTLoss(*_classifier_inputs(args), weight=args.dive_car_weight, head_init=args.dive_head_init)


# --- what a loss declares, as the glue reads it -------------------------------------------------------------------
def needs_reference(loss) -> bool:
    return bool(getattr(loss, "needs_reference", False))


def frozen_batch(loss):
    """None, "reference" or "id": the batch the frozen pre-trained model runs on."""
    return getattr(loss, "frozen_batch", None)


def needs_frozen(loss) -> bool:
    return frozen_batch(loss) is not None


def needs_labels(loss) -> bool:
    return bool(getattr(loss, "needs_labels", False))


def image_tower_only(loss) -> bool:
    return bool(getattr(loss, "image_tower_only", False))


def in_batch_negatives(loss) -> bool:
    """Whether an ID term couples the samples of a batch (contrastive): then accumulation caches features."""
    return bool(getattr(loss, "in_batch_negatives", True))


__all__ = [
    "register_loss", "create_loss", "list_losses", "describe_loss", "is_loss", "loss_entrypoint", "loss_uses_reference",
    "loss_flags", "check_loss_args", "avl_loss", "pvl_loss", "DiVELoss", "DifferenceVectorEMA", "ReferenceLoss", "SnDLoss",
    "ReplayLoss", "CosineLoss", "CrossEntropyLoss", "ClassifierHead", "LipsumLoss", "CARFTLoss", "find_head",
    "load_head_file", "contrastive_loss", "needs_reference", "frozen_batch", "needs_frozen", "needs_labels",
    "image_tower_only", "in_batch_negatives",
]
