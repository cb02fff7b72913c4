#!/usr/bin/env bash
# Rebuilds models/demo-bundle: phantom data (seed 7), the three training runs, the export.
# CPU, about an hour on 2 cores (the first two runs dominate). The numbers it reached are in models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/lunakit-demo-training}
lk=.venv/bin/lunakit
mkdir -p "$work"
[ -d "$work/phantom40" ] || $lk synth "$work/phantom40" --scans 40 --seed 7
common=(--data "$work/phantom40" --cache "$work/cache40" --no-progress)
$lk train classify "${common[@]}" --seed 0 --out "$work/cls" --epochs 6 --epoch-size 1024 --batch-size 16 \
  --optimizer adam --balanced 1 --augment flip,offset,scale,rotate,noise
$lk train segment "${common[@]}" --seed 1 --out "$work/seg" --epochs 8 --epoch-size 4000 --batch-size 16 --num-workers 1
# best.pt of segment is kept by recall, which the first epoch already saturates on phantoms;
# the demo takes the last epoch (state.pt), the most trained one.
.venv/bin/python -m lunakit.train.last_checkpoint "$work/seg" "$work/seg/last.pt"
$lk train malignancy "${common[@]}" --seed 1 --out "$work/mal" --finetune "$work/cls/best.pt" --finetune-depth 2 \
  --epochs 20 --balanced 1 --val-stride 4 --lr 0.01 --augment flip,rotate
rm -rf models/demo-bundle
$lk export --seg "$work/seg/last.pt" --cls "$work/cls/best.pt" --mal "$work/mal/best.pt" --out models/demo-bundle
echo "demo bundle written to models/demo-bundle"
