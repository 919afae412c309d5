#!/usr/bin/env bash
# Second task family, pilot (issue 12 item 3): the base model's held-out mean@2 on candidate tasks,
# 30 items each, at the study's evaluation temperature. One thread (it ran beside the addition sweep).
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
eval_one rg-letter_counting reasoning_gym 96 dataset=letter_counting size=500
eval_one chemistry chemistry 96
eval_one rg-basic_arithmetic reasoning_gym 96 dataset=basic_arithmetic size=500
