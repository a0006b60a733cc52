#!/bin/sh
# ESS training (train_openseg_pre_train.py): checkpoints, logs and TensorBoard files go to <exp_dir>.
#   sh run/ess_train.sh <exp_dir> <config> [key value ...]
#   sh run/ess_train.sh exp/scannet/ess config/scannet/openseg_pre_train.yaml
#   sh run/ess_train.sh exp/scannet/ess config/scannet/openseg_pre_train.yaml resume exp/scannet/ess/last.pth
set -ex

exp_dir=$1
config=$2
shift 2

mkdir -p "${exp_dir}"
# keep the config next to the results it produced (unless it already lives there)
[ "$(cd "$(dirname "${config}")" && pwd)" = "$(cd "${exp_dir}" && pwd)" ] || cp "${config}" "${exp_dir}/"

export PYTHONPATH=.
# tee keeps a timestamped log; the status file carries python's exit code through the pipe (plain sh has no pipefail)
status=$(mktemp)
{ rc=0; python -u train_openseg_pre_train.py --config "${config}" save_path "${exp_dir}" "$@" 2>&1 || rc=$?; echo "${rc}" > "${status}"; } \
  | tee -a "${exp_dir}/ess_train-$(date +"%Y%m%d_%H%M").log"
rc=$(cat "${status}"); rm -f "${status}"
exit "${rc}"
