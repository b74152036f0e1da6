#!/usr/bin/env bash
# The teacher continued on train_large first (600 steps), then three seeds of both students continued 800 steps on
# train_large, HKD against the new teacher (no-KD seed 0 is runs/large/base_s0, the first look's run).
# Two lanes, one thread each. Host: this project's 2-core AMD EPYC CPU box.
set -u
cd /work/main; source .venv/bin/activate
L=$PWD/data/synthped/train_large
T=runs/tlarge/teacher
common="--set data.train=$L --set data.val=$PWD/data/synthped/tune --set train.steps=800 --set train.warmup_steps=50 --set train.lr=0.005 --set train.threads=1"
wait_ok() { until grep -q '"state": "succeeded"' "$1/status.json" 2>/dev/null; do
  grep -q '"state": "failed"' "$1/status.json" 2>/dev/null && { echo "$1 failed"; exit 1; }; sleep 30; done; }
base() { OMP_NUM_THREADS=1 hkd train --config assets/configs/student_wide_baseline.yaml --out runs/tlarge/base_s$1 \
  --set model.init=$PWD/bench/records/seeds1600/baseline_s$1/final.safetensors --set train.seed=$1 $common > logs/tlarge_base_s$1.log 2>&1; }
hkd_init() { if [ "$1" = 0 ]; then echo $PWD/assets/checkpoints/student_hkd.safetensors; else echo $PWD/bench/records/seeds_more/hkd_s$1/final.safetensors; fi; }
hkd_run() { OMP_NUM_THREADS=1 hkd distill --config assets/configs/student_wide_hkd_trust.yaml --out runs/tlarge/hkd_s$1 \
  --set teacher=$PWD/$T/checkpoints/final.safetensors --set model.init=$(hkd_init $1) --set train.seed=$1 $common > logs/tlarge_hkd_s$1.log 2>&1; }
laneA() {
  OMP_NUM_THREADS=1 hkd train --config assets/configs/teacher.yaml --out $T \
    --set model.init=$PWD/assets/checkpoints/teacher.safetensors --set data.train=$L --set data.val=$PWD/data/synthped/tune \
    --set train.steps=600 --set train.warmup_steps=50 --set train.lr=0.005 --set train.seed=0 --set train.threads=1 \
    > logs/tlarge_teacher.log 2>&1
  wait_ok $T; hkd_run 0; hkd_run 2; }
laneB() { base 1; base 2; wait_ok $T; hkd_run 1; }
laneA & laneB & wait
echo all done
