#!/usr/bin/env bash
# GRPO, SDPO and CREDIT on SmolLM2-135M-Instruct, two-number addition, at the TRL peer's settings
# (shared/peer: 8 prompts x 8 rollouts, <= 24 new tokens, T = 1.0, lr 1e-5 linear decay, 30 steps,
# held-out mean@4 at T = 0.7). SDPO as TRL runs it: sampled-token, EMA 0.05, no environment feedback,
# per-sequence token mean. Usage: bash benchmarks/addition_methods.sh [SEED] [extra overrides...]
set -euo pipefail
seed=${1:-0}; shift || true
credit=${CREDIT:-.venv/bin/credit}
$credit train configs/quickstart.yaml seed=$seed out_dir=runs/addition/credit-s$seed "$@"
$credit train configs/quickstart.yaml seed=$seed out_dir=runs/addition/grpo-s$seed method=grpo credit.grpo_weight=1.0 "$@"
$credit train configs/quickstart.yaml seed=$seed out_dir=runs/addition/sdpo-s$seed method=sdpo credit.grpo_weight=0.0 \
  teacher.include_feedback=false optim.loss_aggregation=seq-mean-token-mean "$@"
