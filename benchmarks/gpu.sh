#!/usr/bin/env bash
# One script for a lent GPU (H100/H200): a bare machine (torch, transformers, accelerate, peft; no
# network) and a short window. Parts in priority order, each with a budget (seconds; 420 in all, 7 min):
#   a (200)  credit bench on Qwen3-0.6B's architecture, random bf16 weights: SDPO token, CREDIT token K=1,
#            SDPO logit, CREDIT logit K=1, GRPO; B=8 x G=8, 512 response tokens; phases, tokens/s,
#            peak memory, and each CREDIT/SDPO ratio against its floor                  -> steps.jsonl
#   b (110)  the same step on Qwen3-8B's architecture with LoRA (Qwen3-4B if 8B does not run):
#            whether it runs, peak memory, or the error                                 -> lora.jsonl
#   c (60)   rollout engines generate / continuous / loop / static, 64 x 512 forced tokens -> backends.jsonl
#   d (40)   benchmarks/memory.py at V=151,936, 4,096 tokens, bf16, with backward     -> memory.jsonl
#   e (10)   the TRL peer (benchmarks/trl_peer.py), only where trl and datasets import -> trl_peer.jsonl
# A part may use what the parts before it left of their budgets (each part's limit is its deadline).
# Every part appends one JSON line per measurement as it finishes, so a part cut by its time limit
# keeps what it measured. Before anything, the wheelhouse (make gpu-wheels; benchmarks/wheels/cpXY,
# carried with the repository) is installed offline into a temporary folder, and what cannot be
# imported is reported (env.json). At the end, summary.json says which parts wrote records; the exit
# status is 1 when a part wrote none.
#
#   OUT=out bash benchmarks/gpu.sh                   # on the GPU machine (OUT: what comes back)
#   SMALL=1 OUT=/tmp/out bash benchmarks/gpu.sh      # tiny sizes, any machine (make gpu-rehearsal)
#   PARTS="a c" BUDGET_A=60 ...                      # some parts, other budgets
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}; mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
PARTS=${PARTS:-a b c d e}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/credit-gpu.XXXXXX"); trap 'rm -rf "$WORK"' EXIT
# src first, then the wheelhouse: both ahead of the machine's site-packages
export PYTHONPATH="$PWD/src:$WORK/site" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CREDIT_CACHE="$WORK/cache"  # nothing cached: a machine's converted models do not leak in
PYVER=$($PY -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELS=${WHEELS:-benchmarks/wheels/$PYVER}

echo "== wheels and imports"
$PY benchmarks/gpu_env.py --wheels "$WHEELS" --target "$WORK/site" --json "$OUT/env.json" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/env.log" 2>/dev/null

if [ "${SMALL:-0}" = 1 ]; then
  MODEL=tiny; BIG=tiny; DTYPE=float32; B=3; G=3; L=4; P=4; MB=9; MB_BIG=3; REP=2; WLEN=2; V=20000; T=256
  REQUIRE=a,b,c,d
else
  MODEL=qwen3-0.6b; BIG=qwen3-8b,qwen3-4b; DTYPE=bfloat16; B=8; G=8; L=512; P=64; MB=16; MB_BIG=4; REP=2; WLEN=8
  V=151936; T=4096; REQUIRE=a,c,d  # part b's out-of-memory is a result
fi
DEV=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
MEMDTYPE=$([ "$DEV" = cuda ] && echo bfloat16 || echo float32)
: > "$OUT/parts.tsv"
T0=$SECONDS; ALLOWED=0  # part deadlines count from here

# part NAME BUDGET JSONL COMMAND...: run COMMAND until the part's deadline; its output goes to NAME.log
part() {
  local name=$1 budget=$2 jsonl=$3 start=$SECONDS rc limit; shift 3
  case " $PARTS " in *" $name "*) ;; *) return ;; esac
  ALLOWED=$((ALLOWED + budget))
  limit=$((ALLOWED - (SECONDS - T0)))
  [ "$limit" -lt 10 ] && limit=10
  echo "== $name: $jsonl (limit $limit s)"
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1; rc=$?
  tail -n 8 "$OUT/$name.log" | sed 's/^/   /'
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "   cut by its time limit ($limit s)"
  echo "   exit $rc, $((SECONDS - start)) s, $( [ -f "$OUT/$jsonl" ] && wc -l < "$OUT/$jsonl" || echo 0) lines"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$jsonl" "$rc" "$((SECONDS - start))" "$limit" >> "$OUT/parts.tsv"
}

part a "${BUDGET_A:-200}" steps.jsonl \
  $PY -m credit.cli bench --model $MODEL --dtype $DTYPE -B $B -G $G --prompt-len $P --response-len $L --ks 1 \
    --methods sdpo-token,credit-token-k1,sdpo-logit,credit-logit-k1,grpo --micro-batch $MB \
    --repeats $REP --warmup 1 --warmup-len $WLEN --keep-going --jsonl "$OUT/steps.jsonl" --json "$OUT/steps.json"
part b "${BUDGET_B:-110}" lora.jsonl \
  $PY benchmarks/gpu_lora.py --models $BIG --dtype $DTYPE -B $B -G $G --prompt-len $P --response-len $L \
    --micro-batch $MB_BIG --jsonl "$OUT/lora.jsonl"
part c "${BUDGET_C:-60}" backends.jsonl \
  $PY benchmarks/rollout_backends.py --model $MODEL --dtype $DTYPE --settings forced --forced-len $L \
    --repeats $REP --jsonl "$OUT/backends.jsonl" --json "$OUT/backends.json"
part d "${BUDGET_D:-40}" memory.jsonl \
  $PY benchmarks/gpu_memory.py --jsonl "$OUT/memory.jsonl" -- --device $DEV --dtype $MEMDTYPE \
    --vocab $V --tokens $T --backward
# e: only where trl and datasets import; else one record that says why
if $PY -c "import json, sys; i = json.load(open(sys.argv[1]))['imports']; sys.exit(not (i['trl']['ok'] and i['datasets']['ok']))" "$OUT/env.json" 2>/dev/null; then
  part e "${BUDGET_E:-10}" trl_peer.jsonl \
    $PY benchmarks/trl_peer.py --model $MODEL --dtype $DTYPE -B $B -G $G --prompt-len $P --response-len $L \
      --steps 1 --jsonl "$OUT/trl_peer.jsonl" --json "$OUT/trl_peer.json"
else
  part e "${BUDGET_E:-10}" trl_peer.jsonl \
    $PY -c "import json, sys; open(sys.argv[1], 'a').write(json.dumps({'kind': 'trl_peer', 'skipped': 'trl or datasets does not import here (env.json); their wheels (pyarrow 52 MiB, pandas 11 MiB, ...) do not fit the 60 MiB wheelhouse'}) + '\n')" "$OUT/trl_peer.jsonl"
fi

echo "== summary ($((SECONDS - T0)) s)"
$PY benchmarks/gpu_summary.py "$OUT" --require-measured "$REQUIRE"
