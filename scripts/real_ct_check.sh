#!/usr/bin/env bash
# Real-anatomy check (issue #16): a bundle on copies of a real chest CT with phantom nodules
# inserted (lunakit synth --into, docs/phantoms.md), scored by the LUNA16 rules; prints the CPM.
#
#   bash scripts/real_ct_check.sh [BUNDLE] [WORKDIR]      # default models/demo-bundle; ~5 min
#
# Environment: REAL_CT (default $LUNAKIT_TEST_DATA/ct/C3N-00247-chest-ct), KNOWN (its own
# lesions, default scripts/real_ct_known.csv), SCANS (12 copies), SEED (1605), FAMILY (wide,
# the nodule mix), NODULES (2,4 a copy), BOOTSTRAP (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-models/demo-bundle}
work=${2:-/tmp/lunakit-real-ct}
lk=${LUNAKIT:-.venv/bin/lunakit}
real_ct=${REAL_CT:-${LUNAKIT_TEST_DATA:?set LUNAKIT_TEST_DATA or REAL_CT}/ct/C3N-00247-chest-ct}
seed=${SEED:-1605}
set_dir="$work/real_${seed}"
$lk synth "$set_dir" --into "$real_ct" --known "${KNOWN:-scripts/real_ct_known.csv}" \
  --scans "${SCANS:-12}" --seed "$seed" --family "${FAMILY:-wide}" --nodules "${NODULES:-2,4}"
$lk validate --data "$set_dir" --bundle "$bundle" --split all --bootstrap "${BOOTSTRAP:-1000}" \
  --out "$work/validate_${seed}" --quiet
