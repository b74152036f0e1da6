#!/usr/bin/env bash
# GPU and cluster, ready to run: on a machine with an NVIDIA GPU, in under 8 minutes, the test
# suite's CUDA cases, bf16 and fp16 training steps of the teacher and the HKD student, `hkd info
# --bench --device cuda`, a 2-process torchrun (nccl) distillation when 2+ GPUs exist, and the
# steps/s of both trainings. One JSON summary: --out, default $OUT/gpu_check.json.
#
#   bash bench/gpu_check.sh [--out FILE.json] [--work DIR] [--num 16] [--steps 3]
#                           [--throughput-steps 30] [--workers N] [--budget 450]
#
# Exit status: 0 every check that ran passed (the DDP one may be skipped: one GPU); 1 a check
# failed or timed out; 2 bad arguments; 3 no CUDA device (the checks that need no GPU ran and
# passed, every GPU check is "skipped"). The checks and the JSON: bench/gpu_check.py.
# Python: $PYTHON, else the repository's .venv, else `python` on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py=$PYTHON
elif [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python
fi
exec "$py" bench/gpu_check.py "$@"
