#!/usr/bin/env bash
# Install, then serve on the embedded defaults (SQLite + files under ./var) with the demo chest CT loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
DEMO="${SENSECARE_DEMO_DATA:-../shared/data/chest-ct}"
exec .venv/bin/sensecare serve --data-dir "${SENSECARE_DATA_DIR:-var}" --demo "$DEMO" "$@"
