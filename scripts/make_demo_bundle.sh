#!/usr/bin/env bash
# Rebuilds models/demo-bundle: phantom data (160 scans, seed 7), the three training runs, the export.
# CPU, about 35 minutes on an idle 2-core machine (the first two runs dominate). The numbers it reached are in models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/lunakit-demo-training}
lk=.venv/bin/lunakit
mkdir -p "$work"
[ -d "$work/phantom160" ] || $lk synth "$work/phantom160" --scans 160 --seed 7
common=(--data "$work/phantom160" --cache "$work/cache160" --no-progress)
$lk train classify "${common[@]}" --seed 0 --out "$work/cls" --epochs 10 --epoch-size 4096 --batch-size 16 \
  --optimizer adam --balanced 1 --best-metric auc --augment flip,offset,scale,rotate,noise
# --pool max: the shipped segmenter was trained before the book's average pooling became the default
$lk train segment "${common[@]}" --out "$work/seg" --epochs 20 --batch-size 16 --fn-weight 2 --best-metric f1 --pool max \
  --negatives 0.3 --bce-weight 1 --augment flip,offset=0.03,scale,rotate,noise
$lk train malignancy "${common[@]}" --out "$work/mal" --finetune "$work/cls/best.pt" --finetune-depth 6 \
  --optimizer adam --lr 0.0003 --epochs 8 --batch-size 16 --epoch-size 512 --val-stride 4 --augment flip,offset,scale,rotate,noise
rm -rf models/demo-bundle
$lk export --seg "$work/seg/best.pt" --cls "$work/cls/best.pt" --mal "$work/mal/best.pt" \
  --option min_diameter_mm=2.5 --option seg_threshold=0.7 --option center_mode=core --out models/demo-bundle
echo "demo bundle written to models/demo-bundle"
