#!/usr/bin/env bash
# Train the three shipped networks at once on one GPU, then run the full evaluation.
#   bash scripts/train_all.sh CHECKPOINT_DIR DOCS_DIR [DATA_DIR]     (DOCS_DIR '-' skips the evaluation)
# Minutes per network come from DIFFUSION_MIN, CLASSIFIER_MIN, EVALUATOR_MIN; the batch size from BATCH.
# On a 2-core CPU, train one network at a time instead (see checkpoints/fashion-mnist/README.md).
set -euo pipefail
ck=${1:?checkpoint folder}; docs=${2:?docs folder}; data=${3:-/usr/share/datasets/fashion-mnist}
device=${DEVICE:-cuda}; batch=${BATCH:-512}
common=(--out "$ck" --data-dir "$data" --device "$device" --log-every 500)
mkdir -p "$ck"
python3 -m guidance.train diffusion "${common[@]}" --batch-size "$batch" --lr 4e-4 --amp \
    --minutes "${DIFFUSION_MIN:-5.5}" --steps "${DIFFUSION_STEPS:-200000}" --save-every 2000 > "$ck/diffusion.out" 2>&1 &
python3 -m guidance.train classifier "${common[@]}" --batch-size 256 --seed 1 \
    --minutes "${CLASSIFIER_MIN:-4}" --steps "${CLASSIFIER_STEPS:-20000}" --save-every 5000 > "$ck/classifier.out" 2>&1 &
python3 -m guidance.train evaluator "${common[@]}" --batch-size 256 --seed 2 \
    --minutes "${EVALUATOR_MIN:-4}" --steps "${EVALUATOR_STEPS:-6000}" --save-every 3000 > "$ck/evaluator.out" 2>&1 &
wait
[ "$docs" = - ] || python3 -m guidance.evaluate --checkpoints "$ck" --out "$docs" --data-dir "$data" --device "$device" ${EVAL_ARGS:-}
