#!/usr/bin/env bash
# The whole 3DSS-VLG pipeline on the synthetic default (no download, CPU), and the paper's comparison at demo scale:
#   synthetic data -> PLG pseudo labels -> ESS train -> ESS inference -> ESG train -> evaluate,
#   beside it two more 3D networks of the same architecture and schedule: distilled from the raw fused features
#   (OpenScene's 3D distillation, ESG without ESS) and trained on GT labels (the ceiling) -> one table.
#   make demo            (or: PYTHONPATH=. bash run/demo.sh from the repository root)
# Outputs: data/demo_*, exp/demo/{plg,plg_refined_val,ess,ess_embeddings,esg,esg_fused,supervised}, each network's evaluation in
# <run>/result_eval; the table is printed at the end and written to exp/demo/demo_summary.txt, with
# exp/demo/demo_curves.png and exp/demo/demo_per_class.png. Every run starts from scratch (the demo's own
# folders are removed).
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH=.
export HF_HUB_OFFLINE=1          # the demo never reaches a model hub: text embeddings come from a file
PYTHON=${PYTHON:-python}
# rendered (default): RGB-D and 2D feature frames ray-cast from the synthetic rooms and fused by
# prep/fusion.py, the real fusion code path (about 40 s); simulated: the analytic formula on
# visibility (about 12 s)
DEMO_FEATURES=${DEMO_FEATURES:-rendered}
# the larger version of the same comparison (README, "What the demo shows"): more training rooms and / or a longer
# schedule for the three 3D networks, e.g. DEMO_TRAIN_ROOMS=64 DEMO_NET_EPOCHS=40 make demo
DEMO_TRAIN_ROOMS=${DEMO_TRAIN_ROOMS:-16}
net_overrides=()
if [ -n "${DEMO_NET_EPOCHS:-}" ]; then net_overrides=(epochs "${DEMO_NET_EPOCHS}"); fi

rm -rf data/demo_3d data/demo_multiview data/demo_text_embeddings.npy data/demo_query_embeddings.npy data/demo_queries.txt data/demo_manifest.jsonl exp/demo
mkdir -p exp/demo
timings=exp/demo/demo_timings.tsv
: > "${timings}"

stage() {  # stage <name> <command ...>: run it, record its wall time
  local name=$1; shift
  echo "=== ${name}: $*"
  local start end
  start=$(date +%s%N)
  "$@"
  end=$(date +%s%N)
  printf '%s\t%s\n' "${name}" "$(( (end - start) / 1000000 ))" >> "${timings}"   # milliseconds
}

stage "synthetic data" ${PYTHON} -m synthetic --out data --name demo --dataset scannet --features "${DEMO_FEATURES}" \
    --num-train "${DEMO_TRAIN_ROOMS}"
stage "PLG" sh vlm_ps_generation/generation_vlm.sh exp/demo/plg vlm_ps_generation/config/demo.yaml
# beyond the paper, one table row: the val PLG labels (GT tags, per point, as the reference row) refined within the
# synthetic scenes' superpoints (docs/method.md, "PLG refinement"); nothing downstream reads them
stage "PLG refined (val)" sh vlm_ps_generation/generation_vlm.sh exp/demo/plg_refined_val \
  vlm_ps_generation/config/demo.yaml split val plg_per_point True plg_refine superpoints
stage "ESS train" sh run/ess_train.sh exp/demo/ess config/demo/openseg_pre_train.yaml
stage "ESS inference" sh run/ess_eval.sh exp/demo/ess config/demo/openseg_pre_eval.yaml
stage "ESG train" sh run/esg.sh exp/demo/esg config/demo/openseg_train.yaml "${net_overrides[@]}"
stage "evaluate" sh run/eval.sh exp/demo/esg config/demo/openseg_eval.yaml
stage "3D from raw fused" sh run/esg.sh exp/demo/esg_fused config/demo/openseg_train_fused.yaml "${net_overrides[@]}"
stage "evaluate raw-fused net" sh run/eval.sh exp/demo/esg_fused config/demo/openseg_eval.yaml
stage "supervised 3D" sh run/esg.sh exp/demo/supervised config/demo/supervised_train.yaml "${net_overrides[@]}"
stage "evaluate supervised net" sh run/eval.sh exp/demo/supervised config/demo/openseg_eval.yaml

${PYTHON} run/demo_summary.py --exp exp/demo --timings "${timings}" | tee exp/demo/demo_summary.txt
