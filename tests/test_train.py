"""End-to-end runs of `open_clip_dive.main` on tiny shards (CPU, fp32)."""

import csv
import re
import sys

import open_clip
import pytest
import torch

from helpers import TINY_MODEL, TINY_MODEL_CFG, run_module
from open_clip_dive.main import main

pytestmark = pytest.mark.timeout(600)


def base_args(tiny_data, logs, name, *extra):
    return ["--dive-model-config", tiny_data["config"], "--model", TINY_MODEL,
            "--train-data", tiny_data["id"], "--classnames", tiny_data["classnames"],
            "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--lr", "1e-3", "--warmup", "2", "--logs", str(logs), "--name", name, "--report-to", "none",
            "--log-every-n-steps", "1", "--seed", "0", *extra]


def dive_args(tiny_data, logs, name, *extra):
    return base_args(tiny_data, logs, name, "--loss", "dive", "--dive-ref-data", tiny_data["ref"],
                     "--dive-avl-weight", "10", "--dive-pvl-weight", "10", *extra)


def logged_losses(log_path, name):
    values = re.findall(rf"{name}: ([0-9.e+-]+) \(", open(log_path).read())
    return [float(v) for v in values]


def test_dive_trains_checkpoints_and_resumes_with_the_same_ema(tiny_data, tmp_path):
    assert main(dive_args(tiny_data, tmp_path, "run")) == 0
    log = tmp_path / "run" / "out.log"
    for term in ("Contrastive_loss", "Avl_loss", "Pvl_loss"):
        assert len(logged_losses(log, term)) == 4, term  # 32 samples / batch 8
    avl = logged_losses(log, "Avl_loss")
    assert avl[0] < 1e-8 < avl[-1]  # the trainable model starts equal to the frozen one, then moves
    contrastive = logged_losses(log, "Contrastive_loss")
    assert all(c > 0 for c in contrastive)

    ckpt_path = tmp_path / "run" / "checkpoints" / "epoch_1.pt"
    checkpoint = torch.load(ckpt_path, weights_only=True)
    ema = checkpoint["dive"]["ema"]
    assert ema.shape == (TINY_MODEL_CFG["embed_dim"],) and ema.norm() > 0
    assert checkpoint["dive"]["loss_state"]["average.num_updates"].item() == 4
    model, _, _ = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(ckpt_path))
    assert torch.equal(model.state_dict()["logit_scale"], checkpoint["state_dict"]["logit_scale"])

    # resume for a second epoch: the EMA continues from the saved vector (8 updates in all)
    assert main(dive_args(tiny_data, tmp_path, "run", "--epochs", "2", "--resume", "latest")) == 0
    assert "Restored the loss state" in log.read_text()
    second = torch.load(tmp_path / "run" / "checkpoints" / "epoch_2.pt", weights_only=True)
    assert second["dive"]["loss_state"]["average.num_updates"].item() == 8
    assert not torch.equal(second["dive"]["ema"], ema)


def test_every_registry_loss_trains(tiny_data, tmp_path):
    for loss, term in [("flyp", None), ("avl", "Avl_loss"), ("pvl", "Pvl_loss"), ("snd", "Snd_loss"),
                       ("replay", "Replay_loss")]:
        extra = ["--loss", loss, "--train-num-samples", "16"]
        if loss != "flyp":
            extra += ["--dive-ref-data", tiny_data["ref"]]
        assert main(base_args(tiny_data, tmp_path, loss, *extra)) == 0, loss
        log = tmp_path / loss / "out.log"
        assert len(logged_losses(log, "Contrastive_loss")) == 2
        if term:
            assert len(logged_losses(log, term)) == 2, loss
        others = {"Avl_loss", "Pvl_loss", "Snd_loss", "Replay_loss"} - {term}
        assert not any(o in log.read_text() for o in others), loss


def _csv_dataset(root):
    """Image paths + captions: open_clip's csv loader shuffles with torch's seeded RNG, so runs repeat."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for i in range(32):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append({"filepath": str(path), "title": f"a picture of thing {i % 5}"})
    csv_path = root / "train.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filepath", "title"], delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def test_clip_loss_and_no_plugin_flags_match_open_clip_train(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(
        __import__("json").dumps({"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": {}}))
    data = _csv_dataset(tmp_path)
    common = ["--model", f"local-dir:{model_dir}", "--train-data", str(data), "--dataset-type", "csv",
              "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0",
              "--lr", "1e-3", "--warmup", "2", "--logs", str(tmp_path / "logs"), "--report-to", "none",
              "--log-every-n-steps", "1", "--seed", "3"]
    runs = {"upstream": ("open_clip_train.main", []), "plugin-clip": ("open_clip_dive.main", ["--loss", "clip"]),
            "plugin-none": ("open_clip_dive.main", [])}
    losses = {}
    for name, (module, extra) in runs.items():
        result = run_module(module, common + ["--name", name] + extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        losses[name] = logged_losses(tmp_path / "logs" / name / "out.log", "Contrastive_loss")
    assert len(losses["upstream"]) == 4
    assert losses["plugin-clip"] == losses["upstream"]
    assert losses["plugin-none"] == losses["upstream"]


def test_torchrun_two_processes_share_the_ema_and_split_the_data(tiny_data, tmp_path):
    logs = tmp_path / "logs"
    args = dive_args(tiny_data, logs, "ddp", "--dive-log-sample-keys", "--batch-size", "4")
    args[args.index("--logs"):args.index("--logs") + 2] = ["--dive-logs", str(logs)]  # torchrun swallows --logs
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    result = run_module("open_clip_dive.main", args, cwd=tmp_path, launcher=launcher, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ema0 = torch.load(logs / "ddp" / "dive_ema_rank0.pt")
    ema1 = torch.load(logs / "ddp" / "dive_ema_rank1.pt")
    assert ema0.norm() > 0 and torch.equal(ema0, ema1)
    keys = [set(l.split()[1] for l in open(logs / "ddp" / f"sample_keys_rank{r}.txt") if l.startswith("id "))
            for r in (0, 1)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert "Running in distributed mode" in (logs / "ddp" / "out.log").read_text()


def test_help_shows_plugin_and_open_clip_flags(tmp_path):
    result = run_module("open_clip_dive.main", ["--help"], cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--dive-avl-weight", "--dive-ref-data", "--classnames", "--train-data", "--local-loss"):
        assert flag in result.stdout


def test_eval_suite_runs_after_every_epoch(tiny_data, tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(__import__("json").dumps({"datasets": [
        {"name": "tiny-id", "group": "id", "type": "wds", "path": tiny_data["id"],
         "classnames": tiny_data["classnames"], "templates": "photo"},
        {"name": "tiny-zs", "group": "zeroshot", "type": "wds", "path": tiny_data["id"],
         "classnames": tiny_data["classnames"], "templates": "simple"}]}))
    assert main(dive_args(tiny_data, tmp_path, "evalrun", "--dive-eval-suite", str(suite), "--epochs", "3",
                          "--train-num-samples", "16", "--zeroshot-frequency", "2")) == 0
    for epoch, zeroshot in ((1, False), (2, True), (3, True)):  # the zero-shot group: open_clip's frequency + last
        results = tmp_path / "evalrun" / "dive_eval" / f"epoch_{epoch}" / "results.json"
        scored = __import__("json").loads(results.read_text())
        datasets = scored["runs"][f"epoch_{epoch}"]["datasets"]
        assert "tiny-id" in datasets and ("tiny-zs" in datasets) == zeroshot, epoch
