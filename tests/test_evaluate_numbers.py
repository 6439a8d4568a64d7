"""Numbers that must not go wrong silently: CLIP_benchmark's ignored splits, top-5 of <= 5 classes, partial
averages in the WiSE-FT table and curves, the alpha grid, the head cache key, one zero-shot implementation
(open_clip's build_zero_shot_classifier) shared by the evaluator and the embedded default's report."""

import argparse
import json
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import TINY_MODEL
from open_clip_dive.errors import DiveUsageError
from open_clip_dive.evaluate import check_eval_suite, evaluate_in_training
from open_clip_dive.evaluate.datasets import WHOLE_DATASET, prepare
from open_clip_dive.evaluate.heads import HeadCache, build_zeroshot_head, render_prompts
from open_clip_dive.evaluate.plots import wiseft_points
from open_clip_dive.evaluate.report import full_markdown, wiseft_markdown
from open_clip_dive.evaluate.runner import EvalConfig, SuiteEvaluator
from open_clip_dive.evaluate.suites import PRESETS, DatasetSpec, SuiteError
from open_clip_dive.evaluate.table import cell
from open_clip_dive.evaluate.wiseft import parse_alphas


@pytest.fixture
def eval_log(caplog):
    """The evaluator's log records (its logger stops propagating once the CLI has run in this process)."""
    logger = logging.getLogger("open_clip_dive.evaluate")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="open_clip_dive.evaluate"):
        yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture(scope="module")
def tiny(tiny_data):
    open_clip.add_model_config(tiny_data["config"])
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL)
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_MODEL)


# --- 3. CLIP_benchmark datasets without a test split ---------------------------------------------------------
def test_eurosat_records_the_whole_dataset_and_logs_clip_benchmarks_warning(tmp_path, eval_log):
    pytest.importorskip("clip_benchmark")
    folder = tmp_path / "eurosat" / "eurosat" / "2750"  # torchvision EuroSAT layout
    for c, name in enumerate(("AnnualCrop", "Forest")):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (40 * c, 90, 10 * i)).save(folder / name / f"{name}_{i}.jpg")
    spec = DatasetSpec(name="eurosat", **{**PRESETS["eurosat"], "path": str(tmp_path / "eurosat")})
    ds = prepare(spec)
    assert spec.split == "test" and ds.describe()["split"] == WHOLE_DATASET
    assert ds.num_samples == 6  # every image: there is no test split to take
    assert any("no 'test' split for 'eurosat'" in r.getMessage() and "whole dataset (6 images)" in r.getMessage()
               for r in eval_log.records)
    assert "whole dataset" in PRESETS["caltech101"]["source"] and "whole dataset" in PRESETS["sun397"]["source"]
    table = full_markdown({"runs": {}, "settings": {"suite": {"eurosat": ds.describe()}}})
    assert f"| {WHOLE_DATASET} |" in table


# --- 4. top-5 on 5 classes or fewer --------------------------------------------------------------------------
def suite_file(tmp_path, tiny_data, primary):
    path = tmp_path / f"suite-{primary}.json"
    path.write_text(json.dumps({"datasets": [{"name": "tiny", "group": "id", "type": "wds", "path": tiny_data["id"],
                                              "templates": "photo", "primary": primary}]}))
    return str(path)


def test_top5_of_four_classes_is_refused_at_start_up_and_never_stops_training(tiny_data, tiny, tmp_path, eval_log):
    model, preprocess, tokenizer = tiny
    args = argparse.Namespace(dive_eval_suite=suite_file(tmp_path, tiny_data, "top5"), rank=0, logs=str(tmp_path),
                              name="run", device="cpu", precision="fp32", batch_size=16, workers=0)
    with pytest.raises(SuiteError, match="dataset 'tiny': primary top5 needs more than 5 classes \\(it has 4"):
        check_eval_suite(args)
    with pytest.raises(SuiteError):  # the command-line evaluator refuses it before any model is scored
        SuiteEvaluator([DatasetSpec(name="tiny", group="id", type="wds", path=tiny_data["id"], primary="top5")],
                       EvalConfig())
    # past the start-up check (or a suite changed mid-run): logged, {} returned, the model back in train mode
    model.train()
    assert evaluate_in_training(model, args, 1, preprocess, tokenizer) == {}
    assert model.training and any("epoch 1 not evaluated, training goes on" in r.getMessage() for r in eval_log.records)
    args.logs = None  # anything else that fails (here: writing the report) is caught the same way
    args.dive_eval_suite = suite_file(tmp_path, tiny_data, "top1")
    assert evaluate_in_training(model, args, 2, preprocess, tokenizer) == {}
    model.eval()


def test_a_missing_score_is_a_dash_not_a_type_error():
    run = {"datasets": {"x": {"group": "id", "score": None, "top5": None}}, "summary": {}}
    assert cell(run, ("dataset", "x", "id")) == (None, "-")


# --- 5. WiSE-FT: partial averages, the alpha grid, the head cache key -----------------------------------------
def test_wiseft_table_and_curves_keep_the_partial_star():
    sweeps = {"ft": [{"alpha": 0.0, "summary": {"id": 0.5, "ood_avg": 0.4, "zeroshot_avg": 0.3}},
                     {"alpha": 0.5, "summary": {"id": 0.6, "ood_avg": 0.45, "ood_partial": True, "zeroshot_avg": 0.3}}]}
    table = wiseft_markdown({"wise_ft": sweeps})
    assert "| ft | 0.50 | 60.00 | 45.00* | 30.00 |" in table and "| ft | 0.00 | 50.00 | 40.00 | 30.00 |" in table
    ood = wiseft_points(sweeps, "ood")["ft"]
    assert [p[3] for p in ood] == ["0", "0.5*"] and ood[1][1:3] == (60.0, 45.0)
    assert [p[3] for p in wiseft_points(sweeps, "zeroshot")["ft"]] == ["0", "0.5"]


@pytest.mark.parametrize("text, alphas", [
    ("0:1:0.1", [round(0.1 * i, 10) for i in range(11)]),
    ("0:0.5:0.3", [0.0, 0.3]),                 # never past STOP
    ("0:1:0.6", [0.0, 0.6]),                   # STOP off the grid: not an error
    ("0.7:1:0.1", [0.7, 0.8, 0.9, 1.0]),       # 0.3 / 0.1 = 2.9999999999999996 still reaches STOP
    ("0:1:0.25", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0.5:0.5:0.1", [0.5]),
])
def test_alpha_grid_stops_at_stop(text, alphas):
    assert parse_alphas(text) == alphas


@pytest.mark.parametrize("text", ["1:0:0.1", "0:1:0", "0:1:1e-9", "nan", "0,1.5"])
def test_bad_alpha_grids(text):
    with pytest.raises(DiveUsageError, match="--wise-ft"):
        parse_alphas(text)


def test_head_cache_keys_keep_the_class_structure(tiny):
    model, _, tokenizer = tiny
    one_class = (["x"], [lambda c: f"a {c}", lambda c: f"b {c}"])
    two_classes = (["a x", "b x"], [lambda c: c])
    assert render_prompts(*one_class) == render_prompts(*two_classes)  # the same flat prompt list
    assert HeadCache.key(*one_class) != HeadCache.key(*two_classes)
    cache = HeadCache()
    assert cache.get(model, tokenizer, *one_class).shape[1] == 1
    assert cache.get(model, tokenizer, *two_classes).shape[1] == 2


# --- 8. one zero-shot implementation ----------------------------------------------------------------------------
def test_head_is_open_clips_classifier_and_batching_does_not_change_it(tiny):
    model, _, tokenizer = tiny
    classes, templates = ["red", "green", "blue"], [lambda c: f"a {c} thing.", lambda c: f"the {c} one."]
    head = build_zeroshot_head(model, tokenizer, classes, templates, batch_size=2)
    reference = open_clip.build_zero_shot_classifier(model, tokenizer, classes, templates, num_classes_per_batch=None)
    torch.testing.assert_close(head, reference.float())
    with torch.no_grad():  # the convention, by hand: normalise, average over templates, renormalise
        by_hand = torch.stack([F.normalize(F.normalize(model.encode_text(tokenizer([t(c) for t in templates])), dim=-1)
                                           .mean(0), dim=-1) for c in classes]).t()
    torch.testing.assert_close(head, by_hand, atol=1e-6, rtol=1e-5)


def test_default_models_zero_shot_accuracy_is_the_evaluators(tiny_data, tiny):
    from open_clip_dive.default.model import zero_shot_accuracy

    model, preprocess, tokenizer = tiny
    names = json.load(open(tiny_data["classnames"]))
    templates = ["a photo of a {}.", "a {} thing."]
    result = zero_shot_accuracy(model, preprocess, tokenizer, tiny_data["id"], names, templates, max_samples=20)
    spec = DatasetSpec(name="tiny", type="wds", path=tiny_data["id"], classnames=names, templates=templates,
                       max_samples=20)
    scored = SuiteEvaluator([spec], EvalConfig(workers=0, progress=False)).evaluate(model, preprocess, tokenizer, "x")
    assert result == {"top1": scored["datasets"]["tiny"]["top1"], "n": 20, "chance": 0.25}
