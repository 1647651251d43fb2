#!/usr/bin/env bash
# The universal-teacher route on all 100 UNIMAL training robots (docs/experts.md), every step resumable:
# re-run the script after any interruption and it continues where it stopped.
#   1. per-robot experts (batched PPO), or continue from the shipped snapshot of an unfinished run
#   2. export the experts and evaluate them (16 episodes per robot)
#   3. expert data labelled by each robot's own expert
#   4. the cpu-size metamorph transformer distilled from it, with DAgger rounds labelled by the experts
#   5. HN-MLP and padded-MLP students from the transformer's data, and an HN-MLP straight from the experts
#   6. the comparison on all 100 training and all 102 test robots
# Environment: DEVICE=cuda for the distillations on a GPU machine; OUT (default runs/universal).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/universal}
DEVICE=${DEVICE:-cpu}
K=.venv/bin/kdistill
RUN=runs/experts-flat
EXPERTS=domains/unimal/pretrained/experts-flat
SNAPSHOT=domains/unimal/pretrained/experts-flat-run
resume() { [ -f "$1/latest.json" ] && echo --resume || true; }

# 1. experts
if [ ! -f "$EXPERTS/meta.json" ]; then
  if [ -f "$RUN/latest.json" ]; then
    $K experts train unimal --out $RUN --resume
  elif [ -f "$SNAPSHOT/latest.json" ]; then
    $K experts train unimal --out $RUN --resume-from $SNAPSHOT
  else
    $K experts train unimal --split train --steps-per-task 1500000 --out $RUN
  fi
  # 2. ship the actors
  $K experts export $RUN --out $EXPERTS
fi
mkdir -p $OUT
[ -f $OUT/experts-eval-train.json ] || \
  $K eval unimal --policy $EXPERTS --split train --episodes 16 --out $OUT/experts-eval-train --json > $OUT/experts-eval-train.json

# 3. data labelled by each robot's expert. Half the reference's 16k rows per robot: on 2 cores the transformer
#    trains at a few thousand rows/s, and DAgger's rows (below) are worth more than the experts' own states
$K expert collect unimal --teacher $EXPERTS --split train --samples-per-task 8000 --envs 16 --out $OUT/data-experts

# 4. the universal transformer (cpu preset), with DAgger: on 10 robots plain distillation reached 0.56x the experts
#    and two DAgger rounds 0.90x (docs/experts.md)
$K distill unimal --data $OUT/data-experts --student metamorph --student-preset cpu --epochs 10 --device $DEVICE \
  --dagger 3 --dagger-samples 4000 --dagger-epochs 4 --teacher $EXPERTS --out $OUT/transformer

# 5. students: from the transformer's own data, and straight from the experts
$K expert collect unimal --teacher $OUT/transformer --split train --samples-per-task 16000 --envs 16 --out $OUT/data-transformer
for s in hnmlp mlp; do
  $K distill unimal --data $OUT/data-transformer --student $s --device $DEVICE --out $OUT/$s $(resume $OUT/$s)
done
$K distill unimal --data $OUT/data-experts --student hnmlp --device $DEVICE --out $OUT/hnmlp-from-experts \
  $(resume $OUT/hnmlp-from-experts)

# 6. the comparison
STUDENTS=transformer=$OUT/transformer,hnmlp=$OUT/hnmlp,mlp=$OUT/mlp,hnmlp-experts=$OUT/hnmlp-from-experts
[ -f $OUT/compare-train.json ] || $K compare unimal --policies experts=$EXPERTS,$STUDENTS --split train --episodes 16 \
  --out $OUT/compare-train --json > $OUT/compare-train.json
# the experts have no expert for an unseen robot
[ -f $OUT/compare-test.json ] || $K compare unimal --policies $STUDENTS --split test --episodes 16 \
  --out $OUT/compare-test --json > $OUT/compare-test.json
