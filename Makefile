# From Sliding Windows to Feature Pyramids -- two commands:
#   make lab    set up .venv, build the offline datasets, open JupyterLab on notebooks/
#   make test   set up .venv, build the ci datasets, run unit tests + every notebook (nbval, from an installed wheel)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip must fetch torch/torchvision from the package index as a matched (CUDA) pair.
# Machine-wide pip settings may point at a CPU-only torch wheel whose build cannot
# load torchvision's compiled ops ("operator torchvision::nms does not exist"),
# so the course's venv ignores them.
PIP_ENV := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_NO_INDEX PIP_CONFIG_FILE=/dev/null
PYTEST_ARGS ?=
LAB_ARGS ?=
TIMINGS_ARGS ?=

.PHONY: lab test test-notebooks test-site venv data bench timings clean help instructor gpu-check test-fullsize weights reference

help:
	@echo "make lab    - open the course in JupyterLab (sets everything up first); LAB_ARGS=\"--ip=0.0.0.0 --port=8890\""
	@echo "make test   - run the whole test suite, notebooks included, in the ci profile"
	@echo "make test-notebooks [NOTEBOOKS_ARGS=\"-k 05\"] - run the notebooks from an installed wheel (part of make test)"
	@echo "make bench  - run the benchmark scripts (course_lib vs torchvision, side by side)"
	@echo "make timings PROFILE=cpu - time every notebook (Run All) in a profile; writes the README's table"
	@echo "make instructor [PROFILE=gpu] [CHAPTERS=\"05 07\"] [DATA=voc] [GPUS=4] - run the notebooks, write results/<profile>/report.md"
	@echo "make weights - download the ImageNet weights the papers fine-tune (VGG16, ResNet-50/101) and the COCO R50-FPN into torchvision's cache"
	@echo "make reference [COCO=data/real/coco] - torchvision's COCO Faster R-CNN weights scored by the course's pipeline (AP beside the published 37.0)"
	@echo "make grade SUBMISSIONS=dir [OUT=gradebook.csv] [JOBS=2] - check every student's notebooks (ci profile, no solutions) into a CSV gradebook"
	@echo "make site [SITE_PROFILE=cpu] - the course as a static website in build/site/ (chapters executed in that profile, cached)"
	@echo "make gpu-check - CUDA tests, CUDA vs CPU, AMP steps at full scale, benchmarks on CUDA (skips without CUDA)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(PY) -m pip install --upgrade pip
	$(PIP_ENV) $(PY) -m pip install -e ".[dev]"
	@$(PY) -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)" || { \
	  echo "torchvision's compiled ops do not load against this torch: reinstall them as a matched pair:"; \
	  echo "  rm -rf $(VENV) && make venv"; exit 1; }
	@touch $@

# make lab LAB_ARGS="--ip=0.0.0.0 --port=8890": extra arguments for JupyterLab (a container, a remote machine).
# As root, course_lib/lab.py adds --allow-root (and says so); it prints the URL to open once the server answers.
lab: $(STAMP)
	$(PY) data_scripts/make_synthetic.py --skip-existing
	$(PY) data_scripts/pretrain_backbones.py
	$(PY) -m course_lib.lab $(LAB_ARGS)

test: export COURSE_PROFILE = ci
test: export COURSE_SOLUTIONS = 1
test: $(STAMP)
	$(PY) data_scripts/make_synthetic.py --profile ci --skip-existing
	$(PY) data_scripts/pretrain_backbones.py --profile ci --quiet
	$(PY) -m pytest tests --ignore=tests/browser/test_site.py $(PYTEST_ARGS)
	$(MAKE) test-notebooks
	$(MAKE) test-site

# Every notebook as a student's copy runs it: a wheel of this checkout installed in build/installed-venv (the course
# venv's third-party packages, not its editable course_lib), each notebook alone in an empty folder outside the
# checkout, nbval with that venv's kernel; the executed copies go to build/executed/ci/ (tests/installed/run_notebooks.py).
# NOTEBOOKS_ARGS: pytest arguments, e.g. "-k 05_faster_rcnn -x". In a checkout, `pytest --nbval-lax
# --nbval-current-env notebooks/05_faster_rcnn.ipynb` still runs one notebook against the checkout.
NOTEBOOKS_ARGS ?=
test-notebooks: export COURSE_PROFILE = ci
test-notebooks: export COURSE_SOLUTIONS = 1
test-notebooks: $(STAMP)
	env -u PYTHONPATH $(PY) tests/installed/run_notebooks.py $(NOTEBOOKS_ARGS)

# The website of the whole course, built from the notebooks test-notebooks just executed (build/executed/ci) and
# read in Chromium (tests/browser/test_site.py; alone, `pytest tests/browser/test_site.py` builds two chapters).
test-site: $(STAMP)
	COURSE_SITE_ALL_CHAPTERS=1 $(PY) -m pytest tests/browser/test_site.py

# make timings PROFILE=cpu: Run All on every notebook in that profile (default: COURSE_PROFILE, else gpu with
# CUDA, else cpu); the seconds go to course_lib/timings.json and the README's table. TIMINGS_ARGS: e.g. --notebooks 05
timings: $(STAMP)
	$(PY) data_scripts/make_synthetic.py $(if $(PROFILE),--profile $(PROFILE)) --skip-existing
	$(PY) data_scripts/pretrain_backbones.py $(if $(PROFILE),--profile $(PROFILE))
	$(PY) tests/benchmarks/timings.py $(if $(PROFILE),--profile $(PROFILE)) $(TIMINGS_ARGS)

bench: $(STAMP)
	$(PY) tests/benchmarks/bench_ops.py
	$(PY) tests/benchmarks/bench_fpn.py
	$(PY) tests/benchmarks/bench_lineage.py
	$(PY) tests/benchmarks/bench_efpn.py --rounds 1 --images 1
	$(PY) tests/benchmarks/bench_training.py --steps 2

clean:
	rm -rf $(VENV) data .pytest_cache build

# Instructors: run the chapters' notebooks headless and write results/$(PROFILE)/report.md (course_lib/run.py).
# PROFILE: ci, cpu, gpu (default: gpu with CUDA, else cpu); CHAPTERS: ids, e.g. "02 05 07" (default: all);
# DATA: synthetic, voc, coco, tt100k, papers; GPUS > 1: each chapter runs under torchrun --nproc_per_node $(GPUS);
# FORCE=1: run finished chapters again; REFERENCE=1: then `make reference` (torchvision's COCO weights, our pipeline).
PROFILE ?=
CHAPTERS ?=
DATA ?= synthetic
GPUS ?= 1
FORCE ?=
REFERENCE ?=
instructor: $(STAMP)
	$(PY) data_scripts/make_synthetic.py $(if $(PROFILE),--profile $(PROFILE)) --skip-existing
	$(PY) data_scripts/pretrain_backbones.py $(if $(PROFILE),--profile $(PROFILE))
	$(PY) -m course_lib.run $(if $(PROFILE),--profile $(PROFILE)) $(if $(CHAPTERS),--chapters $(CHAPTERS)) --data $(DATA) --gpus $(GPUS) $(if $(FORCE),--force)
	$(if $(REFERENCE),$(MAKE) reference)

# For a machine that is online only at setup: torchvision's ImageNet weights (and the COCO detector of `make reference`) into its cache ($$TORCH_HOME/hub/checkpoints),
# verified, resumable; afterwards weights="IMAGENET1K_V1" loads offline (course_lib/backbones/weights.py).
weights: $(STAMP)
	$(PY) data_scripts/download_weights.py

# torchvision's published COCO Faster R-CNN R50-FPN (box AP 37.0) through the course's loader, loop and COCOeval:
# needs val2017 prepared by data_scripts/prepare_coco.py --splits val (course_lib/evaluation/reference.py).
COCO ?= data/real/coco
reference: $(STAMP)
	$(PY) -m course_lib.evaluation.reference --data $(COCO) --json results/reference.json

# make grade SUBMISSIONS=submissions/: one NAME.ipynb or NAME/*.ipynb per student; see README "Grading a class".
OUT ?= gradebook.csv
JOBS ?= 1
.PHONY: grade
grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "make grade SUBMISSIONS=folder: the folder of students' notebooks"; exit 2; }
	$(PY) -m course_lib.exercises.grade "$(SUBMISSIONS)" --out "$(OUT)" --jobs $(JOBS)

# The course as a static website in build/site/ (course_lib/website.py: Sphinx + MyST-NB, offline): each chapter
# executed in SITE_PROFILE (cached in build/site-cache/<profile>/; with ci, make test's build/executed/ci copies when
# current). The explorers' notes link to Colab by course_lib.REPOSITORY, as the README does.
SITE_PROFILE ?= cpu
.PHONY: site
site: $(STAMP)
	$(PY) data_scripts/make_synthetic.py --profile $(SITE_PROFILE) --skip-existing
	$(PY) data_scripts/pretrain_backbones.py --profile $(SITE_PROFILE)
	$(PY) -m course_lib.website --profile $(SITE_PROFILE) $(if $(filter ci,$(SITE_PROFILE)),--executed build/executed/ci)

# The GPU check runs on a GPU machine's own Python and torch when there is no .venv (no install needed there).
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHONPATH=. $(GPU_PY) -m course_lib.gpu_check

# One training step of every chapter's model at the gpu profile's sizes, on the CPU (several minutes).
test-fullsize: $(STAMP)
	COURSE_FULLSIZE_TESTS=1 $(PY) -m pytest tests/instructor/test_gpu_profile_step.py
