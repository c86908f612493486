#!/usr/bin/env bash
# Train the three shipped networks at once on one GPU, then run the full evaluation (BUDGET, default gpu).
#   bash scripts/train_all.sh CHECKPOINT_DIR DOCS_DIR [DATA_DIR]     (DOCS_DIR '-' skips the evaluation)
# Minutes per network come from UNET_MIN, CLASSIFIER_MIN, EVALUATOR_MIN; the UNet's batch size from BATCH.
# DATA_ARGS replaces the data source (default: --data-dir DATA_DIR, Fashion-MNIST), e.g.
#   DATA_ARGS="--image-folder photos --image-size 32 --holdout 0.1 --split-seed 0"
# TRAIN_ARGS adds options to every run, e.g. "--channels-last --compile".
# On a 2-core CPU, train one network at a time instead (see checkpoints/fashion-mnist/README.md); for
# one command on a folder of images, see `python -m guidescope.train all --help`.
set -euo pipefail
ck=${1:?checkpoint folder}; docs=${2:?docs folder}; data=${3:-/usr/share/datasets/fashion-mnist}
device=${DEVICE:-cuda}; batch=${BATCH:-512}
read -r -a data_args <<< "${DATA_ARGS:---data-dir $data}"
read -r -a train_args <<< "${TRAIN_ARGS:-}"
common=(--out "$ck" "${data_args[@]}" --device "$device" --log-every 500 "${train_args[@]}")
mkdir -p "$ck"
python3 -m guidescope.train unet "${common[@]}" --batch-size "$batch" --lr 4e-4 --amp \
    --minutes "${UNET_MIN:-5.5}" --steps "${UNET_STEPS:-200000}" --save-every 2000 > "$ck/unet.out" 2>&1 & pids=($!)
python3 -m guidescope.train classifier "${common[@]}" --batch-size 256 --seed 1 \
    --minutes "${CLASSIFIER_MIN:-4}" --steps "${CLASSIFIER_STEPS:-20000}" --save-every 5000 > "$ck/classifier.out" 2>&1 & pids+=($!)
python3 -m guidescope.train evaluator "${common[@]}" --batch-size 256 --seed 2 \
    --minutes "${EVALUATOR_MIN:-4}" --steps "${EVALUATOR_STEPS:-6000}" --save-every 3000 > "$ck/evaluator.out" 2>&1 & pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done  # stops here, with the failing run's exit code, if one failed
[ "$docs" = - ] || python3 -m guidescope.evaluate --checkpoints "$ck" --budget "${BUDGET:-gpu}" --out "$docs" \
    --model-card "$ck/README.md" --defaults "$ck/defaults.json" "${data_args[@]}" --device "$device" ${EVAL_ARGS:-}
