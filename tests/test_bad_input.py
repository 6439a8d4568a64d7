"""Bad input stops before training with one clear line naming the flag or file; corrupt samples are skipped."""

import json

import pytest

from helpers import TINY_MODEL, write_shards
from open_clip_dive.main import main

pytestmark = pytest.mark.timeout(300)


def run(tiny_data, tmp_path, capsys, *extra, train_data=None, classnames=None, name="bad"):
    argv = ["--dive-model-config", tiny_data["config"], "--model", TINY_MODEL,
            "--train-data", train_data or tiny_data["id"], "--classnames", classnames or tiny_data["classnames"],
            "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--logs", str(tmp_path), "--name", name, "--report-to", "none", *extra]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


@pytest.mark.parametrize("extra, message", [
    (["--loss", "dive"], "--loss dive trains on reference pairs: give them with --dive-ref-data"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-avl-weight", "-1"], "--dive-avl-weight: must be >= 0"),
    (["--loss", "pvl", "--dive-ref-data", "REF", "--dive-pvl-weight", "-0.5"], "--dive-pvl-weight: must be >= 0"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ema-momentum", "1"], "--dive-ema-momentum: must be in [0, 1)"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ema-momentum", "-0.1"], "--dive-ema-momentum"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--dive-ref-batch-size", "0"], "--dive-ref-batch-size: must be >= 1"),
    (["--loss", "dive", "--dive-ref-data", "REF", "--accum-freq", "2", "--horovod"],
     "--accum-freq 2 with --horovod: open_clip builds Horovod's optimizer for one backward per step"),
    (["--loss", "dive", "--dive-ref-data", "/nonexistent/ref-{000..003}.tar"],
     "--dive-ref-data: shard '/nonexistent/ref-000.tar' does not exist (4 of 4 missing)"),
    (["--loss", "dvie"], "--loss: unknown loss 'dvie'. Did you mean dive"),
    (["--loss", "flyp", "--templates", "/nonexistent/t.json"], "--templates: template file '/nonexistent/t.json' does not exist"),
])
def test_flag_errors(tiny_data, tmp_path, capsys, extra, message):
    extra = [tiny_data["ref"] if e == "REF" else e for e in extra]
    code, line = run(tiny_data, tmp_path, capsys, *extra)
    assert code == 2
    assert line.startswith("open_clip_dive: error: ") and message in line
    assert not (tmp_path / "bad" / "checkpoints" / "epoch_1.pt").exists()


def test_missing_train_shards(tiny_data, tmp_path, capsys):
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", train_data=str(tmp_path / "x-{0..1}.tar"))
    assert code == 2 and "--train-data: shard" in line and "does not exist" in line


def test_shard_without_labels(tiny_data, tmp_path, capsys):
    shards = write_shards(str(tmp_path / "nolabel"), "nl", 1, 8, with_cls=False, with_txt=True)
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", train_data=shards)
    assert code == 2 and "has no 'cls' class label (it has 'txt': drop --classnames" in line


def test_reference_shard_without_captions(tiny_data, tmp_path, capsys):
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "dive", "--dive-ref-data", tiny_data["id"])
    assert code == 2 and "--dive-ref-data: sample" in line and "needs an image and a 'txt' caption" in line


def test_class_index_out_of_range(tiny_data, tmp_path, capsys):
    names = tmp_path / "two.json"
    names.write_text(json.dumps(["red", "green"]))
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", classnames=str(names))
    assert code == 2 and "is out of range of the 2 names in --classnames" in line


def test_corrupt_sample_is_skipped_and_counted(tiny_data, tmp_path, capsys, caplog):
    shards = write_shards(str(tmp_path / "corrupt"), "c", 1, 16, num_classes=4,
                          extra=lambda s, j, label: {"png": b"not a png"} if j == 3 else {})
    code, _ = run(tiny_data, tmp_path, capsys, "--loss", "flyp", "--train-num-samples", "16", train_data=shards,
                  name="corrupt")
    assert code == 0
    log = (tmp_path / "corrupt" / "out.log").read_text()
    assert "Skipping a corrupt sample" in log and "1 skipped so far" in log
