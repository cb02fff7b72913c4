#!/usr/bin/env bash
# Rebuilds models/demo-bundle (issue #16's recipe): 160 phantom scans of the `wide` family (scanners,
# anatomy, nodule mix and hard negatives of docs/phantoms.md; seed 7), all resampled to
# 0.8 x 0.7 x 0.7 mm; the segmenter trained with the intensity and spacing augmentations; its false
# positives on the training scans mined as hard negatives; the classifier trained with them and
# every augmentation, the malignancy model fine-tuned from it; exported with mirror means on.
#
#   bash scripts/make_demo_bundle.sh [WORKDIR] [OUT]      # OUT defaults to models/demo-bundle
#
# CPU, 2-core machine, steps timed with other jobs beside them: synth ~4 min, segment ~20, mining ~2,
# classify ~40 (18 epochs of 110-140 s), malignancy ~2: about 68 minutes. The numbers it reached are
# in models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/lunakit-demo-training}
out=${2:-models/demo-bundle}
lk=.venv/bin/lunakit
mkdir -p "$work"
[ -d "$work/wide160" ] || $lk synth "$work/wide160" --scans 160 --seed 7 --family wide
# One voxel size whatever the scanner, in training and (through the bundle's options) in analysis.
# 0.8 mm between slices keeps the thinnest wide scans (48 x 0.6 mm) at least one crop (32) deep.
spacing=0.8,0.7,0.7
common=(--data "$work/wide160" --cache "$work/cache_wide160" --no-progress --resample-mm "$spacing")
$lk train segment "${common[@]}" --out "$work/seg" --epochs 20 --batch-size 16 --fn-weight 2 --best-metric f1 \
  --negatives 0.3 --bce-weight 1 --augment flip,offset=0.03,scale,rotate,noise,zoom=0.2,blur,contrast,shift
# Hard negatives: every candidate the segmenter finds on the training split that is no nodule. Which
# rows these are depends on the segmenter and the options alone, so no classifier is needed here.
# Mining uses seg_threshold 0.7; the bundle segments at 0.9, chosen afterwards on the training set's
# validation split (CPM 0.767 at 0.7 and 0.8, 0.801 at 0.9, 0.789 at 0.95).
base=(--option min_diameter_mm=2.5 --option center_mode=core)
$lk mine-negatives --data "$work/wide160" --seg "$work/seg/best.pt" "${base[@]}" --option seg_threshold=0.7 \
  --option "resample_mm=[$spacing]" --split train --quiet --out "$work/hard_negatives.csv"
$lk train classify "${common[@]}" --seed 0 --out "$work/cls" --epochs 18 --epoch-size 4096 --batch-size 16 \
  --optimizer adam --balanced 1 --best-metric auc --augment flip,offset,scale,rotate,noise,zoom,blur,contrast,shift \
  --hard-negatives "$work/hard_negatives.csv"
$lk train malignancy "${common[@]}" --out "$work/mal" --finetune "$work/cls/best.pt" --finetune-depth 6 \
  --optimizer adam --lr 0.0003 --epochs 8 --batch-size 16 --epoch-size 512 --val-stride 4 \
  --augment flip,offset,scale,rotate,noise,contrast,shift
rm -rf "$out"
$lk export --seg "$work/seg/best.pt" --cls "$work/cls/best.pt" --mal "$work/mal/best.pt" "${base[@]}" \
  --option seg_threshold=0.9 --option cls_flips=true --out "$out"
echo "demo bundle written to $out"
