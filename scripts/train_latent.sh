#!/usr/bin/env bash
# Train the latent bundle on a 2-core CPU: the autoencoder first, then the latent UNet and the latent
# classifier side by side, one thread each (two 1-thread processes run near full speed each; one
# 2-thread process only ~1.3x faster than one thread). Every run is logged and resumable (--resume).
#   bash scripts/train_latent.sh OUT [DATA_DIR]          (then: python app.py --checkpoints OUT)
# Minutes per network from AE_MIN, UNET_MIN, CLASSIFIER_MIN; RESUME=1 continues each from OUT/train-KIND/.
# The shipped checkpoints/fashion-mnist-latent was trained with this script (its JSONs record each command):
# the UNet in two runs, 65 minutes and then RESUME=1 to 105 (UNET_MIN=105); the classifier is the
# smallest of those compared in docs/latent/CLASSIFIERS.md (scripts/compare_classifiers.py), which
# guides as well as one with 8x its FLOPs.
set -euo pipefail
out=${1:?checkpoint folder}; data=${2:-/usr/share/datasets/fashion-mnist}
resume=(); [ -n "${RESUME:-}" ] && resume=(--resume)
common=(--out "$out" --data-dir "$data" --device cpu --threads 1 "${resume[@]}")
export OMP_NUM_THREADS=1
mkdir -p "$out"
if [ -z "${SKIP_AE:-}" ]; then
  python3 -m guidescope.train autoencoder "${common[@]}" --batch-size 64 --steps 9000 --minutes "${AE_MIN:-33}" \
      --save-every 1500 --log-every 300 --seed 3 > "$out/autoencoder.out" 2>&1
fi
latent=("${common[@]}" --autoencoder "$out")
python3 -m guidescope.train unet "${latent[@]}" --base-channels 64 --channel-mults 1,2 --attention-levels 1 \
    --num-res-blocks 1 --lr 3e-4 --batch-size 64 --steps 200000 --minutes "${UNET_MIN:-105}" --save-every 2000 \
    --log-every 500 --seed 4 > "$out/unet.out" 2>&1 & pids=($!)
python3 -m guidescope.train classifier "${latent[@]}" --base-channels 32 --channel-mults 1,2 --num-res-blocks 1 \
    --attention-levels "" --lr 1e-3 --batch-size 128 --steps 30000 --minutes "${CLASSIFIER_MIN:-25}" \
    --save-every 4000 --log-every 1000 --seed 23 > "$out/classifier.out" 2>&1 & pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done
