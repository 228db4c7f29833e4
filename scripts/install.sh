#!/usr/bin/env bash
# Install SenseCare on a fresh Debian machine: Debian packages, a venv, torch (CPU build), the package.
#   scripts/install.sh          what `sensecare serve` needs
#   scripts/install.sh --dev    plus the test peers (PostgreSQL, dcmtk, Orthanc + DICOMweb) and test extras
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1

debs=(python3-venv)
if [[ $DEV == 1 ]]; then
  debs+=(postgresql dcmtk orthanc orthanc-dicomweb)
fi
missing=()
for pkg in "${debs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # Install only; the packages' own services (orthanc, postgresql) are not started here.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: missing Debian packages ${missing[*]} (run as root or install them yourself)" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch first and pinned: the CPU build on disk, never a multi-GB CUDA download.
.venv/bin/python -m pip install -q "torch==2.13.0"
if [[ $DEV == 1 ]]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
echo "SenseCare installed in $(pwd)/.venv"
