#!/usr/bin/env bash
# The measurement behind issue 5's bars: distil the shipped UNIMAL teacher with the reference recipe
# (16k samples per robot; 200 epochs, since 50 epochs over 10 robots are 1,600 Adam steps where the reference's
# 50 epochs over 100 robots are 15,600) into an HN-MLP and a plain MLP, then compare on the teacher's 10
# training robots and 12 unseen test robots. Writes everything under ${1:-runs/full}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/full}
TEACHER=domains/unimal/pretrained/teacher-cpu10
K=.venv/bin/kdistill
$K expert collect unimal --teacher $TEACHER --split train --num-tasks 10 --samples-per-robot 16000 --out $OUT/expert
$K distill unimal --data $OUT/expert --student hnmlp --epochs 200 --out $OUT/hnmlp ${RESUME:+--resume}
$K distill unimal --data $OUT/expert --student mlp --epochs 200 --out $OUT/mlp ${RESUME:+--resume}
for split in train test; do
  $K compare unimal --policies teacher=$TEACHER,hnmlp=$OUT/hnmlp,mlp=$OUT/mlp --split $split --num-tasks $([ $split = train ] && echo 10 || echo 12) \
    --episodes 16 --out $OUT/compare-$split --json > $OUT/compare-$split.json
done
