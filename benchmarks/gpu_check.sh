#!/usr/bin/env bash
# The GPU check: one prepared script for a session that is lent a GPU (under 8 minutes: every
# part has its own time limit, 480 s in all, so a slow part cannot eat the rest; the study is
# resumable, so one stopped at its limit still gives its pace and can be finished later).
#
#     python -m pip install -q -e ".[cuda,bench]" && bash benchmarks/gpu_check.sh
#
# It times, in this order:
#   1. the DCGAN step (batch 100) (the PyTorch peers are CPU-only: not timed here);
#   2. a vmapped sweep of 18 DCGAN runs (the study's grid) against 18 sequential runs;
#   3. the DDPM step at the study's scale (6.8M-parameter UNet, batch 128);
#   4. the full six-setting moment study at one seed (6 runs x 20 epochs x 550 steps, one
#      vmapped sweep, with its per-epoch evaluation), timed whole.
# Each figure goes to stdout and, with the machine and the versions, is appended to
# benchmarks/README.md under a dated heading. The study's workdir is under $OUT (the device
# tool's folder that comes back) or /tmp, so its logs and report can be read afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg
out="${OUT:-/tmp}/gpu_check"
mkdir -p "$out"
log="$out/gpu_check.txt"
: > "$log"

section() { echo; echo "### $1"; }
run() {  # run LIMIT_S COMMAND...: the command's last lines, or why it stopped
  local limit=$1; shift
  echo "\`$*\`"
  echo '```'
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/last.txt" 2>&1
  local rc=$?
  grep -vE "Warning|warn\(" "$out/last.txt" | tail -n 6
  [ $rc -eq 124 ] && echo "stopped at its ${limit} s limit"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "exit status $rc"
  echo "wall_s=$((SECONDS - start))"
  echo '```'
}

{
  echo
  echo "## GPU check, $(date -u +%Y-%m-%d) (benchmarks/gpu_check.sh)"
  echo
  echo "- machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1), $(nproc) CPU cores"
  echo "- $(python -c 'import jax, jaxlib, flax, optax; print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}")' 2>&1 | tail -n 1)"
  echo "- $(python -c 'import torch; print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}")' 2>/dev/null || echo "torch not installed")"

  section "1. DCGAN step, batch 100"
  run 60 python benchmarks/train_step.py --model=dcgan --steps=50 --repeats=3 --torch=0
  section "2. vmapped sweep of 18 DCGAN runs against 18 sequential runs"
  run 100 python benchmarks/train_step.py --model=dcgan --sweep=18 --torch=0 --steps=20 --repeats=3
  section "3. DDPM step, the study's UNet, batch 128"
  run 100 python benchmarks/train_step.py --model=ddpm --steps=20 --repeats=3 --torch=0
  section "4. the six-setting moment study at one seed, 20 epochs, timed whole"
  rm -rf "$out/moment_stab_one_seed"
  run 220 python experiments/run.py --exp=moment_stab_mnist --workdir="$out/moment_stab_one_seed" \
      '--config.seeds=(0,)'
} 2>&1 | tee "$log"

cat "$log" >> benchmarks/README.md
echo "appended to benchmarks/README.md; the study's workdir: $out/moment_stab_one_seed"
