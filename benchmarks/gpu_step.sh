#!/usr/bin/env bash
# One bf16 training step of the ~1B-active `gpu_1b` preset on one GPU, XLA path against the Pallas kernels
# (issue 8's GPU check). Measures and records; asserts nothing.
#
#   bash benchmarks/gpu_step.sh [OUT_DIR]        # default OUT_DIR: runs/gpu_step
#
# Each variant runs benchmarks/train_throughput.py in its own process (so one that fails to compile or runs out of
# memory cannot take the others down), with a time limit, and appends its JSON line to OUT_DIR/gpu_step.jsonl; its
# log goes to OUT_DIR/<variant>.log. The matmul peak in the same dtype is measured inside every variant's process
# (8192^3 and 16384x2048x8192 bf16 products), so MFU in each line is against the rate that card reached in that run.
# Variants: xla (XLA attention + ragged_dot experts), pallas (flash-attention + grouped-matmul kernels),
# pallas_attention and pallas_moe (one kernel each). PRESET, BATCH, SEQ, STEPS, LIMIT_S and VARIANTS override the
# defaults.
set -u
out=${1:-runs/gpu_step}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
batch=${BATCH:-2}
seq=${SEQ:-8192}
steps=${STEPS:-8}
limit=${LIMIT_S:-240}
preset=${PRESET:-gpu_1b}
variants=${VARIANTS:-"xla pallas pallas_attention pallas_moe"}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

for v in $variants; do
  case $v in
    xla) attn=xla; moe=ragged_dot ;;
    pallas) attn=pallas; moe=pallas ;;
    pallas_attention) attn=pallas; moe=ragged_dot ;;
    pallas_moe) attn=xla; moe=pallas ;;
    *) echo "unknown variant '$v' (choose from xla pallas pallas_attention pallas_moe)" >&2; exit 2 ;;
  esac
  echo "== $v: attention=$attn moe=$moe batch=$batch seq=$seq ($(date -u +%T))"
  start=$(date +%s)
  timeout "$limit" "$py" "$here/benchmarks/train_throughput.py" --config="$here/configs/base.py:$preset" \
      --config.kernels.attention=$attn --config.kernels.moe=$moe --batch="$batch" --seq="$seq" \
      --steps="$steps" --warmup=2 --peak_repeats=10 >"$out/$v.json" 2>"$out/$v.log"
  rc=$?
  if [ $rc -eq 0 ]; then
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); r['variant']=sys.argv[2]; print(json.dumps(r))" \
        "$out/$v.json" "$v" >>"$out/gpu_step.jsonl"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('median_step_s', 'tokens_per_s', 'mfu', 'peak_gflops', 'compile_and_first_step_s', 'first_loss', 'last_loss')})" "$out/$v.json"
  else
    echo "{\"variant\": \"$v\", \"failed_rc\": $rc}" >>"$out/gpu_step.jsonl"
    echo "$v failed (rc $rc); last lines of its log:"; tail -n 15 "$out/$v.log"
  fi
  echo "   $(( $(date +%s) - start )) s"
  rm -f "$out/$v.json"
done
