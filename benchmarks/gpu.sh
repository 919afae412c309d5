#!/usr/bin/env bash
# One script for a lent GPU (H100/H200), at most 8 minutes (470 s of part timeouts), writing JSON under $OUT (default ./out):
#   1. credit bench on Qwen3-0.6B's architecture with random bf16 weights (nothing downloaded):
#      GRPO, SDPO token/logit, CREDIT token/logit K=1,2,4; B=8 x G=4, 256 response tokens, 2 repeats
#   2. our SDPO and CREDIT K=1 vs TRL's SDPOTrainer at the same settings, interleaved (needs trl + datasets)
#   3. peak GPU memory of chunked vs naive log-probs, V=151936, 4096 tokens, bf16, with backward
#   4. rollout backends (generate / loop / static) on Qwen3-0.6B's architecture, 64 x 256 forced tokens
# Each part has its own timeout, so one failure still leaves the others' JSON.
# Runs on CPU too with tiny sizes: SMALL=1 OUT=/tmp/out bash benchmarks/gpu.sh
# Needs torch, transformers, accelerate, pydantic, pyyaml, rich, peft (and trl, datasets for part 2);
# credit is taken from ./src. Without the SmolLM2 package a word-level tokenizer stands in.
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
if [ "${SMALL:-0}" = 1 ]; then
  MODEL=tiny; DTYPE=float32; B=3; G=3; L=4; P=4; KS=1,2; REP=1; V=20000; T=256; PEER_STEPS=1
else
  MODEL=qwen3-0.6b; DTYPE=bfloat16; B=8; G=4; L=256; P=64; KS=1,2,4; REP=2; V=151936; T=4096; PEER_STEPS=2
fi
DEV=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, '$DEV', torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/env.txt" 2>/dev/null

echo "== 1. credit bench"; start=$SECONDS
timeout 210 $PY -m credit.cli bench --model $MODEL --dtype $DTYPE -B $B -G $G --prompt-len $P --response-len $L \
  --ks $KS --repeats $REP --warmup 1 --json "$OUT/bench.json" 2>&1 | tail -40 | tee "$OUT/bench.log"
echo "   $((SECONDS - start)) s"

echo "== 2. TRL peer"; start=$SECONDS
timeout 110 $PY benchmarks/trl_peer.py --model $MODEL --dtype $DTYPE -B $B -G $G --prompt-len $P --response-len $L \
  --steps $PEER_STEPS --json "$OUT/trl_peer.json" 2>&1 | tail -6 | tee "$OUT/trl_peer.log"
echo "   $((SECONDS - start)) s"

echo "== 3. memory"; start=$SECONDS
timeout 50 $PY benchmarks/memory.py --device $DEV --dtype $([ $DEV = cuda ] && echo bfloat16 || echo float32) \
  --vocab $V --tokens $T --backward --json "$OUT/memory.json" 2>&1 | tail -6 | tee "$OUT/memory.log"
echo "   $((SECONDS - start)) s"
echo "== 4. rollout backends"; start=$SECONDS
timeout 100 $PY benchmarks/rollout_backends.py --model $MODEL --dtype $DTYPE --settings forced --forced-len $L \
  --repeats $REP --json "$OUT/backends.json" 2>&1 | tail -6 | tee "$OUT/backends.log"
echo "   $((SECONDS - start)) s"
ls -l "$OUT"
