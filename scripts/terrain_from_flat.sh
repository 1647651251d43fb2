#!/usr/bin/env bash
# Terrain teachers that walk on unseen robots (docs/terrain.md): the flat PPO teacher, grown an exteroception encoder
# whose part of the decoder starts at zero (so it first acts exactly as on flat ground), fine-tuned by PPO on the
# terrain task, then distilled into the HN-MLP and padded-MLP students and compared on training and test robots.
# Every step is resumable: re-run the script after any interruption.
#   1. the flat teacher unchanged as a terrain checkpoint the other commands load (one critic-only iteration), and
#      unless STEPS=0, PPO from it on the terrain task
#   2. the fine-tuned teacher's data on the training robots
#   3. HN-MLP and padded-MLP students
#   4. the comparison on the training robots (16 episodes) and on all 102 test robots
# Environment:
#   TASK       vt or obstacle (required)
#   NUM_TASKS  the first N training robots (default 20); STEPS, PPO env steps (default 2,000,000; 0: the teacher is
#              the flat one unchanged)
#   TEST_EPISODES  episodes per test robot (default 4), TRAIN_EPISODES per training robot (16)
#   STUDENT_ROWS  rows per robot of the teacher's data (16,000); EPOCHS, the students' epochs (default: distill's)
#   STUDENTS   the students to distil (default "hnmlp mlp")
#   WORKERS    worker processes for the rollouts of collect and compare (default 1: this process)
#   FLAT       the flat teacher (default domains/unimal/pretrained/teacher-cpu10); OUT, the run folder
#              (default runs/from-flat-TASK, or runs/from-flat-TASK-STEPS with PPO); KDISTILL, the command
# As run on the 2-core VM (docs/terrain.md):
#   TASK=obstacle STEPS=0 bash scripts/terrain_from_flat.sh          (and TASK=vt)
#   TASK=vt STEPS=0 NUM_TASKS=100 STUDENT_ROWS=8000 EPOCHS=25 TRAIN_EPISODES=4 STUDENTS=hnmlp OUT=runs/from-flat-vt-100 \
#     bash scripts/terrain_from_flat.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${TASK:?set TASK=vt or TASK=obstacle}
NUM_TASKS=${NUM_TASKS:-20}
STEPS=${STEPS:-2000000}
TEST_EPISODES=${TEST_EPISODES:-4}
TRAIN_EPISODES=${TRAIN_EPISODES:-16}
STUDENT_ROWS=${STUDENT_ROWS:-16000}
STUDENTS=${STUDENTS:-hnmlp mlp}
EPOCHS_OPT=(); [ -n "${EPOCHS:-}" ] && EPOCHS_OPT=(--epochs "$EPOCHS")
FLAT=${FLAT:-domains/unimal/pretrained/teacher-cpu10}
if [ "$STEPS" -gt 0 ]; then OUT=${OUT:-runs/from-flat-$TASK-$STEPS}; RUN=$OUT/teacher; else OUT=${OUT:-runs/from-flat-$TASK}; RUN=$OUT/flat; fi
K=${KDISTILL:-.venv/bin/kdistill}
DOMAIN=unimal:$TASK
POOL=()
[ "${WORKERS:-1}" -gt 1 ] && POOL=(--executor processes --workers "$WORKERS")
SUBSET=(--split train --num-tasks "$NUM_TASKS")
stamp() { echo "[from-flat $(date -u +%FT%TZ)] $*" >&2; }  # the wall time of each step, for the record
mkdir -p "$OUT"

stamp "the flat teacher on the terrain task"
if [ ! -f "$OUT/flat/latest.json" ]; then
  $K teacher train $DOMAIN --preset cpu "${SUBSET[@]}" --steps 4096 --init "$FLAT" --critic-warmup 1 \
    --freeze-obs-norm --out "$OUT/flat"
fi
if [ "$STEPS" -gt 0 ]; then
  stamp "PPO from the flat teacher"
  # a small peak learning rate (the flat run ended at 8e-5) and a few critic-only iterations, for the new returns
  if [ -f "$RUN/latest.json" ]; then
    $K teacher train $DOMAIN --out "$RUN" --resume
  else
    $K teacher train $DOMAIN --preset cpu "${SUBSET[@]}" --steps "$STEPS" --init "$FLAT" --critic-warmup 5 --lr 1e-4 \
      --out "$RUN"
  fi
fi

stamp "collect the teacher's data"
$K expert collect $DOMAIN --teacher "$RUN" "${SUBSET[@]}" --samples-per-task "$STUDENT_ROWS" --envs 16 "${POOL[@]}" \
  --out "$OUT/data"

stamp "students"
POLICIES=teacher=$RUN
for s in $STUDENTS; do
  resume=(); [ -f "$OUT/$s/latest.json" ] && resume=(--resume)
  $K distill $DOMAIN --data "$OUT/data" --student $s "${EPOCHS_OPT[@]}" --out "$OUT/$s" "${resume[@]}"
  POLICIES=$POLICIES,$s=$OUT/$s
done

stamp "compare"
[ "$STEPS" -gt 0 ] && POLICIES=$POLICIES,flat=$OUT/flat
if [ ! -f "$OUT/compare-train.json" ]; then
  $K compare $DOMAIN --policies "$POLICIES" "${SUBSET[@]}" --episodes "$TRAIN_EPISODES" "${POOL[@]}" --out "$OUT/compare-train" \
    --json > "$OUT/compare-train.json.tmp" && mv "$OUT/compare-train.json.tmp" "$OUT/compare-train.json"
fi
if [ ! -f "$OUT/compare-test.json" ]; then
  $K compare $DOMAIN --policies "$POLICIES" --split test --episodes "$TEST_EPISODES" "${POOL[@]}" \
    --out "$OUT/compare-test" --json > "$OUT/compare-test.json.tmp" && mv "$OUT/compare-test.json.tmp" "$OUT/compare-test.json"
fi
stamp "done"
