#!/usr/bin/env bash
# Set up (if needed) and start HKD Studio on http://127.0.0.1:8501
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m app.serve \
  --server.address "${HKD_ADDRESS:-127.0.0.1}" --server.port "${HKD_PORT:-8501}" \
  --server.fileWatcherType none --browser.gatherUsageStats false --server.headless true "$@"
