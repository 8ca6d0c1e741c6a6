# lvs-router: `make demo` runs the main job on a built-in example, `make test` runs
# every test. Both set up what they need on a fresh Debian 12 machine (as root) and
# are safe to run again.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the project needs: the venv module, /etc/services (port names),
# and keepalived (the compile benchmark's baseline); bcc, kernel headers, iproute2,
# ethtool and tcpdump for the XDP dataplane and its tests; qemu, the Debian kernel,
# ipvsadm and busybox (virtme-ng builds its initramfs with it) for the IPVS VM tests.
APT_PACKAGES := python3-venv python3-pip netbase keepalived qemu-system-x86 linux-image-amd64 ipvsadm python3-bpfcc linux-headers-amd64 iproute2 ethtool tcpdump busybox-static

.PHONY: test demo bench lint format setup clean apt bpfenv

setup: $(STAMP) bpfenv

# bcc compiles against /lib/modules/$(uname -r)/build; the running kernel ships no
# headers, so point build/source at Debian's linux-headers (UAPI is all XDP needs),
# and mount bpffs for pinning. Idempotent.
bpfenv: | apt
	@k=$$(uname -r); hdr=$$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1); \
	common=$$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1); \
	if [ -n "$$hdr" ] && [ ! -e /lib/modules/$$k/build/include ]; then \
	  mkdir -p /lib/modules/$$k && ln -sfn $$hdr /lib/modules/$$k/build && \
	  ln -sfn $$common /lib/modules/$$k/source && echo "bpfenv: headers $$hdr"; fi; \
	mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

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

test: $(STAMP) bpfenv lint
	$(VENV)/bin/pytest -q

# the main job: compile, then two routers, three web servers and a client in network
# namespaces (demo/run.py, about 30 s; everything is removed at the end, Ctrl-C too)
demo: $(STAMP) bpfenv
	@echo "== lvs-compile check examples/lvs.cf"
	$(VENV)/bin/lvs-compile check examples/lvs.cf
	@echo
	@echo "== lvs-compile emit --target ipvsadm examples/lvs.cf   (ipvsadm-save -n format)"
	$(VENV)/bin/lvs-compile emit --target ipvsadm examples/lvs.cf
	@echo
	@echo "== lvs-compile check --dialect piranha examples/broken.cf   (what a mistake looks like)"
	-$(VENV)/bin/lvs-compile check --dialect piranha examples/broken.cf
	@echo
	@echo "== lvs-compile check examples/demo.cf   (the live demo's config)"
	$(VENV)/bin/lvs-compile check examples/demo.cf
	@echo
	@echo "== live: two lvs-routers (pulse + XDP), three web servers, a client; failover"
	$(PY) -m demo.run

bench: $(STAMP)
	$(PY) bench/compile_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
