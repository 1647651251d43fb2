#!/usr/bin/env bash
# Teacher training on a lent many-core GPU machine (see docs/teacher.md, "The shipped teacher").
# Trains, side by side for SECONDS: the shipped cpu-preset teacher on 10 training robots and the paper-preset
# teacher on all 100, resuming both from .gpu/runs when present, then packs the newest checkpoints into $OUT.
# Expects (ignored, carried): .gpu/whl (mujoco + gymnasium wheels), .gpu/unimal (the robots), optional .gpu/runs.
# CPU10=0 / PAPER=0 leave a run out. UNIVERSAL=1 continues a universal PPO run begun on another machine, copied to
# .gpu/runs/universal (e.g. runs/ppo-universal-64env, docs/experts.md), on CPU_WORKERS env processes (--new-split):
#   CPU10=0 PAPER=0 UNIVERSAL=1 CPU_WORKERS=13 bash scripts/gpu_teachers.sh 520
set -uo pipefail
SECONDS_BUDGET=${1:-520}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl >/dev/null 2>&1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . >/dev/null 2>&1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 KDISTILL_UNIMAL_DIR=$PWD/.gpu/unimal
mkdir -p .gpu/runs
train() {  # name, extra args...
  local name=$1; shift
  local resume=(); [ -f .gpu/runs/$name/latest.json ] && resume=(--resume)
  python3 -m kdistill.cli teacher train unimal --out .gpu/runs/$name "${resume[@]}" "$@" > .gpu/runs/$name.log 2>&1 &
}
CPU_WORKERS=${CPU_WORKERS:-10}; PAPER=${PAPER:-1}; CPU10=${CPU10:-1}; UNIVERSAL=${UNIVERSAL:-0}
[ "$UNIVERSAL" = 1 ] && train universal --device cuda --workers $CPU_WORKERS --threads 2 --new-split
[ "$CPU10" = 1 ] && train cpu10 --preset gpu --teacher-preset cpu --split train --num-tasks 10 --steps 8000000 --seed 0 \
  --device cuda --workers $CPU_WORKERS --threads 2 --checkpoint-every 5
[ "$PAPER" = 1 ] && train paper100 --preset paper --split train --steps 100000000 --seed 0 --device cuda --workers 4 --threads 2 \
  --checkpoint-every 2
sleep $((SECONDS_BUDGET - 60)); nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv > .gpu/runs/gpu.txt 2>&1; uptime >> .gpu/runs/gpu.txt; sleep 60
pkill -INT -f "kdistill.cli teacher train" ; sleep 20; pkill -9 -f "kdistill.cli teacher train"; wait
cp .gpu/runs/gpu.txt "$OUT/" 2>/dev/null
for name in cpu10 paper100 universal; do
  d=.gpu/runs/$name; c=$(python3 -c "import json;print(json.load(open('$d/latest.json'))['checkpoint'])" 2>/dev/null) || continue
  tar -cf $OUT/$name.tar -C .gpu/runs $name/$c $name/latest.json $name/metrics.jsonl $name/learning_curve.png $name.log 2>/dev/null
done
tail -n 4 .gpu/runs/*.log
cd "$OUT" && [ -f paper100.tar ] && split -b 15M paper100.tar paper100.tar.part- && rm -f paper100.tar
ls -la "$OUT"
