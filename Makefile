# sercon: `make test-linux` is the main job, `make test` runs everything.
# Every target that needs the tools depends on `setup`, so each works on a fresh Debian machine.

VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.sercon-installed
PYTEST_ARGS ?=
# Debian packages the tests need: QEMU (with qemu-img), openssl (hashes guest passwords),
# mmdebstrap + e2fsprogs + fdisk + grub-pc-bin (the Debian disk images), chromium (web console
# tests), gcc + libc6-dev (the SAC simulator, linked statically into its guest), openssh-client (the
# SSH gateway tests use the real OpenSSH client), zstd + xz-utils (sercon check reads initrds
# compressed the way distributions ship them; e2fsprogs' debugfs and fdisk's sfdisk read disks offline);
# UEFI guests: ovmf (firmware), grub-efi-amd64-bin, grub-efi-amd64-signed + shim-signed (Secure Boot
# chain), dosfstools + mtools (the EFI system partition, without a loop mount), swtpm (a vTPM).
# The libvirt backend: libvirt-daemon (libvirtd, virtlogd, and virt-ssh-helper, the remote end of
# qemu+ssh://) with its QEMU driver, libvirt-clients (virsh), libvirt-dev + pkg-config + python3-dev
# (pip builds libvirt-python), openssh-server (a loopback sshd for the qemu+ssh:// tests),
# netcat-openbsd (the remote end libvirt falls back to without virt-ssh-helper; only recommended).
APT_PACKAGES := qemu-system-x86 qemu-utils busybox-static openssl python3-venv \
                mmdebstrap e2fsprogs fdisk grub-pc-bin chromium gcc libc6-dev cpio openssh-client zstd xz-utils \
                ovmf grub-efi-amd64-bin grub-efi-amd64-signed shim-signed swtpm dosfstools mtools \
                libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config python3-dev \
                openssh-server netcat-openbsd

.PHONY: setup system-packages images test test-unit test-linux test-images test-drills test-windows lint bench \
        test-libvirt test-libvirt-hosts \
        libvirt-local clean clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml emulator/gateway/package-lock.json
	@$(MAKE) --no-print-directory system-packages
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat: a plain .pth path, not an import finder that costs every sercon process (the owner
	# among them) ~40 ms at start-up; setuptools calls the mode transitional, hence the fallback.
	$(PY) -m pip install -q -e '.[test,lint,bench]' --config-settings editable_mode=compat 2>/dev/null || \
	  $(PY) -m pip install -q -e '.[test,lint,bench]'
	cd emulator/gateway && npm ci --no-audit --no-fund --loglevel=error
	@touch $(STAMP)

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run: sudo apt-get install -y --no-install-recommends$$missing"; exit 1; \
	  fi; \
	fi
	@apt-cache policy linux-image-amd64 | grep -q 'Candidate: [0-9]' || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q; else echo "run: sudo apt-get update"; exit 1; fi; }

images: setup
	$(VENV)/bin/sercon image build linux-initramfs sac-sim debian-systemd debian-grub debian-shells debian-uefi \
	  debian-uefi-secureboot

test-unit: setup
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test-linux: images
	$(PY) -m pytest tests/linux -v -p no:cacheprovider $(PYTEST_ARGS)

# Images as other people build them (images/variants.toml, debian-shells): login on every getty
# and prompt, `sercon check` verdicts, the readiness suite on disk paths, offline disk reading.
test-images: images
	$(PY) -m pytest tests/images -v -s -p no:cacheprovider $(PYTEST_ARGS)

# The rescue drills, as users run them against their own images, on the BIOS and the UEFI disk.
DRILL_IMAGES ?= debian-grub debian-uefi
test-drills: images
	@for image in $(DRILL_IMAGES); do \
	  $(PY) -m pytest --pyargs harness.rescue_drills --sercon-image $$image -v -p no:cacheprovider $(PYTEST_ARGS) \
	    || exit 1; \
	done

test-windows: images
	$(PY) -m pytest tests/windows -v -p no:cacheprovider $(PYTEST_ARGS)

test: images
	$(PY) -m pytest tests -v -p no:cacheprovider --ignore=tests/bench $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-drills
	@$(MAKE) --no-print-directory test-libvirt-hosts

# Guests on libvirt hosts: the backend's own tests, then the console-path, power and snapshot suites
# again with every guest on a libvirt host: the local daemon (qemu:///system), and the same daemon
# through a real sshd on 127.0.0.1 (qemu+ssh://, a second "host" on one machine).
LIBVIRT_SUITES ?= tests/linux/test_console_path.py tests/linux/test_power.py tests/linux/test_snapshots.py
test-libvirt: images libvirt-local
	$(PY) -m pytest tests/libvirt -v -p no:cacheprovider $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-libvirt-hosts

test-libvirt-hosts: images libvirt-local
	$(PY) -m pytest $(LIBVIRT_SUITES) -v -p no:cacheprovider --sercon-host qemu:///system $(PYTEST_ARGS)
	$(PY) -m emulator.ssh_loopback -- $(PY) -m pytest $(LIBVIRT_SUITES) -v -p no:cacheprovider \
	  --sercon-host '{uri}' $(PYTEST_ARGS)

# A local libvirt host without systemd (virtlogd, libvirtd, the `sercon` pool), as root; prints its URI.
libvirt-local: setup
	$(PY) -m emulator.libvirt_local

lint: setup
	$(VENV)/bin/ruff check emulator harness tests
	$(VENV)/bin/mypy

bench: images
	$(PY) tests/bench/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-cache:
	rm -rf $${SERCON_CACHE:-$$HOME/.cache/sercon}/images
