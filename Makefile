# Two commands on a fresh machine:  `make demo`  (full pipeline on synthetic data)  and  `make test`.
# Both create .venv and install requirements first (once).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean-demo

$(STAMP): requirements.txt requirements-test.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements-test.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH PYTHONPATH=. bash run/demo.sh

test: $(STAMP)
	PYTHONPATH=. HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q tests

bench: $(STAMP)
	PYTHONPATH=. $(PYTHON) bench/sparse_unet.py --device cpu --scale 0.05

clean-demo:
	rm -rf data/demo_3d data/demo_multiview data/demo_text_embeddings.npy exp/demo
