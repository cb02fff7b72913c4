#!/usr/bin/env bash
# Cross-family check (issue #16): train on phantom family A, validate on family B (and on a
# held-out family-A set as the in-family reference); prints both CPMs (lunakit validate).
#
#   bash scripts/cross_family.sh [WORKDIR]              # full size: ~45-60 min on an idle 2-core CPU
#   TINY=1 bash scripts/cross_family.sh /tmp/xf-tiny    # smoke run of the mechanics: under a minute
#
# Environment: TRAIN_FAMILY (default a), VAL_FAMILY (default b), TRAIN_SCANS (160), VAL_SCANS (20),
# AUGMENT (the classifier's --augment list), HARD=1 also mines the bundle's false positives on the
# training scans and retrains the classifier with them (--hard-negatives), reporting a second row.
# RESAMPLE=I,R,C trains (and so analyzes) on scans resampled to that spacing in mm (--resample-mm).
# The result table is also written to WORKDIR/cross_family.json.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/lunakit-cross-family}
lk=${LUNAKIT:-.venv/bin/lunakit}
py=${PYTHON:-.venv/bin/python}
train_family=${TRAIN_FAMILY:-a}
val_family=${VAL_FAMILY:-b}
augment=${AUGMENT:-flip,offset,scale,rotate,noise,zoom,blur,contrast,shift}
seg_augment=${SEG_AUGMENT:-flip,offset=0.03,scale,rotate,noise,zoom=0.2,blur,contrast,shift}
if [ "${TINY:-0}" = 1 ]; then
  train_scans=${TRAIN_SCANS:-6}; val_scans=${VAL_SCANS:-2}; shape=(--shape 40 96 96)
  cls_opts=(--epochs 1 --epoch-size 32 --batch-size 8 --val-stride 3 --conv-channels 4)
  seg_opts=(--epochs 1 --epoch-size 16 --batch-size 4 --val-stride 3)
  bootstrap=0
else
  train_scans=${TRAIN_SCANS:-160}; val_scans=${VAL_SCANS:-20}; shape=()
  cls_opts=(--epochs 10 --epoch-size 4096 --batch-size 16)
  seg_opts=(--epochs 20 --batch-size 16)
  bootstrap=1000
fi
mkdir -p "$work"
# ${shape[@]+...}: an empty array under `set -u` on older bash
$lk synth "$work/train_$train_family" --family "$train_family" --scans "$train_scans" --seed 1601 ${shape[@]+"${shape[@]}"}
$lk synth "$work/val_$train_family" --family "$train_family" --scans "$val_scans" --seed 1602 ${shape[@]+"${shape[@]}"}
$lk synth "$work/val_$val_family" --family "$val_family" --scans "$val_scans" --seed 1603 ${shape[@]+"${shape[@]}"}

common=(--data "$work/train_$train_family" --cache "$work/cache_$train_family" --no-progress)
[ -z "${RESAMPLE:-}" ] || common+=(--resample-mm "$RESAMPLE")
$lk train classify "${common[@]}" --seed 0 --out "$work/cls" "${cls_opts[@]}" \
  --optimizer adam --balanced 1 --best-metric auc --augment "$augment"
$lk train segment "${common[@]}" --out "$work/seg" "${seg_opts[@]}" --fn-weight 2 --best-metric f1 \
  --negatives 0.3 --bce-weight 1 --augment "$seg_augment"
options=(--option min_diameter_mm=2.5 --option seg_threshold=0.7 --option center_mode=core)
$lk export --seg "$work/seg/best.pt" --cls "$work/cls/best.pt" "${options[@]}" --out "$work/bundle"

bundles=(bundle)
if [ "${HARD:-0}" = 1 ]; then
  $lk mine-negatives --data "$work/train_$train_family" --bundle "$work/bundle" --split train --quiet \
    --out "$work/hard_negatives.csv"
  $lk train classify "${common[@]}" --seed 0 --out "$work/cls_hard" "${cls_opts[@]}" \
    --optimizer adam --balanced 1 --best-metric auc --augment "$augment" --hard-negatives "$work/hard_negatives.csv"
  $lk export --seg "$work/seg/best.pt" --cls "$work/cls_hard/best.pt" "${options[@]}" --out "$work/bundle_hard"
  bundles+=(bundle_hard)
fi

for b in "${bundles[@]}"; do
  for v in "val_$train_family" "val_$val_family"; do
    $lk validate --data "$work/$v" --bundle "$work/$b" --split all --bootstrap "$bootstrap" --quiet \
      --out "$work/validate_${b}_$v" > "$work/validate_${b}_$v.log"
  done
done
"$py" - "$work" "$train_family" "$val_family" "${bundles[@]}" <<'PY'
import json, sys
from pathlib import Path
work, fa, fb, bundles = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
table = {}
print(f"trained on family {fa}; CPM (95% CI) on held-out sets")
for b in bundles:
    for v in (f"val_{fa}", f"val_{fb}"):
        r = json.loads((work / f"validate_{b}_{v}" / "froc.json").read_text())
        ci = "" if r["cpm_ci"] is None else f" ({r['cpm_ci'][0]:.3f}-{r['cpm_ci'][1]:.3f})"
        table[f"{b}/{v}"] = {"cpm": r["cpm"], "cpm_ci": r["cpm_ci"], "nodules": r["n_nodules"], "scans": r["n_scans"]}
        print(f"  {b:12s} {v:8s} {r['n_scans']:3d} scans {r['n_nodules']:4d} nodules  CPM {r['cpm']:.3f}{ci}")
(work / "cross_family.json").write_text(json.dumps(table, indent=1) + "\n")
PY
