#!/usr/bin/env bash
# The universal-teacher route on UNIMAL (docs/experts.md), every step resumable: re-run the script after any
# interruption and it continues where it stopped.
#   1. per-robot experts (batched PPO), unless exported experts exist (flat terrain ships them)
#   2. export the experts and evaluate them (16 episodes per robot)
#   3. expert data labelled by each robot's own expert
#   4. the cpu-size metamorph transformer distilled from it, with DAgger rounds labelled by the experts
#   5. HN-MLP and padded-MLP students from the transformer's data, and an HN-MLP straight from the experts
#   6. the comparison on the training robots and on all 102 test robots
# Environment:
#   TASK       ft (flat, default), vt or obstacle (docs/terrain.md)
#   NUM_TASKS  only the first N training robots (default: all 100)
#   STEPS      env steps per robot for the experts (default 1,500,000)
#   PRESET     the experts' training preset (default sb3; settled: docs/experts.md)
#   CARRY      a snapshot (`kdistill experts snapshot`) that continues the experts' run when RUN is gone
#   TEST_EPISODES  episodes per test robot (default 16)
#   DEVICE     cuda for the distillations on a GPU machine (default cpu)
#   WORKERS    worker processes for the rollouts of eval, collect, DAgger and compare (default 1: this process)
#   EXPERT_ROWS  rows per robot of the experts' data (default 8,000); STUDENT_ROWS, of the transformer's (16,000)
#   TF_EPOCHS  epochs of the transformer's first distillation (default 10); DAGGER_ROUNDS (3), DAGGER_ROWS (4,000)
#   OUT        the run folder (default runs/universal on ft, runs/universal-TASK otherwise); RUN, the experts' training run
#              (default runs/experts-NAME)
#   EXPERTS    the exported experts (default: the shipped domains/unimal/pretrained/experts-NAME where it exists, as
#              on flat terrain, else OUT/experts); KDISTILL, the command
#   TEACHER    a universal teacher made another way (a PPO run, e.g. domains/unimal/pretrained/teacher-universal-ppo):
#              steps 1-4 and the experts' HN-MLP are skipped, the students learn from TEACHER's data (default
#              OUT runs/universal-teacher); STUDENT_EPOCHS, the students' epochs (default: distill's, 50)
# The terrain tasks on 20 robots, as run on the 2-core VM (docs/terrain.md):
#   TASK=vt NUM_TASKS=20 STEPS=400000 TEST_EPISODES=4 WORKERS=2 DAGGER_ROUNDS=2 RUN=runs/experts-vt-400k \
#     bash scripts/universal_teacher.sh
#   TASK=obstacle NUM_TASKS=20 STEPS=400000 TEST_EPISODES=4 WORKERS=2 DAGGER_ROUNDS=2 RUN=runs/experts-obstacle-400k \
#     EXPERTS=runs/experts-obstacle-400k-export bash scripts/universal_teacher.sh
# On a machine with a GPU and 16 cores (how the shipped transformer was made, docs/experts.md):
#   DEVICE=cuda WORKERS=15 EXPERT_ROWS=16000 bash scripts/universal_teacher.sh
# The students of the PPO teacher on all 100 robots, as run on the 2-core VM (docs/experts.md):
#   TEACHER=domains/unimal/pretrained/teacher-universal-ppo STUDENT_ROWS=8000 STUDENT_EPOCHS=20 WORKERS=2 \
#     bash scripts/universal_teacher.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${TASK:-ft}
DEVICE=${DEVICE:-cpu}
STEPS=${STEPS:-1500000}
PRESET=${PRESET:-sb3}
CARRY=${CARRY:-}
TEST_EPISODES=${TEST_EPISODES:-16}
EXPERT_ROWS=${EXPERT_ROWS:-8000}
STUDENT_ROWS=${STUDENT_ROWS:-16000}
TF_EPOCHS=${TF_EPOCHS:-10}
DAGGER_ROUNDS=${DAGGER_ROUNDS:-3}
DAGGER_ROWS=${DAGGER_ROWS:-4000}
K=${KDISTILL:-.venv/bin/kdistill}
POOL=()
[ "${WORKERS:-1}" -gt 1 ] && POOL=(--executor processes --workers "$WORKERS")
TEACHER=${TEACHER:-}
EPOCHS=()
[ -n "${STUDENT_EPOCHS:-}" ] && EPOCHS=(--epochs "$STUDENT_EPOCHS")
if [ "$TASK" = ft ]; then
  DOMAIN=unimal NAME=flat
  if [ -n "$TEACHER" ]; then OUT=${OUT:-runs/universal-teacher}; else OUT=${OUT:-runs/universal}; fi
else
  DOMAIN=unimal:$TASK NAME=$TASK OUT=${OUT:-runs/universal-$TASK}
fi
SUBSET=()
[ -n "${NUM_TASKS:-}" ] && SUBSET=(--num-tasks "$NUM_TASKS")
RUN=${RUN:-runs/experts-$NAME}
SHIPPED=domains/unimal/pretrained/experts-$NAME
# an export of a new run lands in the run folder, not among the package's shipped files
if [ -f $SHIPPED/meta.json ]; then EXPERTS=${EXPERTS:-$SHIPPED}; else EXPERTS=${EXPERTS:-$OUT/experts}; fi
resume() { [ -f "$1/latest.json" ] && echo --resume || true; }
stamp() { echo "[route $(date -u +%FT%TZ)] $*" >&2; }  # the wall time of each step, for the record

mkdir -p $OUT
DATA=$OUT/data-transformer
if [ -z "$TEACHER" ]; then  # steps 1-4: the teacher is the transformer distilled from the experts
stamp "experts"
# 1. experts
if [ ! -f "$EXPERTS/meta.json" ]; then
  if [ -f "$RUN/latest.json" ]; then
    $K experts train $DOMAIN --out $RUN --resume
  elif [ -n "$CARRY" ]; then
    $K experts train $DOMAIN --out $RUN --resume-from "$CARRY"
  else
    $K experts train $DOMAIN --split train "${SUBSET[@]}" --preset $PRESET --steps-per-task $STEPS --out $RUN
  fi
  # 2. ship the actors
  $K experts export $RUN --out $EXPERTS
fi
stamp "evaluate the experts"
if [ ! -f $OUT/experts-eval-train.json ]; then
  $K eval $DOMAIN --policy $EXPERTS --split train "${SUBSET[@]}" --episodes 16 "${POOL[@]}" --out $OUT/experts-eval-train \
    --json > $OUT/experts-eval-train.json.tmp && mv $OUT/experts-eval-train.json.tmp $OUT/experts-eval-train.json
fi

stamp "collect the experts' data"
# 3. data labelled by each robot's expert. Half the reference's 16k rows per robot: on 2 cores the transformer
#    trains at a few thousand rows/s, and DAgger's rows (below) are worth more than the experts' own states
$K expert collect $DOMAIN --teacher $EXPERTS --split train "${SUBSET[@]}" --samples-per-task $EXPERT_ROWS --envs 16 \
  "${POOL[@]}" --out $OUT/data-experts

stamp "the transformer, with DAgger"
# 4. the universal transformer (cpu preset), with DAgger: on 10 robots plain distillation reached 0.56x the experts
#    and two DAgger rounds 0.90x (docs/experts.md). An epoch here takes minutes on 2 cores: checkpoint every one
$K distill $DOMAIN --data $OUT/data-experts --student metamorph --student-preset cpu --epochs $TF_EPOCHS \
  --device $DEVICE --dagger $DAGGER_ROUNDS --dagger-samples $DAGGER_ROWS --dagger-epochs 4 --teacher $EXPERTS \
  --checkpoint-every 1 "${POOL[@]}" --out $OUT/transformer $(resume $OUT/transformer)
TEACHER=$OUT/transformer
else
DATA=$OUT/data-teacher
fi

stamp "students"
# 5. students: from the teacher's own data, and straight from the experts
$K expert collect $DOMAIN --teacher $TEACHER --split train "${SUBSET[@]}" --samples-per-task $STUDENT_ROWS \
  --envs 16 "${POOL[@]}" --out $DATA
for s in hnmlp mlp; do
  $K distill $DOMAIN --data $DATA --student $s "${EPOCHS[@]}" --device $DEVICE --out $OUT/$s \
    $(resume $OUT/$s)
done
STUDENTS=teacher=$TEACHER,hnmlp=$OUT/hnmlp,mlp=$OUT/mlp
EXPERT_POLICIES=
if [ "$TEACHER" = "$OUT/transformer" ]; then
  $K distill $DOMAIN --data $OUT/data-experts --student hnmlp --device $DEVICE --out $OUT/hnmlp-from-experts \
    $(resume $OUT/hnmlp-from-experts)
  STUDENTS=$STUDENTS,hnmlp-experts=$OUT/hnmlp-from-experts EXPERT_POLICIES=,experts=$EXPERTS
fi

stamp "compare"
# 6. the comparison; the teacher is the reference of the fraction column
if [ ! -f $OUT/compare-train.json ]; then
  $K compare $DOMAIN --policies $STUDENTS$EXPERT_POLICIES --split train "${SUBSET[@]}" --episodes 16 "${POOL[@]}" \
    --out $OUT/compare-train --json > $OUT/compare-train.json.tmp && mv $OUT/compare-train.json.tmp $OUT/compare-train.json
fi
# the experts have no expert for an unseen robot
if [ ! -f $OUT/compare-test.json ]; then
  $K compare $DOMAIN --policies $STUDENTS --split test --episodes $TEST_EPISODES "${POOL[@]}" --out $OUT/compare-test \
    --json > $OUT/compare-test.json.tmp && mv $OUT/compare-test.json.tmp $OUT/compare-test.json
fi
stamp "done"
