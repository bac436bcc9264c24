#!/usr/bin/env bash
# GPU readiness in one go, under 8 minutes on one H200:
#   1. olmo2-1b at sequence 4096, bf16, FSDP2 on one GPU: compile on/off x chunked loss on/off, and the fastest
#      single-GPU settings (whole logits, fused AdamW, no resharding) ->
#      tokens/s, MFU (against the GPU's dense bf16 peak, kiln.train.flops: 989.4 TFLOP/s for H100 SXM / H200),
#      peak memory (torch.cuda.max_memory_allocated), as a Markdown table;
#   2. a real `kiln train` on the GPU (olmo2-150m on the built-in corpus) that is killed with SIGKILL after its
#      first checkpoint and resumed, then checked: one metrics line per step, no gap, no repeat.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (default $OUT or /tmp/kiln-gpu-check)
# Each of the five benchmark runs is cut at BENCH_TIMEOUT seconds (150), the resumed real run at RUN_TIMEOUT (150).
# Dry run of the script itself on a CPU (small shapes, seconds per step):
#   DEVICE=cpu PRESET=olmo2-tiny SEQ=128 MICRO=2 RUN_PRESET=olmo2-tiny RUN_SEQ=64 RUN_STEPS=40 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/kiln-gpu-check}}"
device=${DEVICE:-cuda}
mkdir -p "$out"
if [ "$device" = cuda ]; then
  python - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check.sh needs a CUDA GPU (torch.cuda.is_available() is False); DEVICE=cpu runs a dry run")
print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
EOF
fi

steps=${STEPS:-8}
warmup=${WARMUP:-3}
preset=${PRESET:-olmo2-1b}
seq=${SEQ:-4096}
micro=${MICRO:-4}
# the built-in corpus is tokenized once here, outside the runs' timeouts (the first GPU check lost three of its four
# runs to a 112-s tokenization when that was done by spawned workers inside each run)
python -c "from kiln.data.prepare import builtin_dataset; print('# data:', builtin_dataset(progress=False))"
: > "$out/throughput.jsonl"
for compile in on off; do
  for chunk in 0 1024; do  # whole logits, 1024-row blocks (auto picks whole logits on a large GPU)
    flag=""
    [ "$compile" = off ] && flag="--no-compile"
    echo "# $preset compile=$compile loss_chunk=$chunk" >&2
    timeout "${BENCH_TIMEOUT:-150}" python benchmarks/bench_fsdp_gpu.py --steps "$steps" --warmup "$warmup" --loss-chunk "$chunk" \
      --device "$device" --preset "$preset" --seq-len "$seq" --micro-batch "$micro" $flag | tee -a "$out/throughput.log" | grep '^{' >> "$out/throughput.jsonl" \
      || echo "{\"compile\": \"$compile\", \"loss_chunk\": \"$chunk\", \"failed\": true}" >> "$out/throughput.jsonl"
  done
done
# the fastest settings for one GPU: whole logits, torch's fused AdamW, weights kept gathered between forward and backward
echo "# $preset compile=on loss_chunk=0 fused AdamW, no reshard" >&2
timeout "${BENCH_TIMEOUT:-150}" python benchmarks/bench_fsdp_gpu.py --steps "$steps" --warmup "$warmup" --loss-chunk 0 \
  --fused-adamw --no-reshard --device "$device" --preset "$preset" --seq-len "$seq" --micro-batch "$micro" \
  | tee -a "$out/throughput.log" | grep '^{' >> "$out/throughput.jsonl" \
  || echo '{"compile": "on", "loss_chunk": "0", "fused_adamw": true, "reshard": false, "failed": true}' >> "$out/throughput.jsonl"
python - "$out/throughput.jsonl" <<'EOF'
import json, sys
print("| compile | loss_chunk | AdamW | reshard | tokens/s per GPU | MFU | s/step | peak GiB |")
print("|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    compile_ = {True: "on", False: "off"}.get(r["compile"], r["compile"])
    head = f"| {compile_} | {r['loss_chunk']} | {'fused' if r.get('fused_adamw') else 'foreach'} | {r.get('reshard', True)} |"
    if r.get("failed"):
        print(f"{head} failed (see throughput.log) | | | |")
        continue
    mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
    print(f"{head} {r['tokens_per_s'] / r['ranks']:,.0f} | {mfu} | {r['step_s']:.3f} | {r['peak_memory_gb']:.1f} |")
EOF

run="$out/run"
rm -rf "$run"
run_steps=${RUN_STEPS:-400}
every=$((run_steps / 4))
train=(kiln train --model.preset="${RUN_PRESET:-olmo2-150m}" --trainer.device="$device" --trainer.precision=bf16
       --trainer.steps="$run_steps" --trainer.micro_batch_size=16 --data.seq_len="${RUN_SEQ:-1024}"
       --checkpoint.every="$every" --eval.every="$every" --trainer.run_dir="$run" --logging.progress=lines)
echo "# real run: killed with SIGKILL after its first checkpoint, then resumed" >&2
"${train[@]}" > "$out/run1.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  [ -n "$(ls -d "$run"/step* 2>/dev/null)" ] && break
  sleep 1
done
sleep 5
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
timeout "${RUN_TIMEOUT:-150}" "${train[@]}" > "$out/run2.log" 2>&1
python - "$run" "$run_steps" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
ok = steps == list(range(1, int(sys.argv[2]) + 1))
last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
print(f"real run: resumed after kill -9; metrics steps 1..{steps[-1]} {'contiguous' if ok else 'BROKEN'}; "
      f"final loss {last['loss']:.3f}, {last.get('tokens_per_s', 0):,.0f} tokens/s")
sys.exit(0 if ok else 1)
EOF
grep -m1 "resum" "$out/run2.log" || { echo "the second run did not resume" >&2; exit 1; }
