#!/bin/sh
# ESS training (train_openseg_pre_train.py): checkpoints, logs and TensorBoard files go to <exp_dir>.
#   sh run/ess_train.sh <exp_dir> <config> [key value ...]
#   sh run/ess_train.sh exp/scannet/ess config/scannet/openseg_pre_train.yaml
#   sh run/ess_train.sh exp/scannet/ess config/scannet/openseg_pre_train.yaml resume exp/scannet/ess/last.pth
set -e
exp_dir=$1
config=$2
shift 2
exec sh run/stage.sh ess_train "${exp_dir}" "${config}" \
  "${PYTHON:-python}" -u train_openseg_pre_train.py --config "${config}" save_path "${exp_dir}" "$@"
