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
$lk train segment "${common[@]}" --out "$work/seg" --epochs 20 --batch-size 16 --fn-weight 2 --best-metric f1 \
  --negatives 0.5 --bce-weight 1 --augment flip,offset=0.03,scale,rotate,noise
$lk train malignancy "${common[@]}" --out "$work/mal" --finetune "$work/cls/best.pt" --finetune-depth 6 \
  --optimizer adam --lr 0.0003 --epochs 8 --batch-size 16 --epoch-size 512 --val-stride 4 --augment flip,offset,scale,rotate,noise
rm -rf models/demo-bundle
$lk export --seg "$work/seg/best.pt" --cls "$work/cls/best.pt" --mal "$work/mal/best.pt" \
  --option min_diameter_mm=2.5 --out models/demo-bundle
echo "demo bundle written to models/demo-bundle"
