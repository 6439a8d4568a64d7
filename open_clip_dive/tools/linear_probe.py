"""`python -m open_clip_dive.tools.linear_probe`: the LP of LP-FT. Logistic regression on the frozen model's image
features of the ID training shards, the regularisation chosen on the ID validation split, the head written to a
file that `--loss lp-ft --dive-head-init FILE` starts from.

    python -m open_clip_dive.tools.linear_probe --model ViT-B-16-quickgelu --pretrained openai \\
        --train-data 'imagenet-train-{0000..1023}.tar' --val-data 'imagenet-val-{00..15}.tar' \\
        --classnames imagenet --output lp_head.pt

Features are the L2-normalised image embeddings under open_clip's deterministic eval transform (what the `ce`
head reads), so the probe's logits W f + b are the head's logits at step 0 of LP-FT. The classifier is
scikit-learn's multinomial LogisticRegression with L-BFGS (as in FLYP's and CLIP's linear probes); every C of
--c-grid is fitted on the training features and scored on the validation ones, and the best C's fit (highest
validation accuracy; the smaller C on ties) is the head. Inferred: the grid (CLIP sweeps C over 1e-6..1e6),
no refit on train + val.
"""

import argparse
import logging
import sys
from typing import List

import numpy as np
import torch

from ..errors import DiveUsageError

log = logging.getLogger("open_clip_dive.linear_probe")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m open_clip_dive.tools.linear_probe",
                                description="Linear probe on frozen image features -> a head file for --dive-head-init.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="open_clip architecture, as for training")
    p.add_argument("--pretrained", default=None, help="the weights fine-tuning starts from (tag, file or local-dir:)")
    p.add_argument("--model-config", action="append", default=[], help="extra open_clip model config (file or folder)")
    p.add_argument("--train-data", required=True, help="ID training shards with 'cls' (brace pattern)")
    p.add_argument("--val-data", required=True, help="ID validation shards with 'cls': choose C on these")
    p.add_argument("--classnames", required=True, help="'imagenet' or a file, as --classnames for training")
    p.add_argument("--c-grid", default="1e-3,1e-2,1e-1,1,10,100,1000",
                   help="inverse regularisation strengths C to try (comma list)")
    p.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per fit")
    p.add_argument("--max-samples", type=int, default=None, help="cap the samples read from each split")
    p.add_argument("--output", required=True, help="head file to write (weight [C, D], bias [C], classnames)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    return p


def parse_grid(text: str) -> List[float]:
    try:
        grid = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        grid = []
    if not grid or any(c <= 0 for c in grid):
        raise DiveUsageError(f"--c-grid '{text}': expected positive numbers, e.g. 0.01,0.1,1,10")
    return grid


def features(evaluator, loaded, spec_name):
    feats, labels, _ = evaluator.image_features(loaded.model, loaded.preprocess, evaluator.prepared[spec_name],
                                                limit=evaluator.prepared[spec_name].spec.max_samples)
    return feats.numpy(), labels.numpy()  # float32: scikit-learn's lbfgs keeps it (half the memory of float64)


def head_from_classifier(clf, num_classes: int):
    """(weight [C, D], bias [C]) whose logits W f + b give the classifier's probabilities."""
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # scikit-learn keeps one row for two classes: split it symmetrically
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.zeros(num_classes)
    weight[clf.classes_], bias[clf.classes_] = coef, intercept
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def run(args) -> int:
    from sklearn.linear_model import LogisticRegression

    from ..evaluate.models import add_model_configs, load_model
    from ..evaluate.runner import EvalConfig, SuiteEvaluator
    from ..evaluate.suites import DatasetSpec
    from ..losses.classifier import save_head_file
    from ..prompts import load_classnames

    grid = parse_grid(args.c_grid)
    classnames = load_classnames(args.classnames)
    add_model_configs(args.model_config)
    specs = [DatasetSpec(name=name, group="id", type="wds", path=path, classnames=classnames, templates="photo",
                         max_samples=args.max_samples)
             for name, path in (("train", args.train_data), ("val", args.val_data))]
    evaluator = SuiteEvaluator(specs, EvalConfig(device=args.device, batch_size=args.batch_size,
                                                 workers=args.workers, progress=False))
    for name, error in evaluator.prepare_errors.items():
        raise DiveUsageError(f"--{name}-data: {error}")
    loaded = load_model("probe", args.model, args.pretrained, args.device)
    x_train, y_train = features(evaluator, loaded, "train")
    x_val, y_val = features(evaluator, loaded, "val")
    missing = sorted(set(range(len(classnames))) - set(y_train.tolist()))
    if missing:
        raise DiveUsageError(f"--train-data: no samples of {len(missing)} class(es) (e.g. index {missing[0]}, "
                             f"'{classnames[missing[0]]}'); the probe needs every class")
    log.info(f"features: {len(y_train)} train, {len(y_val)} val, {x_train.shape[1]}-d; C grid {grid}")
    best = None
    for c in grid:
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=args.max_iter)
        clf.fit(x_train, y_train)
        accuracy = float((clf.predict(x_val) == y_val).mean())
        log.info(f"C {c:g}: val top1 {100 * accuracy:.2f}")
        if best is None or accuracy > best[0]:
            best = (accuracy, c, clf)
    accuracy, c, clf = best
    weight, bias = head_from_classifier(clf, len(classnames))
    save_head_file(args.output, weight, bias, classnames, C=c, val_top1=accuracy, model=args.model,
                   pretrained=args.pretrained or "")
    log.info(f"best C {c:g} (val top1 {100 * accuracy:.2f}); head written to {args.output}")
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DiveUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
