#!/usr/bin/env bash
# Set up (if needed, with the test browser) and run the whole test suite,
# the real-browser end-to-end tests included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export HKD_TEST_ARTIFACTS=${HKD_TEST_ARTIFACTS:-test-artifacts}
exec .venv/bin/python -m pytest -q --timeout=900 "$@"
