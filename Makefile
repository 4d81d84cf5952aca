# Two entry points for a fresh machine: `make demo` (the main job on the mini world, offline, CPU)
# and `make test` (the test suite). Both create the virtual environment on first use.

VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU/CUDA build of torch is chosen here; pinned so that installs are reproducible.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v java >/dev/null || { echo "error: Java (>= 8) is not on PATH. CIDEr needs it (pycocoevalcap's PTB tokenizer): apt-get install default-jre-headless"; exit 1; }
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	# the reference APGD the attack tests compare with; --no-deps: it pins requests 2.25 but never imports it
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	# the reference OpenFlamingo its logits are compared with; --no-deps: it pins torch 2.0.1, runs on ours
	$(PY) -m pip install --quiet --no-deps open-flamingo==2.0.1 einops-exts==0.0.4 einops==0.8.2
	touch $@

demo: install
	$(PY) -m vlm_eval --vlm mini-llava --encoder mini-clip --task mini-coco

test: install
	$(PY) -m pytest -q

# the inner loop: pure and tiny-model tests, without the mini-world runs marked slow
test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) results .pytest_cache
