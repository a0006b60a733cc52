#!/bin/sh
# ESG training (train_esg.py): checkpoints, log, TensorBoard files and the resolved config go to <exp_dir>. NPROC=4 runs torchrun on 4 processes (GPUs).
# Works from any folder.
#   sh run/esg.sh <exp_dir> <config> [key value | key=value ...]
#   sh run/esg.sh exp/scannet/esg config/scannet/openseg_train.yaml
#  NPROC=4 sh run/esg.sh exp/scannet/esg config/scannet/openseg_train.yaml
set -e
here=$(dirname "$0")
DRIVER=$0 SCRIPT=train_esg.py WHAT="ESG training (train_esg.py): checkpoints, log, TensorBoard files and the resolved config go to <exp_dir>. NPROC=4 runs torchrun on 4 processes (GPUs)."
EXAMPLE="exp/scannet/esg config/scannet/openseg_train.yaml"
. "${here}/usage.sh"
exp_dir=$1
config=$2
shift 2
exec sh "${here}/stage.sh" "${SCRIPT}" save_path "${exp_dir}" "${config}" "$@"
