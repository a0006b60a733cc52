#!/bin/sh
# Shared body of the stage drivers (run/*.sh, vlm_ps_generation/generation_vlm.sh): run one stage script of
# this repository, from any folder, with its output folder and config:
#   sh run/stage.sh <script> <output key> <exp_dir> <config> [key value | key=value ...]
# The stage writes its own log (<exp_dir>/<stage>-<date>_<time>.log, clean lines), its resolved config and a
# record of the run into <exp_dir>; progress bars go to the terminal only. Relative paths (the config, the
# experiment folder, the data in the config) are taken from the folder you run it in.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
script=$1
key=$2
exp_dir=$3
config=$4
shift 4
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
if [ "${NPROC:-1}" -gt 1 ]; then
  exec torchrun --standalone --nproc_per_node="${NPROC}" "${root}/${script}" --config "${config}" "${key}" "${exp_dir}" "$@"
fi
exec "${PYTHON:-python}" -u "${root}/${script}" --config "${config}" "${key}" "${exp_dir}" "$@"
