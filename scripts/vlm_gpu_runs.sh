#!/usr/bin/env bash
# Runs 13 and 14's VLM recipe (4-layer decoder, data/vlm-v4) side by side on one GPU, to see where the CPU runs are
# heading and how many steps the targets would take: causal and prefix LM to STEPS (12,000, the CPU plan), and a
# prefix LM as long as the time allows; all three with val evaluation every EVAL_EVERY steps.
# One script, one device lease (~9 minutes on an H200):
#   bash scripts/vlm_gpu_runs.sh [OUT_DIR]   (needs data/vlm/tokenizer.json; writes data/vlm-v4 if missing)
# Seven files come back: data.md5, {causal,prefix,long}.log and {causal,prefix,long}.tgz, each the run's newest
# weights, config, tokenizer and metrics.jsonl, packed as soon as training ends; evaluate or point with them on any
# machine (`kiln vlm eval DIR/stepN data/vlm-v4`). TEST_EVAL=1 evaluates the test split there too and appends the
# report to the run's log. TOTAL (540 s) bounds the whole script; training gets what data, the probe and RESERVE
# leave. First H200 lease (2026-12-04): data 50 s, 0.056 s/step with three runs at once, three 4,000-step runs; the
# three test evaluations then outran a 100-s reserve and the lease, which is why packing now comes first.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/kiln-vlm-gpu}}"
runs=${RUNS:-/tmp/kiln-vlm-gpu-runs}
steps=${STEPS:-12000}
eval_every=${EVAL_EVERY:-2000}
total=${TOTAL:-540}
test_eval=${TEST_EVAL:-0}  # 1: evaluate the test split there too (over 234 s for three on the first H200 lease)
reserve=${RESERVE:-$([ "$test_eval" = 1 ] && echo 300 || echo 30)}  # seconds kept for packing (and evaluating)
probe_steps=${PROBE_STEPS:-150}
round=${ROUND:-1000}      # step counts are rounded down to this
read -r -a extra <<< "${EXTRA:-}"  # more overrides for every run, e.g. a tiny model for a CPU dry run
limit=()
[ -n "${EVAL_LIMIT:-}" ] && limit=(--limit "$EVAL_LIMIT")
start=$(date +%s)
export PYTHONUNBUFFERED=1
# three processes at once: split the cores between them rather than each taking them all
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / 3 > 0 ? $(nproc) / 3 : 1 ))}
kiln=(kiln)
command -v kiln > /dev/null || kiln=(python3 -m kiln)
mkdir -p "$out" "$runs"
elapsed() { echo $(( $(date +%s) - start )); }

if [ ! -f data/vlm-v4/meta.json ]; then
  "${kiln[@]}" vlm data --out data/vlm-v4 --n 60000 --absent-share 0.3 --tokenizer data/vlm/tokenizer.json \
    --workers "${WORKERS:-$(nproc)}" || exit 1
fi
md5sum data/vlm-v4/*.jsonl | tee "$out/data.md5"
echo "# data ready at $(elapsed) s"

common=(--data.paths=[data/vlm-v4] --model.n_layers=4 --logging.progress=lines --checkpoint.keep_last=1 "${extra[@]}")
flags() { [ "$1" = causal ] && echo "--vlm.prefix_lm=false" || echo "--vlm.prefix_lm=true"; }

# probe: the three runs' start-up and step time when they share the GPU (the runs below do the same)
probe_start=$(date +%s)
for name in causal prefix long; do
  "${kiln[@]}" vlm train "${common[@]}" $(flags "$name") --trainer.steps="$probe_steps" --eval.every=100000 \
    --checkpoint.every=100000 --checkpoint.save_final=false --trainer.run_dir="$runs/probe-$name" \
    > "$runs/probe-$name.log" 2>&1 &
done
wait
step_s=$(python3 - "$runs" "$probe_steps" <<'EOF'
import json, statistics, sys
from pathlib import Path
skip = int(sys.argv[2]) // 3
times = [json.loads(line)["step_time"] for name in ("causal", "prefix", "long")
         for line in (Path(sys.argv[1]) / f"probe-{name}" / "metrics.jsonl").read_text().splitlines()[skip:]]
print(f"{max(statistics.median(times), 1e-3):.4f}")
EOF
) || { tail -20 "$runs"/probe-*.log; exit 1; }
startup=$(python3 -c "print(max(0, int($(date +%s) - $probe_start - $probe_steps * $step_s)))")
budget=$(( total - $(elapsed) - reserve ))
fit=$(python3 -c "print(int(($budget - 1.3 * $startup) / ($step_s * 1.1)) // $round * $round)")
short=$(( fit < steps ? fit : steps ))
echo "# probe: ${startup} s to start, ${step_s} s/step with three runs on the GPU; ${budget} s left for training:" \
  "${short} and ${fit} steps"
[ "$short" -ge "$round" ] || { echo "too slow for a useful run"; exit 1; }

for name in causal prefix long; do
  n=$short
  [ "$name" = long ] && n=$fit
  timeout "$budget" "${kiln[@]}" vlm train "${common[@]}" $(flags "$name") --trainer.steps="$n" \
    --eval.every="$eval_every" --checkpoint.every="$eval_every" --trainer.run_dir="$runs/$name" \
    > "$out/$name.log" 2>&1 &
done
wait
echo "# training done at $(elapsed) s"
grep -H "val_point_f1" "$out"/{causal,prefix,long}.log | sed "s|^$out/||" | cut -c1-170

pack() {  # run $1's newest checkpoint and metrics in one tarball, before anything else can run out of time
  local step
  step=$(ls -d "$runs/$1"/step* 2>/dev/null | sort | tail -1)
  [ -n "$step" ] || { echo "# $1: no checkpoint"; tail -5 "$out/$1.log"; return 1; }
  tar czf "$out/$1.tgz" -C "$runs/$1" metrics.jsonl \
    "$(basename "$step")"/{model.safetensors,model.json,config.yaml,tokenizer.json,MANIFEST.json}
  echo "$step"
}
evaluate() {  # the test split on run $1's newest checkpoint; the report goes to the end of its training log
  local step
  step=$(pack "$1") || return
  "${kiln[@]}" vlm eval "$step" data/vlm-v4 --split test --out "$runs/$1/eval" "${limit[@]}" > "$runs/$1/eval.log" 2>&1
  cat "$runs/$1/eval.log" >> "$out/$1.log"
  head -8 "$runs/$1/eval.log" | sed "s/^/# $1 test: /"
}
for name in causal prefix long; do
  if [ "$test_eval" = 1 ]; then evaluate "$name" & else pack "$name" > /dev/null; fi
done
wait
echo "# all done at $(elapsed) s"
