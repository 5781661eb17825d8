#!/usr/bin/env bash
# Builds the real enroot and pyxis from the offline upstream snapshots in ../shared/upstream/ (or
# $BUILDER_UPSTREAM_DIR), so the export and Slurm tests run the real clients, not stand-ins.
# Recipes: ../shared/upstream/README.md ("Building enroot", "Building pyxis").
#   enroot -> /usr/local (bin/enroot, etc/enroot, lib/enroot): the upstream Makefile's default prefix
#   pyxis  -> /usr/local/lib/builder-pyxis/spank_pyxis.so, loaded by tests/slurm_support.py through
#             a plugstack.conf line (pyxis README: "required /path/spank_pyxis.so ...")
# Idempotent: each build is skipped when a stamp holds the SHA256 of the tarball it came from.
# Root only (installs packages and files under /usr/local); prints its own timing.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

UPSTREAM="${BUILDER_UPSTREAM_DIR:-$(cd .. && pwd)/shared/upstream}"
ENROOT_TGZ="$UPSTREAM/enroot-4.1.2-src.tar.gz"
PYXIS_TGZ="$UPSTREAM/pyxis-0.24.0-src.tar.gz"
PYXIS_DIR=/usr/local/lib/builder-pyxis

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-upstream: needs root (installs enroot under /usr/local); skipped" >&2
    exit 0
fi
for f in "$ENROOT_TGZ" "$PYXIS_TGZ"; do
    if [ ! -f "$f" ]; then
        echo "setup-upstream: $f not found (set BUILDER_UPSTREAM_DIR to the folder of the upstream snapshots)" >&2
        exit 1
    fi
done

# enroot's runtime needs (its README's dependency list, as the upstream README here tried them),
# plus libslurm-dev for pyxis's spank.h.
APT_PACKAGES=(git gcc make libcap2-bin libtool libmd-dev automake gawk parallel pigz jq curl
              squashfs-tools zstd fuse-overlayfs squashfuse libslurm-dev)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$(sha256sum "$2" | cut -d' ' -f1)" ]; }

work=$(mktemp -d /tmp/builder-upstream.XXXXXX)
trap 'rm -rf "$work"' EXIT

if stamp_ok /usr/local/lib/enroot/.builder-stamp "$ENROOT_TGZ" && command -v enroot >/dev/null; then
    echo "setup-upstream: enroot $(enroot version) already built"
else
    tar -xzf "$ENROOT_TGZ" -C "$work"
    make -C "$work/enroot-4.1.2" -j"$(nproc)" install prefix=/usr/local >"$work/enroot.log" 2>&1 \
        || { tail -30 "$work/enroot.log" >&2; exit 1; }
    make -C "$work/enroot-4.1.2" setcap prefix=/usr/local >>"$work/enroot.log" 2>&1 \
        || { tail -30 "$work/enroot.log" >&2; exit 1; }
    sha256sum "$ENROOT_TGZ" | cut -d' ' -f1 >/usr/local/lib/enroot/.builder-stamp
    echo "setup-upstream: enroot $(/usr/local/bin/enroot version) built"
fi

if stamp_ok "$PYXIS_DIR/.builder-stamp" "$PYXIS_TGZ" && [ -f "$PYXIS_DIR/spank_pyxis.so" ]; then
    echo "setup-upstream: pyxis already built ($PYXIS_DIR/spank_pyxis.so)"
else
    tar -xzf "$PYXIS_TGZ" -C "$work"
    make -C "$work/pyxis-0.24.0" -j"$(nproc)" >"$work/pyxis.log" 2>&1 \
        || { tail -30 "$work/pyxis.log" >&2; exit 1; }
    install -d "$PYXIS_DIR"
    install -m 0755 "$work/pyxis-0.24.0/spank_pyxis.so" "$PYXIS_DIR/spank_pyxis.so"
    sha256sum "$PYXIS_TGZ" | cut -d' ' -f1 >"$PYXIS_DIR/.builder-stamp"
    echo "setup-upstream: pyxis built ($PYXIS_DIR/spank_pyxis.so)"
fi
echo "setup-upstream: done in $((SECONDS - start)) s"
