"""Data loops that never end: webdataset's with_epoch repeats a pass until it has its batches, so a pass that
yields none used to spin forever (and two cases flooded the log). Each stops with one line naming the flag or
shard; a stream that only skips stops instead of spinning. Also: upsampling factors (they used to crash)."""

import os
import sys

import pytest

from helpers import TINY_MODEL, dive_cli_argv, run_module, write_shards
from open_clip_dive.errors import DiveUsageError
from open_clip_dive.guards import MAX_SKIPS_IN_A_ROW, PassGuard, SkipGuard
from open_clip_dive.main import main

pytestmark = pytest.mark.timeout(300)


def run(tiny_data, tmp_path, capsys, *extra, train_data=None, name="guard"):
    argv = ["--dive-model-config", tiny_data["config"], "--model", TINY_MODEL,
            "--train-data", train_data or tiny_data["id"], "--classnames", tiny_data["classnames"],
            "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--logs", str(tmp_path), "--name", name, "--report-to", "none", *extra]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


def dive(tiny_data, *extra, ref=None):
    return ["--loss", "dive", "--dive-ref-data", ref or tiny_data["ref"], "--dive-avl-weight", "1",
            "--dive-pvl-weight", "1", *extra]


def test_batch_size_larger_than_the_training_set(tiny_data, tmp_path, capsys):
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", "--batch-size", "64")
    assert code == 2
    assert line == ("open_clip_dive: error: --train-data: its 32 samples (sizes.json) are fewer than one batch of "
                    "--batch-size 64, so a pass would yield no batch; use a smaller --batch-size, more data, "
                    "or resampling")
    assert not (tmp_path / "guard").exists()  # stopped before open_clip made the run folder


def test_a_pass_too_short_for_a_batch_stops_while_training(tiny_data, tmp_path, capsys):
    """Without sizes.json (or with several workers) the startup check cannot know: the pass itself stops."""
    shards = write_shards(str(tmp_path / "small"), "s", 1, 6, num_classes=4, seed=3)
    os.remove(tmp_path / "small" / "sizes.json")
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", "--batch-size", "8", "--train-num-samples", "16",
                     train_data=shards)
    assert code == 2
    assert "--train-data: a full pass over the shards of rank 0 of 1, loader worker 0 of 1 gave 6 usable " \
           "sample(s), fewer than one batch of --batch-size 8" in line


def test_reference_batch_larger_than_the_reference_set_without_resampling(tiny_data, tmp_path, capsys):
    code, line = run(tiny_data, tmp_path, capsys, *dive(tiny_data, "--no-dive-ref-resampled",
                                                         "--dive-ref-batch-size", "40"))
    assert code == 2
    assert "--dive-ref-data: its 32 samples (sizes.json) are fewer than one batch of --dive-ref-batch-size 40" in line


def test_train_data_that_is_a_directory(tiny_data, tmp_path, capsys):
    folder = os.path.dirname(tiny_data["id"])
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", train_data=folder)
    assert code == 2
    assert line.startswith(f"open_clip_dive: error: --train-data: '{folder}' is a directory; give the shard files")


def test_reference_shard_with_every_image_corrupt_stops_instead_of_spinning(tiny_data, tmp_path, capsys):
    ref = write_shards(str(tmp_path / "bad"), "bad", 1, 16, with_cls=False, with_txt=True,
                       extra=lambda s, j, label: {"png": b"not a png"})
    code, line = run(tiny_data, tmp_path, capsys, *dive(tiny_data, ref=ref))
    assert code == 2
    assert (f"--dive-ref-data: {MAX_SKIPS_IN_A_ROW} unreadable samples in a row, the last " in line
            and "of shard '" in line and "bad-000000.tar'" in line)
    log = (tmp_path / "guard" / "out.log").read_text()
    assert log.count("Skipping a corrupt sample") == MAX_SKIPS_IN_A_ROW - 1  # bounded, not a flood


def test_reference_shard_with_every_image_corrupt_without_resampling(tiny_data, tmp_path, capsys):
    ref = write_shards(str(tmp_path / "bad"), "bad", 1, 16, with_cls=False, with_txt=True,
                       extra=lambda s, j, label: {"png": b"not a png"})
    code, line = run(tiny_data, tmp_path, capsys, *dive(tiny_data, "--no-dive-ref-resampled",
                                                         "--dive-ref-workers", "0", ref=ref))
    assert code == 2
    assert "--dive-ref-data: a full pass over the shards of rank 0 of 1, loader worker 0 of 1 gave 0 usable" in line


def test_skip_guard_counts_skips_in_a_row_only():
    guard = SkipGuard("--train-data", limit=3)
    for _ in range(5):  # a success in between resets the run of skips
        assert guard(ValueError("bad"), "'k' of shard 's.tar'")
        guard.ok()
    assert guard.total == 5
    guard(ValueError("bad"))
    guard(ValueError("bad"))
    with pytest.raises(DiveUsageError, match="--train-data: 3 unreadable samples in a row"):
        guard(OSError("read error", "x-000.tar"))


def test_pass_guard_lets_a_full_batch_through():
    guard = PassGuard("--train-data", "--batch-size", 3)
    assert list(guard(iter(range(3)))) == [0, 1, 2]
    with pytest.raises(DiveUsageError, match="gave 2 usable sample"):
        list(guard(iter(range(2))))


# --- upsampling factors (item 3: every value used to crash with "'list' object has no attribute 'split'") ------
def test_reference_upsampling_factors_train(tiny_data, tmp_path, capsys):
    two = f"{tiny_data['ref']}::{tiny_data['ref']}"
    code, line = run(tiny_data, tmp_path, capsys, *dive(tiny_data, "--dive-ref-upsampling-factors", "1::2", ref=two),
                     "--train-num-samples", "8")
    assert code == 0, line
    assert (tmp_path / "guard" / "checkpoints" / "epoch_1.pt").exists()


def test_train_data_upsampling_factors_with_classnames_train(tiny_data, tmp_path, capsys):
    two = f"{tiny_data['id']}::{tiny_data['id']}"
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", "--dataset-resampled", "--train-num-samples", "8",
                     "--train-data-upsampling-factors", "3::1", train_data=two)
    assert code == 0, line
    assert (tmp_path / "guard" / "checkpoints" / "epoch_1.pt").exists()


@pytest.mark.parametrize("extra, message", [
    (["--dive-ref-upsampling-factors", "1::2"], "--dive-ref-upsampling-factors: 2 factor(s) for 1 '::'-joined "
                                                "source(s) of --dive-ref-data; give one per source"),
    (["--dive-ref-upsampling-factors", "a"], "--dive-ref-upsampling-factors: 'a' is not numbers joined by '::'"),
    (["--dive-ref-upsampling-factors", "0"], "--dive-ref-upsampling-factors: factors must be finite and > 0"),
    (["--dive-ref-upsampling-factors", "1", "--no-dive-ref-resampled"],
     "--dive-ref-upsampling-factors: sampling weights need resampling; add --dive-ref-resampled"),
    (["--train-data-upsampling-factors", "1"],
     "--train-data-upsampling-factors: sampling weights need resampling; add --dataset-resampled"),
])
def test_bad_upsampling_factors(tiny_data, tmp_path, capsys, extra, message):
    code, line = run(tiny_data, tmp_path, capsys, *dive(tiny_data, *extra))
    assert code == 2 and message in line, line


# --- item 8: a bad label in a later shard (only the first is scanned at startup) -------------------------------
def test_a_bad_label_found_mid_epoch_checkpoints_first_and_names_shard_and_key(tiny_data, tmp_path, capsys):
    shards = write_shards(str(tmp_path / "late"), "late", 2, 16, num_classes=4, seed=4,
                          extra=lambda s, j, label: {"cls": b"9"} if (s, j) == (1, 15) else {})
    code, line = run(tiny_data, tmp_path, capsys, "--loss", "flyp", train_data=shards, name="late")
    assert code == 2
    assert ("shard '" in line and "late-000001.tar', sample 'late001_00015': class index 9 is out of range of the 4 "
            "names in --classnames" in line), line
    saved = sorted(p.name for p in (tmp_path / "late" / "checkpoints").glob("*.pt"))
    assert len(saved) == 1 and saved[0].startswith("epoch_0_step_"), saved  # the steps before it are kept
    log = (tmp_path / "late" / "out.log").read_text()
    assert "Stopping on bad data after step" in log and "fix the data, then --resume latest" in log


def test_two_ranks_checkpoint_together_when_one_finds_bad_data_mid_epoch(tiny_data, tmp_path):
    """One rank's shard has the bad label: the other must learn of it after the fetch (not wait in the step's
    all-reduce), and both join the checkpoint before stopping."""
    shards = write_shards(str(tmp_path / "late"), "late", 2, 16, num_classes=4, seed=4,
                          extra=lambda s, j, label: {"cls": b"9"} if (s, j) == (1, 15) else {})
    logs = tmp_path / "logs"
    argv = dive_cli_argv(tiny_data, shards, logs, "late2", "--epochs", "1")[3:]  # drop `python -m module`
    argv[argv.index("--logs"):argv.index("--logs") + 2] = ["--dive-logs", str(logs)]  # torchrun swallows --logs
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29583"]
    result = run_module("open_clip_dive.main", argv, cwd=tmp_path, launcher=launcher, timeout=240)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("open_clip_dive: error:")]
    assert any("late-000001.tar', sample 'late001_00015': class index 9 is out of range" in e for e in errors), errors
    assert len(errors) == 2 and any(" stopped: another rank could not read its next batch" in e for e in errors), errors
    saved = sorted(p.name for p in (logs / "late2" / "checkpoints").glob("*.pt"))
    assert len(saved) == 1 and saved[0].startswith("epoch_0_step_"), saved
    log = (logs / "late2" / "out.log").read_text()
    assert "Stopping on bad data after step" in log
