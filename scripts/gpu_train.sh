#!/usr/bin/env bash
# Train the default model on a lent GPU machine (Keras 3 on JAX): Mall + ShanghaiTech B + A,
# every 10th ShanghaiTech image held out (the recipe of the README's accuracy section;
# the bundled model's GPU runs used Mall + ShanghaiTech B only, see model/weights/default.json).
# Expects .gpu/data (made by scripts/pack_for_gpu.py), .gpu/weights (the ImageNet
# MobileNetV2 file) and .whl (keras, namex, optree wheels for that machine's Python).
# Writes the run to $OUT. Budget: TRAIN_SECONDS of training. INIT=weights.h5 continues
# from an earlier run's weights instead of ImageNet. ARGS adds flags (e.g. "--top-stride 32").
# Trains with --resident (all images in GPU memory, augmentation inside the jitted step,
# STEPS_PER_CALL updates per call) in PRECISION (bfloat16 by default; the saved models are
# float32 either way). RESIDENT=0 falls back to the host PyDataset pipeline with 14 loader
# threads.
# The grown recipe (docs/training.md): INIT=model/weights/default.keras ARGS="--top-stride 32
# --decoder-width 128" starts the grown network with the bundled model's output; EMPTY=1 adds
# scenes without people (synthetic frames, the median of Mall 1-720, head-free crops of the
# packed training images: all made on that machine from code and .gpu/data); DISTILL="mall=0.5
# shb=0.5" mixes the teacher's maps (TEACHER, default the bundled .keras) into those sets'
# targets, which runs on the host pipeline (RESIDENT=0 is implied). WARMUP (default 200)
# steps of learning-rate warm-up: Adam's first steps at full rate shove a trained network.
# WORK (default /tmp) holds the installed wheels, the package links and the run folder;
# NO_INSTALL=1 skips the wheels (a machine whose Python already has Keras and JAX: a CPU
# dry run of the recipe, e.g. WORK=$(mktemp -d) OUT=runs/gpu-dry NO_INSTALL=1).
set -uo pipefail
OUT=${OUT:-runs/gpu}
WORK=${WORK:-/tmp}
mkdir -p "$OUT"
extra=()
if [ -n "${EMPTY:-}" ]; then
    extra+=(--data "synthetic=empty:synthetic:9-64@1"
            --data "mall_median=median:generic:.gpu/data/mall:1-720@40"
            --data "mall_bg=background:generic:.gpu/data/mall:1-720/10@1"
            --data "shb_bg=background:generic:.gpu/data/shb_train:~10-400/10@0.33"
            --data "sha_bg=background:generic:.gpu/data/sha_train:~10-300/10@0.85")
fi
if [ -n "${DISTILL:-}" ]; then
    for item in $DISTILL; do extra+=(--distill "$item"); done
    extra+=(--teacher "${TEACHER:-model/weights/default.keras}")
    RESIDENT=0
fi
if [ -z "${NO_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" .whl/*.whl || exit 1
fi
# The checkout's folders under the crowdcount namespace, as an install would lay them out.
mkdir -p "$WORK/ns/crowdcount"
for pkg in model streamer training web; do ln -sfn "$PWD/$pkg" "$WORK/ns/crowdcount/$pkg"; done
export PYTHONPATH=$WORK/site:$WORK/ns KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi -L || echo "no nvidia-smi: not a GPU machine"
python3 -m crowdcount.training train --loss "${LOSS:-mse}" \
    --data mall=generic:.gpu/data/mall:1-720@1 \
    --data shb=generic:.gpu/data/shb_train:~10-400/10@2 \
    --data sha=generic:.gpu/data/sha_train:~10-300/10@2.67 \
    --val mall=generic:.gpu/data/mall:721-800 \
    --val shb=generic:.gpu/data/shb_train:10-400/10 \
    --val sha=generic:.gpu/data/sha_train:10-300/10 \
    --val-max-side 768 \
    ${INIT:+--init-model "$INIT"} \
    --backbone-weights .gpu/weights/mobilenet_v2_1.0_no_top_imagenet.weights.h5 \
    --run-dir "$WORK/run" --epochs 400 --steps-per-epoch 100 --batch-size 16 \
    --learning-rate "${LR:-5e-4}" --count-weight 0.01 --patience 40 \
    --warmup-steps "${WARMUP:-200}" \
    --time-budget "${TRAIN_SECONDS:-400}" --workers 14 --verbose 2 \
    --precision "${PRECISION:-bfloat16}" \
    ${ARGS:-} "${extra[@]}" \
    $([ "${RESIDENT:-1}" = 1 ] && echo --resident --steps-per-call "${STEPS_PER_CALL:-10}") \
    2>&1 | tee "$OUT/train.log"
for f in best.keras last.keras start.keras history.csv result.json config.json; do
    cp "$WORK/run/$f" "$OUT/" 2>/dev/null
done
ls -la "$OUT"
