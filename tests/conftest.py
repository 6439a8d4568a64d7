import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from helpers import write_shards, write_tiny_model_config  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny model config, class-labelled ID shards and caption reference shards, shared by the session."""
    root = tmp_path_factory.mktemp("tiny")
    config = write_tiny_model_config(str(root / "configs"))
    id_shards = write_shards(str(root / "id"), "id", num_shards=2, per_shard=16, num_classes=4, seed=1)
    ref_shards = write_shards(str(root / "ref"), "ref", num_shards=2, per_shard=16, with_cls=False, with_txt=True, seed=2)
    return {"root": root, "config": config, "id": id_shards, "ref": ref_shards,
            "classnames": str(root / "id" / "classnames.json")}
