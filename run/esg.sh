#!/bin/sh
# ESG training (train_esg.py): checkpoints, logs and TensorBoard files go to <exp_dir>.
#   sh run/esg.sh <exp_dir> <config> [key value ...]
#   sh run/esg.sh exp/scannet/esg config/scannet/openseg_train.yaml
#   sh run/esg.sh exp/scannet/esg config/scannet/openseg_train.yaml resume exp/scannet/esg/last.pth
# Several GPUs: NPROC=4 sh run/esg.sh ...  (runs torchrun --nproc_per_node=4)
set -ex

exp_dir=$1
config=$2
shift 2

mkdir -p "${exp_dir}"
# keep the config next to the results it produced (unless it already lives there)
[ "$(cd "$(dirname "${config}")" && pwd)" = "$(cd "${exp_dir}" && pwd)" ] || cp "${config}" "${exp_dir}/"

export PYTHONPATH=.
if [ "${NPROC:-1}" -gt 1 ]; then
  launcher="torchrun --standalone --nproc_per_node=${NPROC}"
else
  launcher="python -u"
fi
# tee keeps a timestamped log; the status file carries python's exit code through the pipe (plain sh has no pipefail)
status=$(mktemp)
{ rc=0; ${launcher} train_esg.py --config "${config}" save_path "${exp_dir}" "$@" 2>&1 || rc=$?; echo "${rc}" > "${status}"; } \
  | tee -a "${exp_dir}/esg-$(date +"%Y%m%d_%H%M").log"
rc=$(cat "${status}"); rm -f "${status}"
exit "${rc}"
