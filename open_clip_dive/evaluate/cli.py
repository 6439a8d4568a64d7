"""`python -m open_clip_dive.evaluate`: several checkpoints x one suite -> table, results.json, CSV, PNGs.

Order of work: the pre-trained model first (its zero-shot row, its RSA embeddings, a CPU copy of its weights),
then each fine-tuned run (its row, RSA against the pre-trained embeddings, then its WiSE-FT sweep).
Exit status: 0 when everything ran, 1 when any dataset or run failed (the rest is still reported), 2 for bad flags.
"""

import argparse
import datetime
import logging
import os
import platform
import sys
from typing import Dict, List, Optional

import torch

from .. import provenance
from ..errors import DiveUsageError
from ..losses.classifier import checkpoint_head
from ..optional import require
from .geometry import geometry_report
from .models import ModelError, add_model_configs, load_model
from .report import comparison_markdown, load_results, write_reports
from .runner import EvalConfig, SuiteEvaluator, log, one_line
from .suites import SUITES, load_paths_file, parse_data_path, resolve_suite
from .wiseft import interpolate_state_dicts, parse_alphas, snapshot


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m open_clip_dive.evaluate",
        description="Zero-shot ID / OOD / zero-shot suites, RSA geometry and WiSE-FT sweeps for open_clip checkpoints.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("models")
    g.add_argument("--model", help="open_clip architecture of all runs, e.g. ViT-B-16")
    g.add_argument("--pretrained", default=None,
                   help="the pre-trained weights: an open_clip tag (openai), a checkpoint file or local-dir:PATH; "
                        "reference for RSA and WiSE-FT")
    g.add_argument("--pretrained-label", default="pretrained", help="row name of the pre-trained model")
    g.add_argument("--finetuned", action="append", default=[], metavar="LABEL=CKPT",
                   help="a fine-tuned run: label and checkpoint (open_clip epoch_N.pt, or local-dir:PATH); repeat")
    g.add_argument("--model-config", action="append", default=[], metavar="PATH",
                   help="extra open_clip model config JSON (file or folder), registered before loading")
    g.add_argument("--force-quick-gelu", action="store_true",
                   help="build every run with QuickGELU, as open_clip's flag of that name (OpenAI weights are "
                        "QuickGELU: prefer a '-quickgelu' model, e.g. ViT-B-16-quickgelu)")
    g = p.add_argument_group("datasets")
    g.add_argument("--suite", action="append", default=[],
                   help=f"built-in suite ({', '.join(SUITES)}) or a YAML/JSON suite file; repeat or comma-separate")
    g.add_argument("--data-paths", default=None, metavar="FILE", help="YAML/JSON {dataset: path} for built-in suites")
    g.add_argument("--data-path", action="append", default=[], metavar="NAME=PATH", help="one dataset path; repeat")
    g.add_argument("--dataset", action="append", default=[], metavar="[GROUP:]NAME=PATH",
                   help="an extra dataset (shards or ImageFolder) with group id|ood|zeroshot; repeat")
    g.add_argument("--templates", default="openai",
                   help="templates for datasets that set none: openai, simple, photo or a file")
    g.add_argument("--max-samples", type=int, default=None, help="cap every dataset (a quick look, not a result)")
    g = p.add_argument_group("geometry")
    g.add_argument("--rsa-data", default=None, metavar="DATASET",
                   help="suite dataset whose first samples form the RSA set (default: the first ID dataset)")
    g.add_argument("--rsa-samples", type=int, default=1000, help="images (and as many texts) in the RSA set")
    g.add_argument("--no-rsa", action="store_true", help="skip RSA / difference-vector statistics")
    g = p.add_argument_group("WiSE-FT")
    g.add_argument("--wise-ft", default=None, metavar="ALPHAS",
                   help="interpolate each fine-tuned run with the pre-trained weights: 0,0.5,1 or 0:1:0.1")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--precision", default="fp32", choices=["fp32", "amp", "amp_bf16"],
                   help="amp: fp16 autocast on GPU (bf16 on CPU); weights stay fp32")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--text-batch-size", type=int, default=256, help="prompts per text-tower batch when building heads (rounded down to whole classes)")
    g.add_argument("--workers", type=int, default=4, help="data loader workers")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars (log lines only)")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default="dive_eval", help="results.json, results.md, results.csv, plots/")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--report", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="evaluate nothing: merge these results.json files into one table and plots in --output-dir")
    return p


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (main() may run several times in one process)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging() -> None:
    if not log.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _parse_runs(args) -> List[Dict[str, Optional[str]]]:
    runs = [{"label": args.pretrained_label, "checkpoint": args.pretrained, "role": "pretrained"}]
    for item in args.finetuned:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise DiveUsageError(f"--finetuned '{item}': expected LABEL=CHECKPOINT, e.g. dive=logs/dive/checkpoints/epoch_10.pt")
        runs.append({"label": label, "checkpoint": os.path.expanduser(path), "role": "finetuned"})
    labels = [r["label"] for r in runs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise DiveUsageError(f"run labels must be unique; repeated: {dupes}")
    return runs


def _check_runs(args, runs) -> Dict[str, object]:
    """Before any model is built: every run's activation matches --model (else one line, exit 2), and the one
    preprocessing of the evaluation: that of the pre-trained weights (their tag, or a file's params.txt chain),
    else the first fine-tuned run's recorded one; open_clip's defaults when nothing says."""
    trained = {r["label"]: provenance.check_activation(f"run '{r['label']}':", r["checkpoint"], args.model,
                                                       args.force_quick_gelu) for r in runs}
    known = [(label, t) for label, t in trained.items() if t.preprocess]
    if not known:
        return {"config": None, "source": "open_clip's defaults for the model (no tag or params.txt says otherwise)"}
    label, chosen = known[0]
    for other, t in known[1:]:
        if not provenance.same_preprocess(t.preprocess, chosen.preprocess):
            log.warning(f"WARNING run '{other}' was trained with preprocessing {provenance.describe(t.preprocess)} "
                        f"({t.source}); every run is evaluated with that of '{label}'")
    return {"config": chosen.preprocess, "source": f"run '{label}': {chosen.source}"}


def _versions() -> Dict[str, str]:
    import open_clip

    from .. import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "open_clip_dive": __version__}


def run(args) -> int:
    if not args.no_plots:
        require("matplotlib", "matplotlib", "the plots (--no-plots skips them)")
    if args.report:
        results = load_results(args.report)
        files = write_reports(results, args.output_dir, plots=not args.no_plots)
        print(comparison_markdown(results))
        print("\n".join(f"wrote {p}" for p in files.values()))
        return 0
    if not args.model:
        raise DiveUsageError("--model is required (the open_clip architecture), unless --report is given")
    add_model_configs(args.model_config)
    runs = _parse_runs(args)
    if len(runs) > 1 and not args.pretrained:
        raise DiveUsageError("--finetuned runs need --pretrained (the weights fine-tuning started from): it is the "
                             "reference for RSA and WiSE-FT and the zero-shot row of the table")
    paths = load_paths_file(args.data_paths) if args.data_paths else {}
    for item in args.data_path:
        paths.update(parse_data_path(item))
    specs = resolve_suite(args.suite, paths, args.dataset, args.max_samples)
    alphas = parse_alphas(args.wise_ft) if args.wise_ft else []
    preprocess = _check_runs(args, runs)
    finetuned = [r for r in runs if r["role"] == "finetuned"]
    rsa_source = args.rsa_data or next((s.name for s in specs if s.group == "id"), specs[0].name)
    if args.rsa_data and args.rsa_data not in {s.name for s in specs}:
        raise DiveUsageError(f"--rsa-data '{args.rsa_data}' is not a dataset of the suite: {[s.name for s in specs]}")
    do_rsa = bool(finetuned) and not args.no_rsa
    if do_rsa:  # checked before any model is built, not after the first run
        require("scipy.stats", "scipy", "RSA (--no-rsa skips it)")
    from ..checks import check_writable_dir

    # now, not after the whole evaluation ran; last of the checks, because it makes the directory
    check_writable_dir(args.output_dir, "--output-dir")

    config = EvalConfig(device=args.device, precision=args.precision, batch_size=args.batch_size,
                        text_batch_size=args.text_batch_size, workers=args.workers, progress=not args.no_progress,
                        default_templates=args.templates)
    log.info(f"suite: {', '.join(f'{s.name} [{s.group}]' for s in specs)}")
    log.info(f"preprocessing of every run: {provenance.describe(preprocess['config'])} ({preprocess['source']})")
    evaluator = SuiteEvaluator(specs, config)
    errors = [f"{name}: {msg}" for name, msg in evaluator.prepare_errors.items()]
    results: Dict = {"settings": {}, "runs": {}, "wise_ft": {}, "errors": errors}
    pre_rsa = pre_weights = None
    rsa_texts = None

    for r in runs:
        label = r["label"]
        try:
            loaded = load_model(label, args.model, r["checkpoint"], args.device, args.force_quick_gelu,
                                preprocess["config"])
        except ModelError as e:
            log.error(f"ERROR {e}")
            errors.append(str(e))
            results["runs"][label] = {"role": r["role"], "checkpoint": r["checkpoint"], "error": str(e), "datasets": {}}
            continue
        log.info(f"== {label}: {loaded.model_name} {r['checkpoint'] or '(random init)'}")
        trained = checkpoint_head(r["checkpoint"]) if r["role"] == "finetuned" else None
        if trained is not None:
            log.info(f"{label}: its own classification head ({len(trained.classnames)} classes) scores the datasets "
                     "with those classes; the text-tower head scores the others")
        out = evaluator.evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, label, trained)
        errors.extend(f"{label} | {n}: {d['error']}" for n, d in out["datasets"].items()
                      if "error" in d and n not in evaluator.prepare_errors)
        entry = {"role": r["role"], "model": loaded.model_name, "checkpoint": r["checkpoint"],
                 "preprocess": dict(getattr(loaded.model.visual, "preprocess_cfg", {}) or {}), **out, "geometry": None,
                 "classifier_head": None if trained is None else {"classes": len(trained.classnames)}}
        results["runs"][label] = entry

        if do_rsa:
            try:
                emb = evaluator.rsa_embeddings(loaded.model, loaded.preprocess, loaded.tokenizer, rsa_source, args.rsa_samples)
                rsa_texts = f"{len(emb['texts'])} {emb['texts_kind']}"
                if r["role"] == "pretrained":
                    pre_rsa = emb
                elif pre_rsa is not None:
                    entry["geometry"] = geometry_report(pre_rsa["image"], emb["image"], pre_rsa["text"], emb["text"])
                    g = entry["geometry"]
                    log.info(f"{label} | RSA (cosine) images {g['image']['rsa_cosine']:.3f}  texts {g['text']['rsa_cosine']:.3f}"
                             f"  both {g['joint']['rsa_cosine']:.3f}  (centred both {g['joint']['rsa_centered']:.3f})")
                else:
                    errors.append(f"{label} | RSA: no pre-trained embeddings to compare with (the pre-trained run failed)")
            except Exception as e:
                errors.append(f"{label} | RSA on '{rsa_source}': {one_line(e)}")
                log.error(f"ERROR {label} | RSA on '{rsa_source}': {one_line(e)}")

        if alphas and r["role"] == "pretrained":
            pre_weights = snapshot(loaded.model)
        if alphas and r["role"] == "finetuned":
            results["wise_ft"][label] = _wiseft_sweep(evaluator, loaded, label, alphas, pre_weights,
                                                      results["runs"].get(args.pretrained_label), entry, errors,
                                                      trained)
        del loaded

    results["settings"] = {
        "command": " ".join(sys.argv), "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": args.model, "force_quick_gelu": args.force_quick_gelu, "preprocess": preprocess,
        "runs": {r["label"]: {"role": r["role"], "checkpoint": r["checkpoint"]} for r in runs},
        "suite": evaluator.settings(), "default_templates": args.templates, "device": args.device,
        "precision": args.precision, "batch_size": args.batch_size, "workers": args.workers,
        "max_samples": args.max_samples,
        "rsa": {"source": rsa_source, "samples": args.rsa_samples, "texts": rsa_texts,
                "similarity": "cosine (paper) and centred cosine; Spearman on upper triangles"} if do_rsa else None,
        "wise_ft": alphas or None, "versions": _versions()}
    files = write_reports(results, args.output_dir, plots=not args.no_plots)
    print()
    print(comparison_markdown(results))
    print()
    print("\n".join(f"wrote {p}" for p in files.values()))
    if errors:
        print(f"\n{len(errors)} problem(s); the table above holds everything else:", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        return 1
    return 0


def _wiseft_sweep(evaluator, loaded, label, alphas, pre_weights, pre_entry, ft_entry, errors, trained=None) -> List[Dict]:
    """Interpolate and evaluate; alpha 0 / 1 are the pre-trained / fine-tuned weights exactly, so their
    already-computed results are reused instead of evaluated again. A trained classification head is interpolated
    with the zero-shot head (alpha 0: the zero-shot head)."""
    if pre_weights is None:
        errors.append(f"{label} | WiSE-FT: no pre-trained weights (the pre-trained run failed)")
        return []
    ft_weights = snapshot(loaded.model)
    points = []
    try:
        from tqdm import tqdm

        for alpha in tqdm(alphas, desc=f"wise-ft {label}", leave=False, disable=not evaluator.config.progress):
            if alpha == 0.0 and pre_entry and "summary" in pre_entry:
                out = {"datasets": pre_entry["datasets"], "summary": pre_entry["summary"]}
            elif alpha == 1.0:
                out = {"datasets": ft_entry["datasets"], "summary": ft_entry["summary"]}
            else:
                loaded.model.load_state_dict(interpolate_state_dicts(pre_weights, ft_weights, alpha))
                out = evaluator.evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, f"{label}@{alpha:g}",
                                         trained, alpha)
            s = out["summary"]
            log.info(f"{label} | WiSE-FT alpha {alpha:g}: " + "  ".join(
                f"{k} {100 * s[k]:.2f}" for k in ("id", "ood_avg", "zeroshot_avg") if s.get(k) is not None))
            points.append({"alpha": alpha, "summary": s,
                           "datasets": {n: d.get("score") for n, d in out["datasets"].items()}})
    except DiveUsageError as e:
        errors.append(f"{label} | WiSE-FT: {e}")
        log.error(f"ERROR {label} | WiSE-FT: {e}")
    finally:
        loaded.model.load_state_dict(ft_weights)
    return points


def main(argv=None) -> int:
    _setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DiveUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
