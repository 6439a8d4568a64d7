"""DiVE robust fine-tuning as a plugin for open_clip's trainer (open_clip_torch 3.3.x)."""

__version__ = "0.1.0"


def install():
    """Rebind open_clip_train.main's collaborators to the plugin's (idempotent)."""
    from .plugin import install as _install

    _install()
