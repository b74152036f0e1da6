#!/usr/bin/env bash
# First look (seed 0): the students continued 800 steps on a train split with people up to 1.6× the frame's height,
# against the same continuation on train (runs/longer/*_s0)
set -u
cd /work/main; source .venv/bin/activate
hkd synth --out data/synthped/tune_large --num 200 --seed 6000 --workers 2 --no-progress --config '{"free_scale_prob": 1.0, "free_scale_height": [1.0, 1.6], "free_scale_below": [0.3, 0.6]}' > logs/synth_tune_large.log 2>&1
hkd synth --out data/synthped/train_large --num 3000 --seed 7000 --workers 2 --no-progress --config '{"free_scale_prob": 0.5, "free_scale_height": [0.35, 1.6], "free_scale_below": [0.0, 0.6]}' > logs/synth_train_large.log 2>&1
common="--set data.train=$PWD/data/synthped/train_large --set train.steps=800 --set train.warmup_steps=50 --set train.lr=0.005 --set train.seed=0 --set train.threads=1"
OMP_NUM_THREADS=1 hkd train --config assets/configs/student_wide_baseline.yaml --out runs/large/base_s0 \
  --set model.init=$PWD/assets/checkpoints/student_baseline.safetensors $common > logs/large_base.log 2>&1 &
OMP_NUM_THREADS=1 hkd distill --config assets/configs/student_wide_hkd_trust.yaml --out runs/large/hkd_s0 \
  --set teacher=$PWD/assets/checkpoints/teacher.safetensors --set model.init=$PWD/assets/checkpoints/student_hkd.safetensors $common > logs/large_hkd.log 2>&1 &
wait
