"""The plugin's flags, parsed before open_clip's own, and checked before anything is built.

`parse_args(argv)` splits argv: the plugin's flags here, the rest to open_clip's parser; `--help`
prints both. Only plain data goes on `args` (open_clip dumps vars(args) to params.txt and W&B).
"""

import argparse
import os
import sys

from .errors import DiveUsageError

PLUGIN_FLAGS_DEST = "dive_plugin_flags"


def plugin_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: otherwise '--lo' would be taken as --loss and not reach open_clip's --local-loss
    parser = argparse.ArgumentParser(prog="python -m open_clip_dive.main", add_help=False, allow_abbrev=False,
                                     description="DiVE robust fine-tuning on top of open_clip_train.")
    g = parser.add_argument_group("loss (open_clip_dive)")
    g.add_argument("--loss", default=None,
                   help="Loss from the registry: clip (open_clip's own choice), flyp, dive, avl, pvl, snd, replay, cosine, "
                        "ce, lp-ft, lipsum, car-ft (README: Losses), "
                        "or 'package.module:factory'. Default: the loss the other flags imply (DiVE's own flags "
                        "-> dive, --dive-replay-weight -> replay, --classnames alone -> flyp); without any of "
                        "them, plain open_clip_train behaviour.")
    g.add_argument("--dive-avl-weight", type=float, default=1000.0,
                   help="Weight of the average vector loss (AVL); also the SnD weight. Paper: 1000.")
    g.add_argument("--dive-pvl-weight", type=float, default=1000.0,
                   help="Weight of the pairwise vector loss (PVL). Paper: 1000.")
    g.add_argument("--dive-ema-momentum", type=float, default=0.99,
                   help="Momentum a of the EMA vector m <- a*m + (1-a)*batch mean, in [0, 1). Paper: 0.99.")
    g.add_argument("--dive-space", choices=["normalized", "raw"], default="normalized",
                   help="Difference vectors of the L2-normalised embeddings (default; inferred, the paper does not "
                        "say: lambda = 1000 only makes sense for bounded unit-vector differences, and zero-shot "
                        "geometry lives there) or of the raw encoder features.")
    g.add_argument("--dive-reduction", choices=["sum", "mean"], default="sum",
                   help="Each squared norm ||.||^2 summed over the D dimensions (default; the paper's formula) or "
                        "averaged over them as F.mse_loss does: under 'mean' a weight w is w / D under 'sum'.")
    g.add_argument("--dive-ema-order", choices=["before", "after"], default="before",
                   help="AVL reads m from before this step's update (default; m is the running average of the past "
                        "steps, as an EMA target usually is) or after folding in this batch's mean. The paper does "
                        "not say; at momentum 0.99 the two differ by 1%% of a batch mean.")
    g.add_argument("--dive-replay-weight", type=float, default=1.0,
                   help="Weight of the contrastive loss on reference pairs for --loss replay.")

    g.add_argument("--dive-cosine-weight", type=float, default=1000.0,
                   help="Weight of the cosine-similarity-matrix constraint for --loss cosine (the paper's ablation).")

    g = parser.add_argument_group("classification head and regularisers: ce, lp-ft, lipsum, car-ft (open_clip_dive)")
    g.add_argument("--dive-head-init", default=None,
                   help="Start the classification head from this file (python -m open_clip_dive.tools.linear_probe) "
                        "instead of the zero-shot head; required by --loss lp-ft.")
    g.add_argument("--dive-lipsum-weight", type=float, default=1.0,
                   help="Weight of the Lipsum-FT energy-gap regulariser (--loss lipsum).")
    g.add_argument("--dive-lipsum-texts", type=int, default=80,
                   help="Random-token texts M drawn per step for --loss lipsum.")
    g.add_argument("--dive-lipsum-tokens", type=int, default=8,
                   help="Tokens per random text for --loss lipsum (between the start and end tokens).")
    g.add_argument("--dive-car-weight", type=float, default=1.0,
                   help="Weight of the CAR-FT context-distribution KL (--loss car-ft); the contexts are --templates.")

    g = parser.add_argument_group("reference stream (open_clip_dive)")
    g.add_argument("--dive-ref-data", default=None,
                   help="Reference image-caption WebDataset shards (brace pattern; '::' joins sources), "
                        "e.g. 'cc3m/{00000..00575}.tar' as img2dataset writes them.")
    g.add_argument("--dive-ref-batch-size", type=int, default=None,
                   help="Reference batch size B' per GPU. Default: --batch-size.")
    g.add_argument("--dive-ref-num-samples", type=int, default=None,
                   help="Samples per reference 'epoch'. Default: one reference batch per training step.")
    g.add_argument("--dive-ref-workers", type=int, default=None, help="Reference loader workers. Default: --workers.")
    g.add_argument("--dive-ref-resampled", action=argparse.BooleanOptionalAction, default=True,
                   help="Sample reference shards with replacement (default), so a small set with few shards works.")
    g.add_argument("--dive-ref-upsampling-factors", default=None,
                   help="Per-source sampling weights for '::'-joined reference sources (with resampling).")
    g.add_argument("--dive-ref-pretrained", default=None,
                   help="Weights of the frozen reference model. Default: the same as --pretrained.")
    g.add_argument("--dive-ref-precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="Keep the frozen reference model in this precision (bf16/fp16 save memory on GPU).")
    g.add_argument("--dive-ref-cache", default=None,
                   help="Directory of frozen-model embeddings of the reference shards (tools.cache_reference): the "
                        "frozen model is neither kept nor run. Implies --no-dive-ref-augment.")
    g.add_argument("--dive-ref-augment", action=argparse.BooleanOptionalAction, default=True,
                   help="Reference images get the training augmentation (default) or open_clip's deterministic "
                        "eval transform (--no-dive-ref-augment).")

    g.add_argument("--dive-bn-eval", action=argparse.BooleanOptionalAction, default=None,
                   help="Keep BatchNorm layers of the trainable model in eval mode (pre-trained statistics, not "
                        "updated). Default: on for losses with the frozen model, whose difference vectors must "
                        "measure the weights' change, not train- vs eval-mode normalisation; off otherwise.")

    g.add_argument("--dive-deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="Run the trainable model with its stochastic layers off (eval mode: no dropout, "
                        "drop-path or patch dropout) for the whole step, ID part included. Default: on for "
                        "losses with the frozen model, so that at step 0 every difference vector is exactly 0; "
                        "off otherwise. A layer that stays random in eval mode is refused by name.")

    g = parser.add_argument_group("class-labelled ID data (open_clip_dive)")
    g.add_argument("--classnames", default=None,
                   help="Class names for ID shards with 'cls' labels: 'imagenet' or a file (JSON list, JSON "
                        "{index: name}, or one name per line). Turns labels into prompts (FLYP).")
    g.add_argument("--templates", default="openai",
                   help="Prompt templates: openai (80, default), simple (7), photo (1), or a file of strings "
                        "with a '{}' placeholder. One is drawn per sample and epoch.")

    g = parser.add_argument_group("run (open_clip_dive)")
    g.add_argument("--dive-logs", default=None,
                   help="Same as open_clip's --logs, which torchrun swallows (pytorch/pytorch#120601).")
    g.add_argument("--dive-model-config", action="append", default=None,
                   help="Extra open_clip model config (JSON file or directory), registered before the model is built.")
    g.add_argument("--dive-eval-suite", default=None,
                   help="Evaluation suite (name or YAML/JSON file) run after every epoch; see `python -m "
                        "open_clip_dive.evaluate --help`.")
    g.add_argument("--dive-eval-data-paths", default=None,
                   help="YAML/JSON {dataset: path} for the datasets of --dive-eval-suite.")
    g.add_argument("--dive-eval-max-samples", type=int, default=None,
                   help="Cap every dataset of --dive-eval-suite at this many samples (a quick look, not a benchmark).")
    g.add_argument("--dive-preempt-signals", default="USR1,TERM",
                   help="Signals that make the run finish its step, checkpoint and exit 75 for requeueing "
                        "(comma list; 'none' to disable).")
    g.add_argument("--dive-fused-adamw", action="store_true",
                   help="Step open_clip's AdamW (--opt adamw) with torch's fused kernel: the same update up to "
                        "rounding, ~4x faster on CPU, where torch's default is a loop over the tensors.")
    g.add_argument("--dive-log-sample-keys", action="store_true",
                   help="Debug: every rank appends the keys of the samples it trained on to sample_keys_rank<R>.txt.")
    return parser


def plugin_defaults() -> dict:
    """Every plugin flag's default, by dest (for code that builds losses from its own namespace)."""
    return vars(plugin_parser().parse_args([]))


def given_plugin_flags(argv) -> list:
    """The dests of the plugin flags present in argv, in order (defaults do not count)."""
    dests = {opt: action.dest for action in plugin_parser()._actions for opt in action.option_strings}
    given = [dests[a.split("=", 1)[0]] for a in argv if a.split("=", 1)[0] in dests]
    return list(dict.fromkeys(given))


def plugin_flags_given(argv) -> bool:
    """Whether any plugin flag is present (without any, main() behaves exactly as open_clip_train.main)."""
    return bool(given_plugin_flags(argv))


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def print_help(upstream_parse_args):
    plugin_parser().print_help()
    print("\nopen_clip_train options:\n")
    try:
        upstream_parse_args(["--help"])
    except SystemExit:
        pass


def parse_args(argv, upstream_parse_args):
    """Parse plugin flags, then open_clip's; returns one namespace with both."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print_help(upstream_parse_args)
        sys.exit(0)
    known, rest = plugin_parser().parse_known_args(argv)
    if known.dive_logs is not None:
        rest += ["--logs", known.dive_logs]
    args = upstream_parse_args(rest)
    for key, value in vars(known).items():
        setattr(args, key, value)
    given = given_plugin_flags(argv)
    setattr(args, PLUGIN_FLAGS_DEST, given)  # plain data: params.txt shows which plugin flags were given
    if given:
        from .loss_choice import choose_loss

        args.loss, args.dive_loss_reason = choose_loss(args.loss, given)
    return args


def _local_shards(pattern: str):
    """Local files named by a brace pattern ('::' sources); None for remote / pipe: URLs."""
    import braceexpand

    paths = []
    for source in pattern.split("::"):
        if "://" in source or source.startswith("pipe:"):
            return None
        paths += list(braceexpand.braceexpand(source))
    return paths


def check_shards(pattern: str, flag: str):
    paths = _local_shards(pattern)
    if paths is None:
        return
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        hint = f" ({len(missing)} of {len(paths)} missing)" if len(paths) > 1 else ""
        raise DiveUsageError(f"{flag}: shard '{missing[0]}' does not exist{hint}; check the path and brace range")


def validate(args):
    """Reject bad plugin input before anything is built. Raises DiveUsageError with one clear line."""
    from .losses import is_loss, loss_uses_reference

    if args.loss is not None and not (is_loss(args.loss) or ":" in args.loss):
        from .losses import loss_entrypoint

        loss_entrypoint(args.loss)  # raises with the known names and close matches
    for flag in ("dive_avl_weight", "dive_pvl_weight", "dive_replay_weight", "dive_cosine_weight",
                 "dive_lipsum_weight", "dive_car_weight"):
        if getattr(args, flag) < 0:
            raise DiveUsageError(f"--{flag.replace('_', '-')}: must be >= 0, got {getattr(args, flag)}")
    if not 0.0 <= args.dive_ema_momentum < 1.0:
        raise DiveUsageError(f"--dive-ema-momentum: must be in [0, 1), got {args.dive_ema_momentum}")
    if args.dive_ref_batch_size is not None and args.dive_ref_batch_size < 1:
        raise DiveUsageError(f"--dive-ref-batch-size: must be >= 1, got {args.dive_ref_batch_size}")
    if args.dive_ref_num_samples is not None and args.dive_ref_num_samples < 1:
        raise DiveUsageError(f"--dive-ref-num-samples: must be >= 1, got {args.dive_ref_num_samples}")
    if args.dive_fused_adamw and getattr(args, "opt", "adamw").lower() != "adamw":
        raise DiveUsageError(f"--dive-fused-adamw: applies to open_clip's AdamW, not --opt {args.opt}; drop one")

    if args.loss is not None:
        from .losses import check_loss_args

        check_loss_args(args)  # the loss's own flag checks (class names, head file, ...)
    uses_reference = args.loss is not None and loss_uses_reference(args.loss)
    if uses_reference and not args.dive_ref_data:
        implied = getattr(args, "dive_loss_reason", "").startswith("implied")
        raise DiveUsageError(f"--loss {args.loss}{f' ({args.dive_loss_reason})' if implied else ''} trains on "
                             "reference pairs: give them with --dive-ref-data "
                             "'path/{00000..00099}.tar' (image + txt shards, e.g. CC3M from img2dataset)")
    if args.horovod and args.accum_freq > 1:
        raise DiveUsageError(f"--accum-freq {args.accum_freq} with --horovod: open_clip builds Horovod's optimizer for "
                             "one backward per step; use torchrun/srun (DDP) for accumulation, or --accum-freq 1")
    if args.horovod:
        try:
            import horovod.torch  # noqa: F401
        except ImportError as e:
            raise DiveUsageError(f"--horovod: horovod is not importable ({e}); build it with scripts/build_horovod.sh "
                                 "or launch with torchrun/srun instead") from None
    if args.dive_ref_data:
        check_shards(args.dive_ref_data, "--dive-ref-data")
    if args.dive_ref_cache:
        from .refcache import read_meta

        if args.dive_space == "raw":
            raise DiveUsageError("--dive-space raw: the reference cache holds normalised embeddings; drop "
                                 "--dive-ref-cache or use --dive-space normalized")
        read_meta(args.dive_ref_cache)
        if args.dive_ref_pretrained:
            raise DiveUsageError("--dive-ref-cache replaces the frozen model: drop --dive-ref-pretrained (the cache "
                                 "records which weights made it)")
    if args.train_data and args.dataset_type in ("webdataset", "auto") and ".tar" in args.train_data:
        check_shards(args.train_data, "--train-data")
    if args.classnames is not None:
        from .prompts import load_classnames, load_templates

        load_classnames(args.classnames)
        load_templates(args.templates)
        if args.dataset_type not in ("webdataset", "auto"):
            raise DiveUsageError("--classnames: class-labelled data must be WebDataset shards with 'cls' "
                                 f"(got --dataset-type {args.dataset_type})")
    if args.dive_eval_suite:
        from .evaluate import check_eval_suite

        check_eval_suite(args)
    for path in args.dive_model_config or ():
        if not os.path.exists(path):
            raise DiveUsageError(f"--dive-model-config: '{path}' does not exist")
    from .checks import check_args

    check_args(args)
