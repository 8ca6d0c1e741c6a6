# lvs-router: `make demo` runs the main job on a built-in example, `make test` runs
# every test. Both set up what they need on a fresh Debian 12 machine (as root) and
# are safe to run again.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the project needs: the venv module, /etc/services (port names),
# and keepalived (the compile benchmark's baseline).
APT_PACKAGES := python3-venv python3-pip netbase keepalived qemu-system-x86 linux-image-amd64 ipvsadm

.PHONY: test demo bench lint format setup clean apt

setup: $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The venv is built from Debian's interpreter with its site-packages visible so that
# bcc (Debian's python3-bpfcc, not on PyPI) is importable by the dataplane later.
$(STAMP): pyproject.toml | apt
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP) lint
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	@echo "== lvs-compile check examples/lvs.cf"
	$(VENV)/bin/lvs-compile check examples/lvs.cf
	@echo
	@echo "== lvs-compile emit --target ipvsadm examples/lvs.cf   (ipvsadm-save -n format)"
	$(VENV)/bin/lvs-compile emit --target ipvsadm examples/lvs.cf
	@echo
	@echo "== lvs-compile check --dialect piranha examples/broken.cf   (what a mistake looks like)"
	-$(VENV)/bin/lvs-compile check --dialect piranha examples/broken.cf

bench: $(STAMP)
	$(PY) bench/compile_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
