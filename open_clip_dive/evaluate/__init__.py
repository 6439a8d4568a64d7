"""Evaluation researchers can trust: ID / OOD / zero-shot suites, RSA geometry, WiSE-FT, reports and plots.

Command line: `python -m open_clip_dive.evaluate --help` (see docs/evaluating.md).
From training: `evaluate_in_training(model, args, epoch, preprocess, tokenizer)` when `--dive-eval-suite` is set.
"""

import logging
import os
from typing import Dict

from .geometry import geometry_report, rsa
from .heads import build_zeroshot_head, zeroshot_logits
from .metrics import classification_metrics, macro_f1, project_logits
from .runner import EvalConfig, SuiteEvaluator
from .suites import PRESETS, SUITES, DatasetError, DatasetSpec, load_paths_file, resolve_suite
from .wiseft import interpolate_state_dicts

__all__ = ["evaluate_in_training", "check_eval_suite", "SuiteEvaluator", "EvalConfig", "DatasetSpec", "DatasetError", "resolve_suite",
           "build_zeroshot_head", "zeroshot_logits", "project_logits", "classification_metrics", "macro_f1", "rsa",
           "geometry_report", "interpolate_state_dicts", "PRESETS", "SUITES"]


def _training_suite(args):
    paths = load_paths_file(args.dive_eval_data_paths) if getattr(args, "dive_eval_data_paths", None) else {}
    return resolve_suite([args.dive_eval_suite], paths, max_samples=getattr(args, "dive_eval_max_samples", None))


def check_eval_suite(args) -> None:
    """Call at start-up when --dive-eval-suite is set: a bad suite name / file / paths file, or a suite no data can
    score (primary top5 on 5 classes or fewer), raises DiveUsageError now rather than after the first epoch.
    Every dataset is prepared (paths, class lists): one that cannot be is logged now and left out at every epoch."""
    if getattr(args, "dive_eval_suite", None):
        SuiteEvaluator(_training_suite(args), EvalConfig())


def evaluate_in_training(model, args, epoch: int, preprocess, tokenizer, head=None) -> Dict[str, float]:
    """Evaluate the model being trained on `args.dive_eval_suite` (a suite name, comma list or YAML/JSON file).

    Rank 0 only (other ranks return {} at once). The model may be DDP-wrapped; its train/eval mode is restored.
    Optional args: dive_eval_data_paths (YAML/JSON {dataset: path}), dive_eval_max_samples, workers;
    zeroshot_frequency and epochs (open_clip's): the zero-shot group only every N epochs and after the last.
    `head`: the loss's classification head (losses.classifier.TrainedHead), used on the datasets of its classes.
    Writes <logs>/<name>/dive_eval/epoch_<epoch>/results.json (+ .md, .csv) and returns flat metrics:
    `dive_eval/<dataset>/top1|top5|macro_f1` and `dive_eval/id|ood_avg|zeroshot_avg`.
    A dataset that fails is logged and left out; nothing raised here reaches the trainer (an error is logged and
    {} returned), so evaluation never stops training (call `check_eval_suite(args)` at start-up to reject a bad
    suite before training).
    """
    from .runner import log as eval_log
    from .runner import one_line

    if getattr(args, "rank", 0) != 0 or not getattr(args, "dive_eval_suite", None):
        return {}
    try:
        return _evaluate(model, args, epoch, preprocess, tokenizer, head)
    except Exception as e:  # check_eval_suite() catches bad suites at start-up; never stop a run over one here
        eval_log.error(f"dive-eval: epoch {epoch} not evaluated, training goes on: {one_line(e)}")
        eval_log.debug("traceback", exc_info=True)
        return {}


def _zeroshot_due(args, epoch: int) -> bool:
    """Whether the suite's zero-shot group is evaluated after `epoch` (1-based): as open_clip evaluates its own
    zero-shot ImageNet, every --zeroshot-frequency epochs and after the last one; never at frequency 0."""
    every = getattr(args, "zeroshot_frequency", 1)
    return bool(every) and (epoch % every == 0 or epoch == getattr(args, "epochs", epoch))


def _evaluate(model, args, epoch: int, preprocess, tokenizer, head=None) -> Dict[str, float]:
    from .report import write_reports
    from .runner import log as eval_log

    specs = _training_suite(args)
    if not _zeroshot_due(args, epoch):  # open_clip's convention for its own zero-shot evaluation
        specs = [s for s in specs if s.group != "zeroshot"]
    config = EvalConfig(device=str(getattr(args, "device", "cpu")), precision=getattr(args, "precision", "fp32"),
                        batch_size=getattr(args, "batch_size", 256), workers=getattr(args, "workers", 0), progress=False)
    if not eval_log.handlers and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO)
    evaluator = SuiteEvaluator(specs, config)
    label = f"epoch_{epoch}"
    out = evaluator.evaluate(model, preprocess, tokenizer, label, head)
    errors = [f"{n}: {d['error']}" for n, d in out["datasets"].items() if "error" in d]
    results = {"settings": {"epoch": epoch, "suite": evaluator.settings(), "suite_spec": args.dive_eval_suite,
                            "precision": config.precision, "batch_size": config.batch_size},
               "runs": {label: {"role": "training", **out, "geometry": None}}, "wise_ft": {}, "errors": errors}
    out_dir = os.path.join(args.logs, args.name, "dive_eval", f"epoch_{epoch}")
    write_reports(results, out_dir, plots=False)
    metrics: Dict[str, float] = {}
    for name, d in out["datasets"].items():
        for key in ("top1", "top5", "macro_f1"):
            if d.get(key) is not None:
                metrics[f"dive_eval/{name}/{key}"] = d[key]
    for key in ("id", "ood_avg", "zeroshot_avg"):
        if out["summary"].get(key) is not None:
            metrics[f"dive_eval/{key}"] = out["summary"][key]
    return metrics
