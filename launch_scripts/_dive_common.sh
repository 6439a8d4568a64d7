# shellcheck shell=bash
# Shared by the launchers in this directory (sourced, not run).  Builds DIVE_ARGS, the trainer's arguments,
# from DIVE_* environment variables whose defaults are the paper's ImageNet + CC3M recipe:
#
#   ViT-B-16 with OpenAI weights (QuickGELU), AdamW lr 1e-5, weight decay 0.1, global batch 512, 10 epochs,
#   500 warm-up steps, cosine schedule, --local-loss --gather-with-grad,
#   --loss dive --dive-avl-weight 1000 --dive-pvl-weight 1000 --dive-ref-data 'cc3m-{0000..0575}.tar'
#
# Variables (all optional; see README.md for the full table):
#   DIVE_DATA_ROOT      base dir of the default shard patterns (default: ./data)
#   DIVE_TRAIN_DATA     ID shards with class labels (default: $DIVE_DATA_ROOT/imagenet/imagenet-train-{0000..1023}.tar)
#   DIVE_TRAIN_NUM_SAMPLES  (default 1281167, ImageNet-1k train)
#   DIVE_CLASSNAMES     imagenet | FILE (default imagenet)     DIVE_TEMPLATES  openai | simple | photo | FILE (default openai)
#   DIVE_REF_DATA       reference image-caption shards (default: $DIVE_DATA_ROOT/cc3m/cc3m-{0000..0575}.tar)
#   DIVE_REF_BATCH_SIZE reference batch per rank (default: the trainer's)
#   DIVE_IMAGENET_VAL   ImageFolder dir of ImageNet val for zero-shot eval (default: none)
#   DIVE_MODEL / DIVE_PRETRAINED   (ViT-B-16-quickgelu / openai; DIVE_PRETRAINED= (empty) for random init)
#   DIVE_LOSS / DIVE_AVL_WEIGHT / DIVE_PVL_WEIGHT   (dive / 1000 / 1000)
#   DIVE_LR / DIVE_WD / DIVE_EPOCHS / DIVE_WARMUP   (1e-5 / 0.1 / 10 / 500)
#   DIVE_GLOBAL_BATCH   global ID batch (512); split evenly over the ranks.  DIVE_BATCH_SIZE sets the per-rank
#                       batch directly instead.
#   DIVE_DEVICE         cuda (default) | cpu.  cpu also defaults DIVE_PRECISION=fp32, --dist-backend gloo, DIVE_WORKERS=1.
#   DIVE_PRECISION (amp) / DIVE_WORKERS (6) / DIVE_SEED (0) / DIVE_REPORT_TO (none)
#   DIVE_LOGS           log root (default ./logs)   DIVE_NAME  run name (default dive-<model>-<date or job id>)
#   DIVE_PYTHON         interpreter (default python)
# Anything passed to a launcher after its own options is appended to DIVE_ARGS; argparse keeps the last value of a
# repeated flag, so extra arguments override the defaults above.

dive_die() { echo "$DIVE_LAUNCHER: error: $*" >&2; exit 2; }

# dive_build_args WORLD_SIZE -> fills the DIVE_ARGS array
dive_build_args() {
    local world="$1" root batch
    root="${DIVE_DATA_ROOT:-./data}"
    # (brace patterns cannot sit inside ${VAR:-default}: its first '}' would end the expansion)
    local default_train="$root/imagenet/imagenet-train-{0000..1023}.tar"
    local default_ref="$root/cc3m/cc3m-{0000..0575}.tar"
    DIVE_DEVICE="${DIVE_DEVICE:-cuda}"
    if [ "$DIVE_DEVICE" = cpu ]; then
        DIVE_PRECISION="${DIVE_PRECISION:-fp32}"
        DIVE_WORKERS="${DIVE_WORKERS:-1}"
        DIVE_DIST_BACKEND="${DIVE_DIST_BACKEND:-gloo}"
    fi
    if [ -n "${DIVE_BATCH_SIZE:-}" ]; then
        batch="$DIVE_BATCH_SIZE"
    else
        local global="${DIVE_GLOBAL_BATCH:-512}"
        [ $(( global % world )) = 0 ] || dive_die "the global batch DIVE_GLOBAL_BATCH=$global does not divide over $world ranks; set DIVE_BATCH_SIZE (per rank) or change DIVE_GLOBAL_BATCH"
        batch=$(( global / world ))
    fi
    DIVE_ARGS=(
        --dataset-type webdataset
        --train-data "${DIVE_TRAIN_DATA:-$default_train}"
        --train-num-samples "${DIVE_TRAIN_NUM_SAMPLES:-1281167}"
        --classnames "${DIVE_CLASSNAMES:-imagenet}"
        --templates "${DIVE_TEMPLATES:-openai}"
        --model "${DIVE_MODEL:-ViT-B-16-quickgelu}"
        --pretrained "${DIVE_PRETRAINED-openai}"
        --loss "${DIVE_LOSS:-dive}"
        --lr "${DIVE_LR:-1e-5}"
        --wd "${DIVE_WD:-0.1}"
        --epochs "${DIVE_EPOCHS:-10}"
        --warmup "${DIVE_WARMUP:-500}"
        --lr-scheduler cosine
        --batch-size "$batch"
        --local-loss --gather-with-grad
        --device "$DIVE_DEVICE"
        --precision "${DIVE_PRECISION:-amp}"
        --workers "${DIVE_WORKERS:-6}"
        --seed "${DIVE_SEED:-0}"
        --report-to "${DIVE_REPORT_TO:-none}"
        --save-frequency 1
        --resume latest
        --dive-logs "${DIVE_LOGS:-./logs}"
        --name "${DIVE_NAME:-dive-${DIVE_MODEL:-ViT-B-16-quickgelu}-${DIVE_RUN_ID:-$(date +%Y%m%d-%H%M%S)}}"
    )
    case "${DIVE_LOSS:-dive}" in
        clip|flyp) ;;  # no reference stream
        *) DIVE_ARGS+=(
               --dive-avl-weight "${DIVE_AVL_WEIGHT:-1000}"
               --dive-pvl-weight "${DIVE_PVL_WEIGHT:-1000}"
               --dive-ref-data "${DIVE_REF_DATA:-$default_ref}"
           ) ;;
    esac
    [ -n "${DIVE_DIST_BACKEND:-}" ] && DIVE_ARGS+=(--dist-backend "$DIVE_DIST_BACKEND")
    [ -n "${DIVE_REF_BATCH_SIZE:-}" ] && DIVE_ARGS+=(--dive-ref-batch-size "$DIVE_REF_BATCH_SIZE")
    [ -n "${DIVE_IMAGENET_VAL:-}" ] && DIVE_ARGS+=(--imagenet-val "$DIVE_IMAGENET_VAL" --zeroshot-frequency 1)
    return 0
}
