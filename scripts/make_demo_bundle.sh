#!/usr/bin/env bash
# Rebuilds models/demo-bundle (issue #16's recipe): 160 phantom scans of the `wide` family (scanners,
# anatomy, nodule mix and hard negatives of docs/phantoms.md; seed 7), all resampled to
# 0.8 x 0.7 x 0.7 mm; the segmenter trained with the intensity and spacing augmentations; its false
# positives on the training scans mined as hard negatives; the classifier trained with them and
# every augmentation, then fine-tuned on its own confident false positives (a second round); the
# malignancy model fine-tuned from it; exported with mirror means on.
#
#   bash scripts/make_demo_bundle.sh [WORKDIR] [OUT]      # OUT defaults to models/demo-bundle
#   TINY=1 bash scripts/make_demo_bundle.sh WORKDIR      # the same steps on 6 small scans, one short
#                                                        # epoch each (OUT defaults to WORKDIR/bundle)
#
# Each step prints its wall time. On the 2-core machine with nothing beside it the whole run took 56 min
# (synth 1, segment 17, mining 3, classify 21, mining2 5, finetune 7, malignancy 2; docs/training.md).
# LUNAKIT names the lunakit command (default .venv/bin/lunakit).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/lunakit-demo-training}
lk=${LUNAKIT:-.venv/bin/lunakit}
if [ "${TINY:-0}" = 1 ]; then
  out=${2:-$work/bundle}
  # 60 slices: the thinnest wide scans (0.6 mm) stay one crop (32 slices of 0.8 mm) deep.
  synth_opts=(--scans 6 --shape 60 96 96)
  seg_opts=(--epochs 1 --epoch-size 16 --batch-size 4)
  cls_opts=(--epochs 1 --epoch-size 32 --batch-size 8 --conv-channels 4)
  ft_opts=(--epochs 1 --epoch-size 32 --batch-size 8)
  mal_opts=(--epochs 1 --epoch-size 16 --batch-size 8 --conv-channels 4 --val-stride 2)
else
  out=${2:-models/demo-bundle}
  synth_opts=(--scans 160)
  seg_opts=(--epochs 20 --batch-size 16)
  cls_opts=(--epochs 12 --epoch-size 4096 --batch-size 16)
  ft_opts=(--epochs 4 --epoch-size 4096 --batch-size 16)
  mal_opts=(--epochs 8 --batch-size 16 --epoch-size 512 --val-stride 4)
fi
step() {  # step NAME COMMAND...: runs the command and prints how long it took
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo "make_demo_bundle: $name took $((SECONDS - start)) s" >&2
}
mkdir -p "$work"
[ -d "$work/wide160" ] || step synth $lk synth "$work/wide160" "${synth_opts[@]}" --seed 7 --family wide
# One voxel size whatever the scanner, in training and (through the bundle's options) in analysis.
# 0.8 mm between slices keeps the thinnest wide scans (48 x 0.6 mm) at least one crop (32) deep.
spacing=0.8,0.7,0.7
common=(--data "$work/wide160" --cache "$work/cache_wide160" --no-progress --resample-mm "$spacing")
step segment $lk train segment "${common[@]}" --out "$work/seg" "${seg_opts[@]}" --fn-weight 2 --best-metric f1 \
  --negatives 0.3 --bce-weight 1 --augment flip,offset=0.03,scale,rotate,noise,zoom=0.2,blur,contrast,shift
# Hard negatives: every candidate the segmenter finds on the training split that is no nodule. Which
# rows these are depends on the segmenter and the options alone, so no classifier is needed here.
# Mining uses seg_threshold 0.7; the bundle segments at 0.9, chosen afterwards on the training set's
# validation split (CPM 0.767 at 0.7 and 0.8, 0.801 at 0.9, 0.789 at 0.95).
# Both mining rounds center candidates on in-plane cores (center_mode core) and keep every
# candidate of 2.5 mm or more, as when the shipped classifiers were trained; the bundle analyzes
# with 3D cores (core3d), only the candidates within 10 mm of the lung field (lung_margin_mm) and
# a size floor of 1.5 mm, all chosen afterwards on the real-anatomy and phantom checks
# (docs/training.md, "3D cores", "The lung field" and "The size floor"). The weights depend on none of them.
bundle_opts=(--option seg_threshold=0.9 --option cls_flips=true)  # how the bundle analyzes (export, mining2)
mine=(mine-negatives --data "$work/wide160" --seg "$work/seg/best.pt" --option min_diameter_mm=2.5
  --option center_mode=core --option "resample_mm=[$spacing]" --split train --quiet)
step mining $lk "${mine[@]}" --option seg_threshold=0.7 --out "$work/hard_negatives.csv"
# Both classifier rounds train this way (round 2 at a lower learning rate, from round 1).
classify=(train classify "${common[@]}" --seed 0 --optimizer adam --balanced 1 --best-metric auc
  --augment flip,offset,scale,rotate,noise,zoom,blur,contrast,shift)
step classify $lk "${classify[@]}" --out "$work/cls" "${cls_opts[@]}" --hard-negatives "$work/hard_negatives.csv"
# Round 2: round 1's own false positives on the training scans, found as the bundle analyzes
# (threshold 0.9, mirror means) and scored 0.1 or more, join the table, and the classifier is fine-tuned
# on it. The last epoch is kept: the validation split holds none of the mined rows this round teaches.
step mining2 $lk "${mine[@]}" "${bundle_opts[@]}" --cls "$work/cls/best.pt" --min-probability 0.1 \
  --out "$work/hard_negatives_2.csv"
{ cat "$work/hard_negatives.csv"; tail -n +2 "$work/hard_negatives_2.csv"; } > "$work/hard_negatives_all.csv"
step finetune $lk "${classify[@]}" --out "$work/cls2" "${ft_opts[@]}" --lr 0.0001 \
  --hard-negatives "$work/hard_negatives_all.csv" --finetune "$work/cls/best.pt" --finetune-depth 6
$lk last-checkpoint "$work/cls2" "$work/cls2/last.pt"
step malignancy $lk train malignancy "${common[@]}" --out "$work/mal" --finetune "$work/cls2/last.pt" --finetune-depth 6 \
  --optimizer adam --lr 0.0003 "${mal_opts[@]}" --augment flip,offset,scale,rotate,noise,contrast,shift
rm -rf "$out"
step export $lk export --seg "$work/seg/best.pt" --cls "$work/cls2/last.pt" --mal "$work/mal/best.pt" \
  --option min_diameter_mm=1.5 --option center_mode=core3d --option lung_margin_mm=10 "${bundle_opts[@]}" --out "$out"
echo "demo bundle written to $out (${SECONDS} s in all)"
