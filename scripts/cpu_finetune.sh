#!/usr/bin/env bash
# Bounded, resumable CPU fine-tune of the bundled model on Mall + ShanghaiTech B + A (see
# docs/training.md). Every 10th ShanghaiTech image and Mall 721-800 are held out for
# selection; Mall 801-2000, the PETS video, BRT camera 2 and synthetic frames 1-8 are never
# seen. Runs at the lowest CPU priority (nice 19).
#
#   LOSS=mse|bayesian  RUN=runs/cpu-$LOSS  EPOCHS=4  STEPS=100  BUDGET=seconds  LR=1e-4
#   INIT=model.keras   ARGS="--top-stride 32 --decoder-width 128"   (grown variants start
#                      with the same output as INIT: crowdcount train --grow preserve)
#   EMPTY=1            add scenes without people: synthetic frames 9-64, the median of Mall
#                      1-720 (its sitters labelled) and head-free crops of the training images
#   DISTILL="mall=0.5 shb=0.5"   teacher-mixed targets on those sets (--loss mse); TEACHER
#                      defaults to the bundled .onnx (OpenVINO: cheap beside the TF step)
#   WARMUP=100         learning-rate warm-up steps (Adam's first steps shove a trained net)
#   KEEP_EPOCHS=1      also save every epoch (epochNNN.keras) for a mean of the last epochs
#   RESUME=1           continue the run in $RUN where it stopped (same settings, larger
#                      EPOCHS or BUDGET to go further)
#   DETACH=1           run in its own session, output appended to $RUN/train.log, its pid in
#                      $RUN/pid: the run keeps going if the shell that started it closes
#
# The run's state is all in $RUN: backup/ (weights, optimizer and epoch after each finished
# epoch: what RESUME=1 restores), best.keras, last.keras, history.csv, config.json.
set -euo pipefail
SHARED=${CROWD_SHARED:-../shared}
LOSS=${LOSS:-bayesian}
RUN=${RUN:-runs/cpu-$LOSS}
extra=()
if [ "$LOSS" = mse ]; then extra+=(--count-weight 0.01); fi
if [ -n "${RESUME:-}" ]; then extra+=(--resume); fi
if [ -n "${KEEP_EPOCHS:-}" ]; then extra+=(--keep-epochs); fi
if [ -n "${EMPTY:-}" ]; then
    extra+=(--data "synthetic=empty:synthetic:9-64@1"
            --data "mall_median=median:mall:$SHARED/data/mall:1-720@40"
            --data "mall_bg=background:mall:$SHARED/data/mall:1-720/10@1"
            --data "shb_bg=background:shanghaitech:$SHARED/data/shanghaitech_b/train_data:~10-400/10@0.33"
            --data "sha_bg=background:shanghaitech:$SHARED/data/shanghaitech_a/train_data:~10-300/10@0.85")
fi
if [ -n "${DISTILL:-}" ]; then
    for item in $DISTILL; do extra+=(--distill "$item"); done
    extra+=(--teacher "${TEACHER:-model/weights/default.onnx}")
fi
read -r -a more <<< "${ARGS:-}"  # e.g. ARGS="--top-stride 32" (architecture variants)
extra+=("${more[@]}")
cmd=(nice -n 19 crowdcount train --loss "$LOSS"
    --init-model "${INIT:-model/weights/default.keras}"
    --data "mall=mall:$SHARED/data/mall:1-720@1"
    --data "shb=shanghaitech:$SHARED/data/shanghaitech_b/train_data:~10-400/10@2"
    --data "sha=shanghaitech:$SHARED/data/shanghaitech_a/train_data:~10-300/10@2.67"
    --val "mall=mall:$SHARED/data/mall:721-800/4"
    --val "shb=shanghaitech:$SHARED/data/shanghaitech_b/train_data:10-400/10"
    --val "sha=shanghaitech:$SHARED/data/shanghaitech_a/train_data:10-300/10"
    --val-max-side "${VAL_MAX_SIDE:-768}"
    --run-dir "$RUN" --epochs "${EPOCHS:-4}" --steps-per-epoch "${STEPS:-100}"
    --batch-size 8 --crop 384x512 --learning-rate "${LR:-1e-4}" --patience 100
    --time-budget "${BUDGET:-1500}" --warmup-steps "${WARMUP:-100}" --workers 1 --verbose 2
    "${extra[@]}")
mkdir -p "$RUN"
echo "run state: $PWD/$RUN (continue with RESUME=1 and the same settings)" >&2
if [ -n "${DETACH:-}" ]; then
    setsid nohup "${cmd[@]}" >> "$RUN/train.log" 2>&1 < /dev/null &
    echo $! > "$RUN/pid"
    echo "detached: pid $(cat "$RUN/pid"), log $RUN/train.log" >&2
else
    exec "${cmd[@]}"
fi
