#!/usr/bin/env bash
# Installs what the tool and its tests need on a Debian machine (root), creates .venv with the
# project installed, and starts a Docker engine when none answers. Idempotent: safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
setup_start=$SECONDS

# docker-compose: the SageMaker SDK's local mode runs `docker-compose up` (its compose file asks
# for a bridge network, `sagemaker-local`, which an engine started with --bridge=none still creates).
# gnupg: builder outdated --write verifies the EFA installer's signature with gpg (and its tests sign with a throw-away key).
APT_PACKAGES=(docker.io debootstrap squashfs-tools squashfs-tools-ng docker-registry slurm-wlm munge libpmix-dev busybox-static docker-compose gnupg)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup-host: missing Debian packages (need root to install): ${missing[*]}" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test]"

# A Docker engine: use one that answers, else start Debian's dockerd (see GUIDE section 4).
if [ -x /usr/bin/docker ] && ! /usr/bin/docker info >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        mkdir -p /var/log
        nohup dockerd --storage-driver=vfs --iptables=false --bridge=none >/var/log/builder-dockerd.log 2>&1 &
        for _ in $(seq 1 60); do
            /usr/bin/docker info >/dev/null 2>&1 && break
            sleep 1
        done
    fi
fi
if /usr/bin/docker info >/dev/null 2>&1; then
    echo "setup-host: Docker engine ready"
else
    echo "setup-host: no Docker engine answers (integration tests will skip locally, fail in CI)" >&2
fi

# The real enroot and pyxis, built from ../shared/upstream/ (export and Slurm end-to-end tests).
bash scripts/setup-upstream.sh
echo "setup-host: done in $((SECONDS - setup_start)) s"
