#!/bin/sh
# Evaluation of an ESG network (evaluate.py), as upstream's run/eval.sh: reads <exp_dir>/best.pth and writes
# predictions, PLY / PNG files, metrics and its log to <exp_dir>/result_eval. Works from any folder.
#   sh run/eval.sh <exp_dir> <config> [key value | key=value ...]
#   sh run/eval.sh exp/scannet/esg config/scannet/openseg_eval.yaml
#   sh run/eval.sh exp/scannet/esg config/scannet/openseg_eval.yaml model_path model_best.pth.tar save_folder out
# (later `key value` pairs win: model_path / save_folder given here replace <exp_dir>'s, and the log follows
# save_folder)
set -e
here=$(dirname "$0")
DRIVER=$0 SCRIPT=evaluate.py WHAT="evaluate <exp_dir>/best.pth into <exp_dir>/result_eval"
EXAMPLE="exp/scannet/esg config/scannet/openseg_eval.yaml"
. "${here}/usage.sh"
exp_dir=$1
config=$2
shift 2
exec sh "${here}/stage.sh" "${SCRIPT}" save_folder "${exp_dir}/result_eval" "${config}" model_path "${exp_dir}/best.pth" "$@"
