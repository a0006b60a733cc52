#!/bin/sh
# ESG training (train_esg.py): checkpoints, logs and TensorBoard files go to <exp_dir>.
#   sh run/esg.sh <exp_dir> <config> [key value ...]
#   sh run/esg.sh exp/scannet/esg config/scannet/openseg_train.yaml
#   sh run/esg.sh exp/scannet/esg config/scannet/openseg_train.yaml resume exp/scannet/esg/last.pth
# Several GPUs: NPROC=4 sh run/esg.sh ...  (runs torchrun --nproc_per_node=4)
set -e
exp_dir=$1
config=$2
shift 2
if [ "${NPROC:-1}" -gt 1 ]; then
  set -- torchrun --standalone --nproc_per_node="${NPROC}" train_esg.py --config "${config}" save_path "${exp_dir}" "$@"
else
  set -- "${PYTHON:-python}" -u train_esg.py --config "${config}" save_path "${exp_dir}" "$@"
fi
exec sh run/stage.sh esg "${exp_dir}" "${config}" "$@"
