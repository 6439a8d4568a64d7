"""What weights were trained with, checked where they are loaded (open_clip_dive/provenance.py).

QuickGELU: a tiny model really trained with --force-quick-gelu is refused under the GELU config (evaluator and
trainer, --pretrained and --resume) and scored / trained without complaint under the matching one.
Preprocessing: open_clip tags cannot be downloaded here, so a tag of the tiny model is registered in open_clip's
pretrained table pointing at a local file (the only stand-in); everything else is the real code path.
"""

import json
import shutil

import open_clip
import pytest
import torch

from helpers import TINY_MODEL
from open_clip_dive import provenance
from open_clip_dive.errors import DiveUsageError
from open_clip_dive.evaluate.cli import main as evaluate_main
from open_clip_dive.main import main as train_main

pytestmark = pytest.mark.timeout(600)

SQUASH = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear", "resize_mode": "squash"}


def train_args(tiny_data, logs, name, *extra):
    return ["--dive-model-config", tiny_data["config"], "--model", TINY_MODEL, "--loss", "flyp",
            "--train-data", tiny_data["id"], "--classnames", tiny_data["classnames"], "--train-num-samples", "16",
            "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--lr", "1e-3", "--warmup", "1", "--logs", str(logs), "--name", name, "--report-to", "none",
            "--seed", "0", *extra]


def eval_args(tiny_data, out, *extra):
    return ["--model", TINY_MODEL, "--model-config", tiny_data["config"], "--dataset", f"id:tiny={tiny_data['id']}",
            "--workers", "0", "--batch-size", "16", "--no-progress", "--no-plots", "--output-dir", str(out), *extra]


def last_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


@pytest.fixture(scope="module")
def quickgelu_run(tiny_data, tmp_path_factory):
    logs = tmp_path_factory.mktemp("qg")
    assert train_main(train_args(tiny_data, logs, "qg", "--force-quick-gelu")) == 0
    params = provenance.read_params(str(logs / "qg" / "params.txt"))
    assert params["force_quick_gelu"] is True and params["model"] == TINY_MODEL
    return logs / "qg" / "checkpoints" / "epoch_1.pt"


def test_evaluator_refuses_a_quickgelu_checkpoint_under_gelu_and_scores_it_under_quickgelu(
        tiny_data, quickgelu_run, tmp_path, capsys):
    code = evaluate_main(eval_args(tiny_data, tmp_path / "gelu", "--pretrained", str(quickgelu_run)))
    line = last_line(capsys)
    assert code == 2
    assert f"'{quickgelu_run}' was trained with QuickGELU" in line and f"--model {TINY_MODEL} builds GELU" in line
    assert "add --force-quick-gelu" in line
    assert not (tmp_path / "gelu").exists()  # refused before any model was built

    assert evaluate_main(eval_args(tiny_data, tmp_path / "qg", "--pretrained", str(quickgelu_run),
                                   "--force-quick-gelu")) == 0
    captured = capsys.readouterr()
    assert "QuickGELU" not in captured.err and "WARNING" not in captured.out
    results = json.loads((tmp_path / "qg" / "results.json").read_text())
    assert results["settings"]["force_quick_gelu"] is True
    assert 0.0 <= results["runs"]["pretrained"]["datasets"]["tiny"]["top1"] <= 1.0


def test_trainer_refuses_pretrained_and_resume_of_another_activation(tiny_data, quickgelu_run, tmp_path, capsys):
    code = train_main(train_args(tiny_data, tmp_path, "from-file", "--pretrained", str(quickgelu_run)))
    line = last_line(capsys)
    assert code == 2 and line.startswith("open_clip_dive: error: --pretrained") and "trained with QuickGELU" in line
    assert not (tmp_path / "from-file").exists()  # before open_clip made the run folder

    # --resume latest of the QuickGELU run, now under the GELU config
    logs = quickgelu_run.parent.parent.parent
    code = train_main(train_args(tiny_data, logs, "qg", "--resume", "latest", "--epochs", "2"))
    assert code == 2 and "--resume" in last_line(capsys)
    assert not (quickgelu_run.parent / "epoch_2.pt").exists()

    # the matching config trains without complaint
    assert train_main(train_args(tiny_data, tmp_path, "ok", "--pretrained", str(quickgelu_run),
                                 "--force-quick-gelu")) == 0
    assert (tmp_path / "ok" / "checkpoints" / "epoch_1.pt").exists()


def test_a_gelu_run_under_force_quick_gelu_and_the_openai_tag(tmp_path):
    run = tmp_path / "logs" / "gelu"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text("force_quick_gelu: False\nmodel: ViT-B-16\npretrained: None\n")
    ckpt = run / "checkpoints" / "epoch_3.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(DiveUsageError, match=r"trained with GELU .*--model ViT-B-16 --force-quick-gelu builds "
                                             r"QuickGELU.*drop --force-quick-gelu"):
        provenance.check_activation("--pretrained", str(ckpt), "ViT-B-16", force_quick_gelu=True)
    with pytest.raises(DiveUsageError, match="use --model ViT-B-16$"):
        provenance.check_activation("--pretrained", str(ckpt), "ViT-B-16-quickgelu")
    assert provenance.check_activation("--pretrained", str(ckpt), "ViT-B-16").quick_gelu is False
    # OpenAI's weights are QuickGELU (open_clip's pretrained config says so; nothing is downloaded)
    with pytest.raises(DiveUsageError, match="tag 'openai' of ViT-B-16.*use --model ViT-B-16-quickgelu"):
        provenance.check_activation("--pretrained", "openai", "ViT-B-16")
    assert provenance.check_activation("--pretrained", "openai", "ViT-B-16-quickgelu").quick_gelu is True
    # unknown either side: nothing to compare, nothing refused
    (run / "params.txt").unlink()
    assert provenance.check_activation("--pretrained", str(ckpt), "ViT-B-16-quickgelu").quick_gelu is None


def test_evaluator_cli_refuses_openai_weights_under_the_gelu_config(tmp_path, capsys):
    code = evaluate_main(["--model", "ViT-B-16", "--pretrained", "openai", "--dataset", f"id:x={tmp_path}",
                          "--output-dir", str(tmp_path / "out")])
    assert code == 2 and "use --model ViT-B-16-quickgelu" in last_line(capsys)


@pytest.fixture
def squash_tag(tiny_data, tmp_path, monkeypatch):
    """A tag 'squash' of the tiny model with non-default preprocessing, and a fine-tuned run of it whose weights
    are the tag's (so every number of the two must agree when both are preprocessed alike)."""
    open_clip.add_model_config(tiny_data["config"])
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL)
    tag_file = tmp_path / "tag.pt"
    torch.save({"state_dict": model.state_dict()}, tag_file)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_MODEL, {"squash": {"file": str(tag_file), **SQUASH}})
    run = tmp_path / "logs" / "ft"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text(f"image_mean: None\nmodel: {TINY_MODEL}\npretrained: squash\n")
    shutil.copy(tag_file, run / "checkpoints" / "epoch_1.pt")
    return run / "checkpoints" / "epoch_1.pt"


def test_every_run_of_an_evaluation_uses_the_tags_preprocessing(tiny_data, squash_tag, tmp_path):
    trained = provenance.trained_with(str(squash_tag), TINY_MODEL)
    assert trained.preprocess == {k: SQUASH[k] for k in provenance.PREPROCESS_KEYS}

    copy = tmp_path / "copy.pt"  # the same weights with no params.txt: open_clip alone would preprocess it so
    shutil.copy(squash_tag, copy)
    assert evaluate_main(eval_args(tiny_data, tmp_path / "alone", "--pretrained", str(copy))) == 0
    alone = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert alone["runs"]["pretrained"]["preprocess"]["mean"] != list(SQUASH["mean"])  # open_clip's defaults

    assert evaluate_main(eval_args(tiny_data, tmp_path / "out", "--pretrained", "squash",
                                   "--finetuned", f"ft={squash_tag}", "--finetuned", f"copy={copy}",
                                   "--rsa-samples", "32")) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["settings"]["preprocess"]["source"].startswith("run 'pretrained': open_clip tag 'squash'")
    for label in ("pretrained", "ft", "copy"):
        pp = results["runs"][label]["preprocess"]
        assert (tuple(pp["mean"]), tuple(pp["std"]), pp["interpolation"], pp["resize_mode"]) == \
            (SQUASH["mean"], SQUASH["std"], SQUASH["interpolation"], SQUASH["resize_mode"]), label
    pre = results["runs"]["pretrained"]["datasets"]["tiny"]
    for label in ("ft", "copy"):  # same weights, same images: the same numbers and an unmoved geometry
        run = results["runs"][label]
        assert run["datasets"]["tiny"]["top1"] == pre["top1"] and run["datasets"]["tiny"]["macro_f1"] == pre["macro_f1"]
        assert run["geometry"]["image"]["rsa_cosine"] == pytest.approx(1.0, abs=1e-9)
        assert run["geometry"]["image"]["diff_norm_mean"] == pytest.approx(0.0, abs=1e-6)


def _normalize(transform):
    return next(t for t in transform.transforms if type(t).__name__ == "Normalize")


def test_training_from_a_fine_tuned_file_or_a_tagged_reference_uses_the_tags_preprocessing(
        tiny_data, squash_tag, tmp_path):
    from open_clip_dive.plugin import current_run

    assert train_main(train_args(tiny_data, tmp_path, "file", "--pretrained", str(squash_tag))) == 0
    norm = _normalize(current_run().preprocess_val)
    assert tuple(norm.mean) == SQUASH["mean"] and tuple(norm.std) == SQUASH["std"]

    bare = tmp_path / "bare.pt"  # no params.txt: the tagged frozen reference decides
    shutil.copy(squash_tag, bare)
    args = train_args(tiny_data, tmp_path, "ref", "--pretrained", str(bare), "--dive-ref-pretrained", "squash",
                      "--dive-ref-data", tiny_data["ref"], "--dive-avl-weight", "1", "--dive-pvl-weight", "1")
    args[args.index("flyp")] = "dive"
    assert train_main(args) == 0
    assert tuple(_normalize(current_run().preprocess_val).mean) == SQUASH["mean"]

    assert train_main(train_args(tiny_data, tmp_path, "plain", "--pretrained", str(bare))) == 0
    assert tuple(_normalize(current_run().preprocess_val).mean) == open_clip.OPENAI_DATASET_MEAN
