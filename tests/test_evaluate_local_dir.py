"""A fine-tuned checkpoint of a `local-dir:` model is evaluated with the checkpoint's weights (open_clip ignores
`pretrained` for schema models, so the folder's own weights would silently be scored instead)."""

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from helpers import TINY_MODEL_CFG
from open_clip_dive.evaluate.models import ModelError, load_model


def write_local_dir(folder):
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    base = open_clip.model.CLIP(**TINY_MODEL_CFG)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return base


def test_checkpoint_over_local_dir_model(tmp_path):
    folder = tmp_path / "model"
    base = write_local_dir(folder)
    tuned = {k: v + 1.0 if v.is_floating_point() else v for k, v in base.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in tuned.items()}}, tmp_path / "epoch_1.pt")

    pre = load_model("pretrained", f"local-dir:{folder}", f"local-dir:{folder}")
    fine = load_model("ft", f"local-dir:{folder}", str(tmp_path / "epoch_1.pt"))
    key = "visual.conv1.weight"
    assert torch.equal(pre.model.state_dict()[key], base.state_dict()[key])
    assert torch.equal(fine.model.state_dict()[key], tuned[key])


def test_the_evaluators_image_layout_gives_the_same_features(tmp_path):
    """The evaluator runs a convolutional image tower channels-last (faster convolutions; tests/test_speed.py checks
    an EfficientNet's features); a ViT, this one, is left contiguous. Either way the features must not change."""
    folder = tmp_path / "model"
    base = write_local_dir(folder).eval()
    loaded = load_model("pretrained", f"local-dir:{folder}", f"local-dir:{folder}")
    assert loaded.model.visual.conv1.weight.is_contiguous()  # its patch embedding alone: nothing to gain
    size = TINY_MODEL_CFG["vision_cfg"]["image_size"]
    images = torch.randn(5, 3, size, size)
    with torch.no_grad():
        expected = base.encode_image(images)
        got = loaded.model.encode_image(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_bad_checkpoint_over_a_local_dir_model_is_named(tmp_path):
    """The load error used to say 'could not load local-dir:... / None': the checkpoint was set aside as None."""
    folder = tmp_path / "model"
    base = write_local_dir(folder)
    truncated = tmp_path / "truncated.pt"
    torch.save({"epoch": 1, "state_dict": base.state_dict()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    other = tmp_path / "other.pt"
    torch.save({"epoch": 1, "state_dict": {**base.state_dict(), "visual.extra_head.weight": torch.zeros(2)}}, other)
    for path, reason in ((truncated, "could not load"), (other, "is for another architecture")):
        with pytest.raises(ModelError) as e:
            load_model("ft", f"local-dir:{folder}", str(path))
        assert str(path) in str(e.value) and reason in str(e.value) and "None" not in str(e.value), e.value
