#!/usr/bin/env bash
# The README's pictures of queries, own scans, evaluation and the viewer, regenerated from the demo's network
# (run `make demo` first; the viewer screenshot needs chromium + chromium-driver, see .ci/run):
#   bash run/docs_pictures.sh
# Writes docs/{query_chair,own_scan_pred,eval_topdown,iou_per_class,viewer,viewer_query}.png from out/docs/, and
# copies the demo's comparison pictures (docs/demo_curves.png, docs/demo_per_class.png).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
export HF_HUB_OFFLINE=1
PYTHON=${PYTHON:-python}
CONFIG=config/demo/openseg_eval.yaml
SCENE=scene0018_00
mkdir -p docs out/docs

# a free-text query on the demo's val split (class names take the demo's text-embedding rows)
${PYTHON} query.py --config ${CONFIG} queries "chair;bed" scenes ${SCENE} save_folder out/docs/query
cp out/docs/query/${SCENE}_chair.png docs/query_chair.png
# an own scan: the demo room exported as a scanner app writes it (binary, y-up, normals, confidence)
${PYTHON} bench/own_scan.py --scene data/demo_3d/val/${SCENE}_vh_clean_2.pth --points 0 --out out/docs/own_scan
cp out/docs/own_scan/result/scan_pred.png docs/own_scan_pred.png
# evaluation pictures (make demo wrote them; evaluate.py again, so they follow the current code)
${PYTHON} evaluate.py --config ${CONFIG} save_folder out/docs/eval save_ply False
cp out/docs/eval/${SCENE}_topdown.png docs/eval_topdown.png
cp out/docs/eval/iou_per_class.png docs/iou_per_class.png
# the viewer in headless Chromium: prediction, then a live query
${PYTHON} -m viewer.screenshot exp/demo/esg --out docs/viewer.png --scene ${SCENE} --mode prediction
${PYTHON} -m viewer.screenshot exp/demo/esg --out docs/viewer_query.png --scene ${SCENE} --query chair
# the demo's comparison (run/demo_summary.py wrote them)
cp exp/demo/demo_curves.png exp/demo/demo_per_class.png docs/
ls -l docs/*.png
