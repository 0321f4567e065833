# One-command environment. Every target is idempotent.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements/cpu.lock

.PHONY: setup test demo clean

setup: $(STAMP)

# Re-install only when the lock or the package metadata changes.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch/torchvision first: the pairing matters (see README, dependency notes).
	$(VPY) -m pip install -q $$(grep -E '^(torch|torchvision)==' $(LOCK))
	$(VPY) -m pip install -q -r $(LOCK)
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: setup
	$(VPY) -m pytest -q tests

demo: setup
	$(VPY) -m r1vfree_mcore.demo

clean:
	rm -rf $(VENV) .pytest_cache
