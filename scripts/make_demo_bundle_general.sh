#!/usr/bin/env bash
# The generalizing recipe of issue #16, for the lead to run when retraining the demo bundle:
# make_demo_bundle.sh's three runs on the `wide` phantom family (scanners, anatomy, nodule mix
# and hard negatives of docs/phantoms.md), with the intensity and spacing augmentations, then
# one round of hard-negative mining (the segmenter's own false positives on the training scans)
# and a classifier retrained with them. Writes the bundle to OUT, not to models/demo-bundle.
#
#   bash scripts/make_demo_bundle_general.sh [WORKDIR] [OUT]
#
# CPU: about 55-65 minutes on an idle 2-core machine (synth ~4 min, classify ~17, segment ~12,
# malignancy ~3, mining ~4, the second classify ~17). Compare with scripts/cross_family.sh and
# `lunakit validate` on sets of other families before shipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/lunakit-demo-training-general}
out=${2:-$work/bundle-general}
lk=.venv/bin/lunakit
mkdir -p "$work"
[ -d "$work/wide160" ] || $lk synth "$work/wide160" --scans 160 --seed 7 --family wide
common=(--data "$work/wide160" --cache "$work/cache_wide160" --no-progress)
cls_augment=flip,offset,scale,rotate,noise,zoom,blur,contrast,shift
$lk train classify "${common[@]}" --seed 0 --out "$work/cls" --epochs 10 --epoch-size 4096 --batch-size 16 \
  --optimizer adam --balanced 1 --best-metric auc --augment "$cls_augment"
$lk train segment "${common[@]}" --out "$work/seg" --epochs 20 --batch-size 16 --fn-weight 2 --best-metric f1 \
  --negatives 0.3 --bce-weight 1 --augment flip,offset=0.03,scale,rotate,noise,zoom=0.2,blur,contrast,shift
options=(--option min_diameter_mm=2.5 --option seg_threshold=0.7 --option center_mode=core)
$lk export --seg "$work/seg/best.pt" --cls "$work/cls/best.pt" "${options[@]}" --out "$work/bundle-round1"
# Hard negatives: what the round-1 bundle wrongly finds on the training split, then a classifier that sees them.
$lk mine-negatives --data "$work/wide160" --bundle "$work/bundle-round1" --split train --quiet \
  --out "$work/hard_negatives.csv"
$lk train classify "${common[@]}" --seed 0 --out "$work/cls2" --epochs 10 --epoch-size 4096 --batch-size 16 \
  --optimizer adam --balanced 1 --best-metric auc --augment "$cls_augment" --hard-negatives "$work/hard_negatives.csv"
$lk train malignancy "${common[@]}" --out "$work/mal" --finetune "$work/cls2/best.pt" --finetune-depth 6 \
  --optimizer adam --lr 0.0003 --epochs 8 --batch-size 16 --epoch-size 512 --val-stride 4 \
  --augment flip,offset,scale,rotate,noise,contrast,shift
rm -rf "$out"
$lk export --seg "$work/seg/best.pt" --cls "$work/cls2/best.pt" --mal "$work/mal/best.pt" "${options[@]}" --out "$out"
echo "generalizing bundle written to $out (models/demo-bundle unchanged)"
