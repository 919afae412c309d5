#!/usr/bin/env bash
# Second task family, pilot (issue 12 item 3): the base model's held-out mean@2 on candidate tasks,
# 30 items x 2 samples each (multiplication: all 60 x 4), at the study's evaluation temperature. One thread (it ran beside the addition sweep).
#   bash study/pilot/run_pilot.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
eval_one() {  # name task max_new_tokens [task options...]
  local name=$1 task=$2 tokens=$3; shift 3
  local opts=(); for o in "$@"; do opts+=(--task-option "$o"); done
  [ -f "study/pilot/$name.json" ] && { echo "done: $name"; return; }
  /usr/bin/time -f "$name: %e s" .venv/bin/credit eval --task "$task" "${opts[@]}" -n 2 --limit 30 \
    --temperature 0.7 --max-new-tokens "$tokens" --batch-size 64 --seed 0 --json "study/pilot/$name.json" \
    > "study/pilot/$name.log" 2>&1
  tail -n 3 "study/pilot/$name.log"
}
eval_one rg-chain_sum reasoning_gym 96 dataset=chain_sum size=500
eval_one rg-leg_counting reasoning_gym 96 dataset=leg_counting size=500
eval_one openbookqa openbookqa 96
# a x b on the addition pairs: the whole held-out split, n = 4, the study's evaluation settings
[ -f study/pilot/multiplication.json ] || .venv/bin/credit eval --task addition --task-option 'op=*' -n 4 \
  --temperature 0.7 --max-new-tokens 24 --batch-size 64 --seed 0 --json study/pilot/multiplication.json
