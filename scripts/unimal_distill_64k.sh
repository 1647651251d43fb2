#!/usr/bin/env bash
# Issue 5's bars with 4x the expert data of the reference's distillation set: 64 envs x 1000 steps = 64k rows per
# robot (the original's own collection size, 64 envs per robot), 50 epochs (6,250 Adam steps), HN-MLP and plain MLP,
# compared on the teacher's 10 training robots and 12 unseen test robots. Writes under ${1:-runs/full64}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/full64}
TEACHER=domains/unimal/pretrained/teacher-cpu10
K=.venv/bin/kdistill
$K expert collect unimal --teacher $TEACHER --split train --num-tasks 10 --samples-per-robot 64000 --envs 64 --out $OUT/expert
for s in hnmlp mlp; do
  $K distill unimal --data $OUT/expert --student $s --epochs 50 --out $OUT/$s $([ -f $OUT/$s/latest.json ] && echo --resume)
done
for split in train test; do
  $K compare unimal --policies teacher=$TEACHER,hnmlp=$OUT/hnmlp,mlp=$OUT/mlp --split $split --num-tasks $([ $split = train ] && echo 10 || echo 12) \
    --episodes 16 --out $OUT/compare-$split --json > $OUT/compare-$split.json
done
