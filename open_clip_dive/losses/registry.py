"""Loss registry, in the spirit of timm's model registry.

A loss factory is a plain function `fn(args) -> nn.Module` registered under a name:

    @register_loss("dive")
    def dive(args): ...

Third-party packages register theirs from an entry point group ``open_clip_dive.losses``
(`name = "pkg.module:factory"`) or are named on the command line as ``--loss pkg.module:factory``.
"""

import difflib
import fnmatch
import importlib
import re
from importlib.metadata import entry_points
from typing import Callable, Dict, List, Optional

from ..errors import DiveUsageError

ENTRY_POINT_GROUP = "open_clip_dive.losses"

_LOSSES: Dict[str, Callable] = {}
_entry_points_loaded = False


def register_loss(name: str, reference: bool = False, flags=None, check: Optional[Callable] = None):
    """Decorator that registers `fn(args) -> nn.Module` under `name`.

    `reference=True` says the loss trains on the reference stream (so `--dive-ref-data` is required).
    `flags`: the dests of the loss-specific plugin flags it reads (`("dive_avl_weight",)`); the others are
    reported as having no effect with this loss. None (the default) means undeclared: nothing is reported.
    `check(args)` rejects flags the loss cannot run with (raise DiveUsageError); it runs before anything is built.
    The first line of the factory's docstring is the loss's description (`describe_loss`).
    """

    def wrap(fn):
        fn.uses_reference = reference
        fn.uses_flags = None if flags is None else tuple(flags)
        fn.check_args = check
        if name in _LOSSES and _LOSSES[name] is not fn:
            raise ValueError(f"loss '{name}' is already registered by {_LOSSES[name].__module__}")
        _LOSSES[name] = fn
        fn.loss_name = name
        return fn

    return wrap


def _load_entry_points():
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _LOSSES:
            _LOSSES[ep.name] = ep.load()


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s.lower())]


def list_losses(filter: str = "") -> List[str]:
    """Registered names, naturally sorted, optionally filtered by a wildcard (`'dive*'`)."""
    _load_entry_points()
    names = [n for n in _LOSSES if not filter or fnmatch.fnmatch(n, filter)]
    return sorted(names, key=_natural_key)


def is_loss(name: str) -> bool:
    _load_entry_points()
    return name in _LOSSES


def _import_path(name: str) -> Optional[Callable]:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DiveUsageError(f"--loss {name}: cannot import '{module_name}' ({e}); is the package installed?") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise DiveUsageError(f"--loss {name}: module '{module_name}' has no attribute '{attr}'")
    return fn


def loss_entrypoint(name: str) -> Callable:
    """The factory for `name`; an unknown name fails with the known names and the close matches."""
    _load_entry_points()
    if name in _LOSSES:
        return _LOSSES[name]
    if ":" in name:
        return _import_path(name)
    close = difflib.get_close_matches(name, list(_LOSSES), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise DiveUsageError(
        f"--loss: unknown loss '{name}'.{hint} Known: {', '.join(list_losses())}; "
        "a third-party loss is named as 'package.module:factory'."
    )


def describe_loss(name: str) -> str:
    """One line about the loss: the first line of its factory's docstring."""
    doc = (loss_entrypoint(name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def check_loss_args(args):
    """The loss's own checks of the flags (see `register_loss(check=...)`)."""
    check = getattr(loss_entrypoint(args.loss), "check_args", None)
    if check is not None:
        check(args)


def loss_uses_reference(name: str) -> bool:
    return bool(getattr(loss_entrypoint(name), "uses_reference", False))


def loss_flags(name: str):
    """The loss-specific plugin flags (dests) the loss reads, or None where it does not declare them."""
    return getattr(loss_entrypoint(name), "uses_flags", None)


def create_loss(args):
    """Build the loss named by `args.loss`."""
    return loss_entrypoint(args.loss)(args)
