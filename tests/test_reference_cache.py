"""The reference-embedding cache: built once, refused when stale, and training with it matches the frozen model."""

import json
import re

import pytest
import torch

from helpers import TINY_MODEL
from open_clip_dive.main import main
from open_clip_dive.tools.cache_reference import main as cache_main

pytestmark = pytest.mark.timeout(600)


def losses(log, name):
    return [float(v) for v in re.findall(rf"{name}: ([0-9.e+-]+) \(", open(log).read())]


def train(tiny_data, tmp_path, name, *extra):
    return main(["--dive-model-config", tiny_data["config"], "--model", TINY_MODEL, "--train-data", tiny_data["id"],
                 "--classnames", tiny_data["classnames"], "--batch-size", "8", "--epochs", "1", "--device", "cpu",
                 "--precision", "fp32", "--workers", "0", "--lr", "1e-3", "--warmup", "2", "--logs", str(tmp_path),
                 "--name", name, "--report-to", "none", "--log-every-n-steps", "1", "--seed", "0", "--loss", "dive",
                 "--dive-ref-data", tiny_data["ref"], "--dive-avl-weight", "10", "--dive-pvl-weight", "10", *extra])


def test_training_with_the_cache_matches_the_frozen_model(tiny_data, tmp_path, capsys):
    torch.manual_seed(0)  # the tiny model has random weights: build the cache from the same initialisation
    weights = tmp_path / "init.pt"
    import open_clip

    open_clip.add_model_config(tiny_data["config"])
    model = open_clip.create_model(TINY_MODEL)
    torch.save(model.state_dict(), weights)
    cache = tmp_path / "cache"
    argv = ["--dive-model-config", tiny_data["config"], "--model", TINY_MODEL, "--pretrained", str(weights),
            "--dive-ref-data", tiny_data["ref"], "--output", str(cache), "--batch-size", "16", "--device", "cpu"]
    assert cache_main(argv) == 0
    meta = json.loads((cache / "meta.json").read_text())
    assert len(meta["shards"]) == 2 and len(list(cache.glob("*.emb.pt"))) == 2
    shard = torch.load(next(cache.glob("*.emb.pt")), weights_only=True)
    assert shard["image"].shape == (16, 32) and len(shard["keys"]) == 16
    assert torch.allclose(shard["image"].norm(dim=-1), torch.ones(16), atol=1e-5)
    assert cache_main(argv) == 0  # a second run has nothing left to do

    assert train(tiny_data, tmp_path, "frozen", "--pretrained", str(weights), "--no-dive-ref-augment") == 0
    assert train(tiny_data, tmp_path, "cached", "--pretrained", str(weights), "--dive-ref-cache", str(cache)) == 0
    assert "no frozen copy kept" in (tmp_path / "cached" / "out.log").read_text()
    for term in ("Contrastive_loss", "Avl_loss", "Pvl_loss"):
        a, b = losses(tmp_path / "frozen" / "out.log", term), losses(tmp_path / "cached" / "out.log", term)
        assert len(a) == 4 and a == pytest.approx(b, rel=1e-4, abs=1e-9), term

    # other weights: the cache is refused with one clear line
    torch.save(open_clip.create_model(TINY_MODEL).state_dict(), tmp_path / "other.pt")
    capsys.readouterr()
    assert train(tiny_data, tmp_path, "stale", "--pretrained", str(tmp_path / "other.pt"),
                 "--dive-ref-cache", str(cache)) == 2
    assert "was made by other weights" in capsys.readouterr().err
