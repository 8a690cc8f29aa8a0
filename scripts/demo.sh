#!/usr/bin/env bash
# End-to-end demo on the CPU, from a fresh clone: install, generate a small synthetic dataset,
# train a MobileNetV2 + C1 model on it for a few minutes, evaluate it, segment an image, and
# print where everything was written.
#
#   bash scripts/demo.sh
#
# Environment knobs: PYTHON (interpreter, default python), DEMO_SKIP_INSTALL=1 (skip pip),
# DEMO_DATA / DEMO_CKPT / DEMO_OUT (data, checkpoint and picture folders), DEMO_THREADS
# (torch threads per process, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
CFG=config/synthetic-mobilenetv2dilated-c1_deepsup.yaml
DATA=${DEMO_DATA:-./data/synthetic}
CKPT=${DEMO_CKPT:-./ckpt/synthetic-mobilenetv2dilated-c1_deepsup}
OUT=${DEMO_OUT:-./demo_output}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# no GPU is used even if one is present, so the demo behaves the same everywhere
export CUDA_VISIBLE_DEVICES=""
# One compute thread per process: the training process and its data-loading worker then share
# the two cores. Two-thread OpenMP ops slow down several-fold as soon as anything else runs
# (measured: 0.75 s/iteration with 1 thread, 3.4 s with 2 on a busy 2-core machine).
export OMP_NUM_THREADS=${DEMO_THREADS:-1}

SECONDS=0
step() { printf '\n=== [%4ds] %s\n' "$SECONDS" "$*"; }

if [ "${DEMO_SKIP_INSTALL:-0}" != 1 ]; then
    step "installing mit_semseg and PyTorch (pip)"
    "$PYTHON" -m pip install -q torch==2.14.1 torchvision==0.29.1 -e .
fi

# Paths in the config are overridden so that the knobs above take effect.
OVERRIDES=(
    DIR "$CKPT"
    DATASET.root_dataset "$DATA"
    DATASET.list_train "$DATA/training.odgt"
    DATASET.list_val "$DATA/validation.odgt"
)

step "generating the synthetic dataset in $DATA"
"$PYTHON" -m mit_semseg.data.synthetic --out "$DATA" --seed 0

step "training on the CPU (config $CFG)"
"$PYTHON" train.py --cfg "$CFG" --gpus cpu "${OVERRIDES[@]}"

step "evaluating on the validation set"
"$PYTHON" eval.py --cfg "$CFG" --gpu cpu "${OVERRIDES[@]}" VAL.visualize True

step "segmenting a validation image with test.py"
IMAGE=$(find "$DATA/images/validation" -type f | sort | sed -n 1p)
"$PYTHON" test.py --imgs "$IMAGE" --cfg "$CFG" --gpu cpu "${OVERRIDES[@]}" \
    TEST.result "$OUT" TEST.save_label True

MIOU=$("$PYTHON" -c 'import json, sys; print("%.4f" % json.load(open(sys.argv[1]))["mean_iou"])' \
    "$CKPT/eval_metrics.json")
step "done in ${SECONDS}s"
cat <<EOF
Validation mean IoU: $MIOU (target >= 0.80)
Outputs:
  synthetic dataset          $DATA
  checkpoints + training log $CKPT  (encoder_/decoder_epoch_*.pth, log.txt)
  evaluation metrics         $CKPT/eval_metrics.json, $CKPT/class_iou.csv
  confusion matrix           $CKPT/confusion_matrix.npy, $CKPT/confusion_matrix.png
  validation pictures        $CKPT/result/
  test.py picture + label    $OUT/
EOF
