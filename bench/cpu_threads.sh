#!/usr/bin/env bash
# ESG training speed on a CPU with PyTorch's default threads against the stages' automatic choice (util/threads.py),
# alone and beside a second torch process that keeps every core busy (as a second experiment or a test run does).
# Run after `make demo` (it reuses the demo's data and ESS embeddings), on an otherwise quiet machine:
#   bash bench/cpu_threads.sh [steps]
# Prints seconds per ESG step for: default threads / automatic threads, alone / beside the competing process.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-48}
out=$(mktemp -d)
cores=$(python -c 'import os; print(len(os.sched_getaffinity(0)))')
echo "# $(uname -m), ${cores} cores, $(python -c 'import torch; print("torch", torch.__version__)'); ${steps} ESG steps of the demo"

competitor() {  # a torch process using every core, as PyTorch's default does
  python -c "
import torch, time
a = torch.randn(1024, 1024)
end = time.time() + 3600
while time.time() < end:
    a = torch.tanh(a @ a) * 0.5
" > /dev/null 2>&1 &
  echo $!   # the only output: $(competitor) returns at once
}

run() {  # run <label> <threads key>: the demo's ESG schedule cut to $steps steps
  local label=$1 threads=$2
  local dir="${out}/${label// /_}"
  python train_esg.py --config config/demo/openseg_train.yaml save_path "${dir}" epochs "${epochs}" evaluate False \
      tensorboard False print_freq 1000 threads "${threads}" > "${dir}.log" 2>&1
  local per_step  # the training loop's time (esg_summary.json), without the process start and data loading
  per_step=$(python -c "import json; s = json.load(open('${dir}/esg_summary.json')); print(f'{s[\"wall_time_s\"] / s[\"steps\"]:.2f}')")
  printf '%-44s %s s/step (%s)\n' "${label}" "${per_step}" "$(grep -o '[0-9]* CPU thread(s) per process ([^)]*)' "${dir}.log" | head -1)"
}

# whole epochs of the demo's schedule, as many as give at least $steps steps
per_epoch=$(python -c "
import os
from pipeline.schemas import ESG_TRAINING
from util.config import resolve_config
cfg = resolve_config(ESG_TRAINING, 'config/demo/openseg_train.yaml')
n = len([f for f in os.listdir(os.path.join(cfg.data_root, cfg.train_split)) if f.endswith('.pth')])
print(max(1, n * cfg.loop // cfg.batch_size))")
epochs=$(( (steps + per_epoch - 1) / per_epoch ))
run_all() {
  run "$1, default threads (${cores})" "${cores}"
  run "$1, automatic threads" 0
}
unset OMP_NUM_THREADS  # let each run choose: the key threads, or util/threads.py
run_all "alone"
pid=$(competitor)
sleep 3  # the competitor is busy before the runs sample the cores' load (util/threads.py)
run_all "beside a busy torch process"
kill "${pid}"
rm -rf "${out}"
