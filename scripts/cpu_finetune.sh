#!/usr/bin/env bash
# Bounded CPU fine-tune of the bundled model on Mall + ShanghaiTech B + ShanghaiTech A (the
# README's accuracy section). Every 10th ShanghaiTech image and Mall 721-800 are held out
# for selection; Mall 801-2000 is never seen. Resumable: run it again with RESUME=1 (and a
# larger EPOCHS) to continue where it stopped.
#   LOSS=mse|bayesian  RUN=runs/cpu-bayesian  EPOCHS=4  STEPS=100  BUDGET=seconds
set -euo pipefail
SHARED=${CROWD_SHARED:-../shared}
LOSS=${LOSS:-bayesian}
RUN=${RUN:-runs/cpu-$LOSS}
extra=()
if [ "$LOSS" = mse ]; then extra+=(--count-weight 0.01); fi
if [ -n "${RESUME:-}" ]; then extra+=(--resume); fi
read -r -a more <<< "${ARGS:-}"  # e.g. ARGS="--top-stride 32" (architecture variants)
extra+=("${more[@]}")
exec nice -n 19 crowdcount train --loss "$LOSS" \
    --init-model "${INIT:-model/weights/default.keras}" \
    --data "mall=mall:$SHARED/data/mall:1-720@1" \
    --data "shb=shanghaitech:$SHARED/data/shanghaitech_b/train_data:~10-400/10@2" \
    --data "sha=shanghaitech:$SHARED/data/shanghaitech_a/train_data:~10-300/10@2.67" \
    --val "mall=mall:$SHARED/data/mall:721-800/4" \
    --val "shb=shanghaitech:$SHARED/data/shanghaitech_b/train_data:10-400/10" \
    --val "sha=shanghaitech:$SHARED/data/shanghaitech_a/train_data:10-300/10" \
    --val-max-side "${VAL_MAX_SIDE:-768}" \
    --run-dir "$RUN" --epochs "${EPOCHS:-4}" --steps-per-epoch "${STEPS:-100}" \
    --batch-size 8 --crop 384x512 --learning-rate "${LR:-1e-4}" --patience 100 \
    --time-budget "${BUDGET:-1500}" --workers 1 --verbose 2 "${extra[@]}"
