#!/bin/sh
# Evaluation of an ESG network (evaluate.py), as upstream's run/eval.sh: reads <exp_dir>/best.pth and
# writes predictions, PLY / PNG files and metrics to <exp_dir>/result_eval (with its log).
#   sh run/eval.sh <exp_dir> <config> [key value ...]
#   sh run/eval.sh exp/scannet/esg config/scannet/openseg_eval.yaml
#   sh run/eval.sh exp/scannet/esg config/scannet/openseg_eval.yaml model_path model_best.pth.tar test_repeats 1
# (later `key value` pairs win, so model_path / save_folder given here replace the defaults above)
set -e
exp_dir=$1
config=$2
shift 2
exec sh run/stage.sh eval "${exp_dir}/result_eval" "${config}" \
  "${PYTHON:-python}" -u evaluate.py --config "${config}" model_path "${exp_dir}/best.pth" save_folder "${exp_dir}/result_eval" "$@"
