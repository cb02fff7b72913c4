#!/usr/bin/env bash
# Sets up lunakit in ./.venv: torch (CPU 2.13.0), the Python dependencies, GoogleTest,
# then builds the C++ core and installs the package (editable) against that torch.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Debian packages the C++ side builds with: GoogleTest (ctest), nlohmann-json (bundle
# manifests), GDCM (DICOM input of luna_infer), DCMTK's dcmsr (libdcmtk-dev: its findings SR);
# and the PACS tests' tools (docs/pacs.md):
# Orthanc with its DICOMweb plugin (a real PACS, started by a pytest fixture), dicom3tools
# (dciodvfy) and DCMTK (dcmdump) to validate the SR and SEG lunakit writes.
debs="libgtest-dev nlohmann-json3-dev libgdcm-dev libdcmtk-dev zlib1g-dev libcli11-dev libssl-dev"
debs="$debs orthanc orthanc-dicomweb dicom3tools dcmtk"
# clang with libFuzzer and the sanitizers: the fuzz targets of cpp/fuzz (docs/fuzzing.md).
debs="$debs clang-14 libclang-rt-14-dev"
missing=$(for p in $debs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:" $missing >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q $missing >/dev/null
  else sudo apt-get install -y -q $missing >/dev/null; fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip's own exit status counts (pipefail); only the registry's noise is filtered out.
pip() { .venv/bin/python -m pip -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pip install torch==2.13.0
pip install -r requirements-dev.txt
echo "setup: building lunakit (C++ core, pybind11 module, luna_infer)" >&2
pip install --no-build-isolation -e .
.venv/bin/python -c "import torch, lunakit._core"
echo "setup: done (.venv/bin/lunakit, .venv/bin/luna_infer)" >&2
