"""The command line as users type it: the loss the flags imply, and a warning for every flag it would ignore."""

import re

import pytest

from helpers import TINY_MODEL
from open_clip_dive.errors import DiveUsageError
from open_clip_dive.loss_choice import choose_loss, ignored_flags
from open_clip_dive.main import main

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("given, loss", [
    (["dive_avl_weight"], "dive"),
    (["dive_pvl_weight"], "dive"),
    (["dive_ema_momentum"], "dive"),
    (["dive_ref_data"], "dive"),
    (["classnames", "dive_avl_weight", "dive_ref_data"], "dive"),
    (["classnames"], "flyp"),
    (["classnames", "templates"], "flyp"),
    (["dive_ref_data", "dive_replay_weight"], "replay"),
    (["dive_logs"], None),
])
def test_the_flags_imply_the_loss(given, loss):
    assert choose_loss(None, given)[0] == loss


def test_reason_names_the_flags_that_chose_the_loss():
    assert choose_loss(None, ["classnames", "dive_avl_weight", "dive_ref_data"])[1] == \
        "implied by --dive-avl-weight, --dive-ref-data"
    assert choose_loss("pvl", ["dive_avl_weight"]) == ("pvl", "given with --loss")


def test_flags_of_different_losses_ask_for_loss():
    with pytest.raises(DiveUsageError, match=r"--dive-avl-weight, --dive-replay-weight point to different losses "
                                             r"\(dive, replay\): choose one with --loss"):
        choose_loss(None, ["dive_avl_weight", "dive_replay_weight"])


@pytest.mark.parametrize("loss, given, expected", [
    ("flyp", ["dive_avl_weight"], ["--dive-avl-weight has no effect with --loss flyp"]),
    ("pvl", ["dive_avl_weight", "dive_pvl_weight"], ["--dive-avl-weight has no effect with --loss pvl"]),
    ("flyp", ["dive_ref_data", "dive_ref_batch_size"], ["--dive-ref-data has no effect with --loss flyp",
                                                        "--dive-ref-batch-size has no effect with --loss flyp"]),
    ("avl", ["dive_pvl_weight"], ["--dive-pvl-weight has no effect with --loss avl"]),
    ("replay", ["dive_avl_weight", "dive_replay_weight"], ["--dive-avl-weight has no effect with --loss replay"]),
    (None, ["templates"], ["--templates has no effect without --classnames"]),
    ("dive", ["dive_avl_weight", "dive_pvl_weight", "dive_ema_momentum", "dive_ref_data", "classnames"], []),
])
def test_ignored_flags(loss, given, expected):
    warnings = ignored_flags(loss, given)
    assert len(warnings) == len(expected)
    for warning, start in zip(warnings, expected):
        assert warning.startswith(start)


def test_frozen_model_flags_are_judged_by_where_the_built_loss_runs_the_frozen_model():
    from open_clip_dive.loss_choice import ignored_frozen_flags

    given = ["dive_ref_pretrained", "dive_ref_precision"]
    assert ignored_flags("lipsum", given) == [] and ignored_flags("dive", given) == []  # not judged before building
    assert ignored_frozen_flags("lipsum", given, "id") == []  # Lipsum-FT's frozen model is built from them
    assert ignored_frozen_flags("dive", given, "reference") == []
    assert [w.split(":")[0] for w in ignored_frozen_flags("replay", given, None)] == [
        "--dive-ref-pretrained has no effect with --loss replay", "--dive-ref-precision has no effect with --loss replay"]
    (cache,) = ignored_frozen_flags("car-ft", ["dive_ref_cache"], "id")
    assert cache.startswith("--dive-ref-cache has no effect with --loss car-ft: its frozen model runs on the ID batch")


def argv(tiny_data, logs, name, *extra, classnames=True, train_data=None):
    return ["--dive-model-config", tiny_data["config"], "--model", TINY_MODEL, "--dataset-type", "webdataset",
            "--train-data", train_data or tiny_data["id"], "--train-num-samples", "16",
            *(["--classnames", tiny_data["classnames"]] if classnames else []),
            "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--logs", str(logs), "--name", name, "--report-to", "none", "--log-every-n-steps", "1", *extra]


def test_documented_command_without_loss_trains_dive(tiny_data, tmp_path):
    assert main(argv(tiny_data, tmp_path, "dive", "--dive-avl-weight", "1000",
                     "--dive-ref-data", tiny_data["ref"])) == 0
    log = (tmp_path / "dive" / "out.log").read_text()
    assert log.splitlines()[0].endswith("open_clip_dive: loss dive: implied by --dive-avl-weight, --dive-ref-data")
    assert len(re.findall(r"Avl_loss: ", log)) == 2 and len(re.findall(r"Pvl_loss: ", log)) == 2
    params = (tmp_path / "dive" / "params.txt").read_text()
    assert "loss: dive\n" in params and "dive_loss_reason: implied by --dive-avl-weight, --dive-ref-data" in params


def test_classnames_alone_trains_flyp(tiny_data, tmp_path):
    assert main(argv(tiny_data, tmp_path, "flyp")) == 0
    log = (tmp_path / "flyp" / "out.log").read_text()
    assert "open_clip_dive: loss flyp: implied by --classnames" in log
    assert "Contrastive_loss: " in log and "Avl_loss" not in log


def test_flags_of_different_losses_stop_before_anything_is_built(tiny_data, tmp_path, capsys):
    code = main(argv(tiny_data, tmp_path, "both", "--dive-avl-weight", "1", "--dive-replay-weight", "1",
                     "--dive-ref-data", tiny_data["ref"]))
    assert code == 2
    assert "point to different losses (dive, replay): choose one with --loss" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()


@pytest.mark.parametrize("extra, warning, classnames", [
    (["--loss", "flyp", "--dive-avl-weight", "5"], "--dive-avl-weight has no effect with --loss flyp", True),
    (["--loss", "pvl", "--dive-avl-weight", "5", "--dive-ref-data", "REF"],
     "--dive-avl-weight has no effect with --loss pvl", True),
    (["--loss", "flyp", "--dive-ref-data", "REF"], "--dive-ref-data has no effect with --loss flyp", True),
    (["--loss", "replay", "--dive-ref-data", "REF", "--dive-ref-precision", "bf16"],
     "--dive-ref-precision has no effect with --loss replay: it does not use the frozen model", True),
    (["--templates", "simple"], "--templates has no effect without --classnames", False),
])
def test_each_ignored_flag_warns_once_at_start_up(tiny_data, tmp_path, extra, warning, classnames):
    extra = [tiny_data["ref"] if e == "REF" else e for e in extra]
    train_data = None if classnames else tiny_data["ref"]  # caption shards: open_clip's own pipeline
    assert main(argv(tiny_data, tmp_path, "warn", *extra, classnames=classnames, train_data=train_data)) == 0
    log = (tmp_path / "warn" / "out.log").read_text()
    assert log.count(warning) == 1
    first_step = log.index("Train Epoch: 0")
    assert log.index(warning) < first_step
