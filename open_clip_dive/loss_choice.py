"""Which loss a command line asks for, and the plugin flags it gives that the loss would ignore.

Users type the method's flags and expect the method: `--dive-avl-weight 1000 --dive-ref-data ...` without
`--loss` means DiVE, `--classnames` alone means FLYP. The rule: each implying flag names a loss, and the loss
that runs is the one named that reads every loss-specific flag given; where there is none, the flags point
to different losses and the user picks with --loss. Losses declare the flags they read on the registry
(`register_loss(..., flags=...)`).
"""

from .errors import DiveUsageError
from .losses import list_losses, loss_flags, loss_uses_reference

IMPLIES = {"dive_avl_weight": "dive", "dive_pvl_weight": "dive", "dive_ema_momentum": "dive",
           "dive_ema_order": "dive", "dive_space": "dive", "dive_reduction": "dive", "dive_ref_data": "dive",
           "dive_replay_weight": "replay", "dive_cosine_weight": "cosine", "dive_lipsum_weight": "lipsum",
           "dive_car_weight": "car-ft", "dive_head_init": "lp-ft", "classnames": "flyp"}
# read only where the loss runs the frozen model (on either batch); judged once the loss is built and says so
FROZEN_FLAGS = ("dive_ref_pretrained", "dive_ref_precision", "dive_ref_cache")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _loss_specific(dest: str) -> bool:
    return dest.startswith("dive_ref_") or any(dest in (loss_flags(name) or ()) for name in list_losses())


def _reads(loss: str, dest: str) -> bool:
    """Whether `loss` reads the flag; undeclared (third-party) losses are taken to read their own flags."""
    if not _loss_specific(dest) or dest in FROZEN_FLAGS:
        return True
    if dest.startswith("dive_ref_"):
        return loss_uses_reference(loss)
    declared = loss_flags(loss)
    return declared is None or dest in declared


def choose_loss(loss, given):
    """(loss name or None, why) for the flags given (dests, in order)."""
    if loss is not None:
        return loss, "given with --loss"
    implying = [d for d in given if d in IMPLIES]
    named = list(dict.fromkeys(IMPLIES[d] for d in implying))
    if not named:
        return None, "no --loss and no flag that implies one: open_clip's own training"
    named = [name for name in named if name != "flyp"] or named  # class prompts go with every loss
    specific = [d for d in given if _loss_specific(d)]
    fits = [name for name in named if all(_reads(name, d) for d in specific)]
    if len(fits) != 1:
        conflicting = [_flag(d) for d in implying if not all(_reads(name, d) for name in named)]
        raise DiveUsageError(f"{', '.join(conflicting)} point to different losses ({', '.join(named)}): choose one "
                             f"with --loss (known: {', '.join(list_losses())})")
    return fits[0], "implied by " + ", ".join(_flag(d) for d in implying if IMPLIES[d] == fits[0])


def ignored_flags(loss, given):
    """One warning per loss-specific plugin flag given that `loss` does not read."""
    warnings = []
    for dest in given:
        if not _loss_specific(dest):
            continue
        if loss is None:
            warnings.append(f"{_flag(dest)} has no effect: no plugin loss runs (open_clip's own training); "
                            "add --loss")
        elif not _reads(loss, dest):
            warnings.append(f"{_flag(dest)} has no effect with --loss {loss}: it does not read it")
    if "templates" in given and "classnames" not in given:
        warnings.append("--templates has no effect without --classnames: templates turn class labels into prompts")
    return warnings


def ignored_frozen_flags(loss, given, frozen_batch):
    """The frozen-model flags given to a loss that, once built, declares it runs no frozen model (`frozen_batch`
    None), or, for the reference cache, runs it on the ID batch (the cache holds reference embeddings)."""
    if loss is None:
        return []
    if frozen_batch is None:
        return [f"{_flag(d)} has no effect with --loss {loss}: it does not use the frozen model"
                for d in given if d in FROZEN_FLAGS]
    if frozen_batch != "reference" and "dive_ref_cache" in given:
        return [f"--dive-ref-cache has no effect with --loss {loss}: its frozen model runs on the ID batch, the "
                "cache holds reference embeddings"]
    return []
