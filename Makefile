# Two commands on a fresh machine:  `make demo`  (full pipeline on synthetic data)  and  `make test`
# (`make test ARGS="-k spconv"` passes arguments to pytest).
# Both create .venv and install the requirements and the project (pip install -e .) first, once.
# CPU-only machine: `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` (installation.md).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_INDEX ?=

.PHONY: install demo test bench clean-demo

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(VENV)/bin/pip install torch torchvision --index-url $(TORCH_INDEX))
	$(VENV)/bin/pip install -r requirements-test.txt
	$(VENV)/bin/pip install -e . --no-deps --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash run/demo.sh

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PYTHON) bench/sparse_unet.py --device cpu --scale 0.05

clean-demo:
	rm -rf data/demo_3d data/demo_multiview data/demo_text_embeddings.npy data/demo_query_embeddings.npy data/demo_queries.txt data/demo_manifest.jsonl exp/demo
