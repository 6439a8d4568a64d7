"""Raw (not L2-normalised) features of the trainable model, for losses whose difference vectors use them.

open_clip's forward returns normalised features only. The tap wraps `encode_image` / `encode_text` on the model
instance for one forward and keeps their raw outputs, so the forward still goes through DDP once (gradient
synchronisation intact) and gradients flow through the raw tensors as through the normalised ones.
"""

import torch.nn.functional as F

from .errors import DiveUsageError

ENCODERS = (("encode_image", "image_features"), ("encode_text", "text_features"))


def check_raw_features(model, flag="--dive-space raw"):
    missing = [name for name, _ in ENCODERS if not callable(getattr(type(model), name, None))]
    if missing:
        raise DiveUsageError(f"{flag}: {type(model).__name__} has no {' / '.join(missing)} to take raw features "
                             "from; use --dive-space normalized")


class RawFeatureTap:
    """`with RawFeatureTap(model) as tap: model(images, texts)` -> tap.raw['image_features' / 'text_features']."""

    def __init__(self, model):
        self.model = model
        self.raw = {}

    def __enter__(self):
        for name, key in ENCODERS:
            setattr(self.model, name, self._wrap(getattr(type(self.model), name), key))
        return self

    def _wrap(self, encode, key):
        def encode_and_keep(x, normalize: bool = False):
            features = encode(self.model, x, normalize=False)
            self.raw[key] = features
            return F.normalize(features, dim=-1) if normalize else features
        return encode_and_keep

    def __exit__(self, *exc):
        for name, _ in ENCODERS:
            delattr(self.model, name)
        return False
