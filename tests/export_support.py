"""Real parts for the export tests: small local images with every tricky case, and readers that
turn ``docker export`` and ``unsquashfs`` output into comparable entry tables.

Images are cached in the engine under a tag derived from everything that makes them, so a
second test run builds nothing. No image is pulled: the base is a busybox-static rootfs made
with ``docker import``; the tricky image is a small Dockerfile built with BuildKit on top, plus
one hand-written layer added through ``docker load``, because the vfs storage driver never
writes opaque-directory markers (``.wh..wh..opq``) itself and the engine must still apply them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCKER = "/usr/bin/docker"  # Debian's 20.10 client: builds with BuildKit when DOCKER_BUILDKIT=1
BUSYBOX = "/bin/busybox"
RECIPE_REVISION = "3"  # bump when the images below change
APPLETS = ("sh", "ls", "cat", "echo", "mkdir", "rm", "ln", "chmod", "chown", "touch", "mv", "cp",
           "true", "mkfifo", "printf", "test", "[", "sleep")
LONG_NAME = "L" * 150  # longer than ustar's 100-character name field
ENROOT_FILES = ("etc/rc", "etc/rc.local", "etc/environment", "etc/fstab")
# The engine's init layer rewrites these in every container (mode 0755, empty, new mtime): in
# ``docker export`` they are the engine's, not the image's, so only their presence is compared.
ENGINE_INIT_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip when a daemon or tool is missing; in CI (CI=true) that is a failure instead."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def docker_ok() -> bool:
    if not os.path.exists(DOCKER):
        return False
    return subprocess.run([DOCKER, "info"], capture_output=True).returncode == 0


def need_export_tools() -> None:
    need(docker_ok(), "no Docker engine answers (run scripts/setup-host.sh)")
    for tool in ("mksquashfs", "unsquashfs"):
        need(shutil.which(tool) is not None, f"{tool} is missing (apt-get install squashfs-tools)")
    need(os.path.exists(BUSYBOX), "busybox-static is missing (apt-get install busybox-static)")
    need(os.geteuid() == 0, "the export integration tests need root (devices, owners, chroot)")


def docker(*args: str, input: bytes | None = None, env: dict | None = None) -> bytes:
    proc = subprocess.run([DOCKER, *args], input=input, capture_output=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {proc.stderr.decode()[-2000:]}")
    return proc.stdout


def image_exists(ref: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", ref], capture_output=True).returncode == 0


def _key(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# --- the base image: busybox-static, with what the engine would otherwise add ---------------------

def _add(tar: tarfile.TarFile, name: str, kind=tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
         link: str = "", uid: int = 0, gid: int = 0, major: int = 0, minor: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 1_700_000_000
    info.linkname, info.devmajor, info.devminor = link, major, minor
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def base_image() -> str:
    """``builder-test/export-base:<key>``: busybox plus /etc, /proc, /sys, /dev, /tmp.

    The files the engine's init layer adds to every container (/etc/hosts, hostname,
    resolv.conf, mtab) are in the image already, so ``docker export`` adds nothing but
    /.dockerenv and /dev content, which enroot leaves out too.
    """
    busybox = Path(BUSYBOX).read_bytes()
    ref = f"builder-test/export-base:{_key(busybox, RECIPE_REVISION, *APPLETS)}"
    if image_exists(ref):
        return ref
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder, mode in (("bin", 0o755), ("etc", 0o755), ("proc", 0o555), ("sys", 0o555),
                             ("dev", 0o755), ("tmp", 0o1777), ("root", 0o700)):
            _add(tar, folder, tarfile.DIRTYPE, mode=mode)
        _add(tar, "bin/busybox", data=busybox, mode=0o755)
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, link="busybox", mode=0o777)
        _add(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
        _add(tar, "etc/group", data=b"root:x:0:\nuser:x:1000:\n")
        for name in ("hosts", "hostname", "resolv.conf"):
            _add(tar, f"etc/{name}")
        _add(tar, "etc/mtab", tarfile.SYMTYPE, link="/proc/mounts", mode=0o777)
    docker("import", "-", ref, input=buf.getvalue())
    return ref


# --- the tricky image --------------------------------------------------------------------------------

DOCKERFILE = r"""
FROM {base}
RUN mkdir -p /data/keep /data/gone/sub /data/opq/old /data/dir2file /data/ro && \
    echo a > /data/keep/a && echo b > /data/gone/sub/b && echo o1 > /data/opq/o1 && \
    echo o2 > /data/opq/old/o2 && echo x > /data/dir2file/x && echo f > /data/file2dir && \
    echo del > /data/deleted && ln -s keep/a /data/link_rel && ln -s /data/keep /data/link_abs && \
    ln -s missing /data/dangling && echo h > /data/hard1 && ln /data/hard1 /data/hard2 && \
    echo spaced > "/data/name with space" && echo u > "/data/ünï-ßtrange" && echo long > /data/{long}
RUN rm -rf /data/gone /data/deleted /data/opq && mkdir -p /data/opq && echo new > /data/opq/new && \
    rm -rf /data/dir2file && echo now-a-file > /data/dir2file && \
    rm /data/file2dir && mkdir /data/file2dir && echo in > /data/file2dir/in && \
    rm /data/link_rel && ln -s /data/keep/a /data/link_rel && echo h3 > /data/hard3 && ln /data/hard3 /data/hard4
RUN echo suid > /data/suid && chmod 4755 /data/suid && echo sgid > /data/sgid && chmod 2711 /data/sgid && \
    mkdir /data/sticky && chmod 1777 /data/sticky && mkdir /data/setgid_dir && chmod 2775 /data/setgid_dir && \
    echo secret > /data/private && chmod 0600 /data/private && echo none > /data/nomode && chmod 0000 /data/nomode && \
    chmod 0555 /data/ro && echo owned > /data/owned && chown 1000:1000 /data/owned && \
    chown -h 1001:1002 /data/link_abs && mkdir /data/userdir && chown 1234:5678 /data/userdir && \
    echo mine > /data/userdir/file && chown 1234:5678 /data/userdir/file && mkfifo /data/fifo && \
    echo appended >> /data/hard1
ENV FOO="bar baz" PATH=/usr/local/bin:/bin
LABEL org.opencontainers.image.title=tricky com.example.pytorch=2.3.0
WORKDIR /work/dir
VOLUME /scratch
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo \"it's quoted\" $FOO"]
"""


def _crafted_layer() -> bytes:
    """A layer as another builder (overlayfs, BuildKit) would write it: opaque directories,
    one marked after this layer's own entry in it, whiteouts, a device node, a hard link and
    content under /dev."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "data/", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "data/keep/", tarfile.DIRTYPE, mode=0o750)
        _add(tar, "data/keep/.wh..wh..opq", mode=0)
        _add(tar, "data/keep/fresh", data=b"fresh\n")
        _add(tar, "data/file2dir/", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "data/file2dir/zz_new", data=b"kept: written by this layer before the marker\n")
        _add(tar, "data/file2dir/.wh..wh..opq", mode=0)
        _add(tar, "data/.wh.sticky", mode=0)
        _add(tar, "data/.wh.ünï-ßtrange", mode=0)
        _add(tar, "bin/.wh.true", mode=0)
        _add(tar, "data/ro/", tarfile.DIRTYPE, mode=0o555)
        _add(tar, "data/ro/added", data=b"into a read-only folder\n", mode=0o444)
        _add(tar, "data/hl_src", data=b"linked\n", mode=0o640, uid=7, gid=8)
        _add(tar, "data/hl_dst", tarfile.LNKTYPE, link="data/hl_src")
        _add(tar, "data/null", tarfile.CHRTYPE, mode=0o666, major=1, minor=3)
        _add(tar, "data/setgid_dir", tarfile.SYMTYPE, link="sticky-is-gone", mode=0o777)
        _add(tar, "dev/", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "dev/not-kept", data=b"enroot drops /dev content\n")
    return buf.getvalue()


def _append_layer(source_ref: str, layer: bytes, ref: str) -> None:
    """docker save SOURCE, add ``layer`` on top (config diff_ids + history), docker load as REF."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with tarfile.open(fileobj=io.BytesIO(docker("save", source_ref))) as tar:
            tar.extractall(root, filter="tar")
        manifest = json.loads((root / "manifest.json").read_text())
        config_name = manifest[0]["Config"]
        config = json.loads((root / config_name).read_text())
        diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
        layer_dir = root / hashlib.sha256(diff_id.encode()).hexdigest()
        layer_dir.mkdir()
        (layer_dir / "layer.tar").write_bytes(layer)
        config["rootfs"]["diff_ids"].append(diff_id)
        config.setdefault("history", []).append({"created_by": "export tests: crafted layer"})
        config_bytes = json.dumps(config).encode()
        new_config = hashlib.sha256(config_bytes).hexdigest() + ".json"
        (root / new_config).write_bytes(config_bytes)
        manifest[0]["Config"] = new_config
        manifest[0]["Layers"].append(f"{layer_dir.name}/layer.tar")
        manifest[0]["RepoTags"] = [ref]
        (root / "manifest.json").write_text(json.dumps(manifest))
        (root / "repositories").unlink(missing_ok=True)
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for entry in sorted(root.iterdir()):
                tar.add(entry, arcname=entry.name)
        docker("load", input=out.getvalue())


def load_image(layers: list[bytes], config: dict, ref: str) -> str:
    """``docker load`` an image made of these layer tars (bottom first) and image config, as REF;
    kept when REF exists already (name REF after its content)."""
    if image_exists(ref):
        return ref
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"export tests: layer {i}"} for i in range(len(layers))],
    }).encode()
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        names = []
        for diff_id, layer in zip(diff_ids, layers):
            folder = diff_id.removeprefix("sha256:")
            _add(tar, f"{folder}/layer.tar", data=layer)
            names.append(f"{folder}/layer.tar")
        _add(tar, config_name, data=image_config)
        _add(tar, "manifest.json", data=json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": names}]).encode())
    docker("load", input=out.getvalue())
    return ref


def tricky_image() -> str:
    base = base_image()
    dockerfile = DOCKERFILE.format(base=base, long=LONG_NAME)
    layer = _crafted_layer()
    ref = f"builder-test/export-tricky:{_key(base, dockerfile, layer, RECIPE_REVISION)}"
    if image_exists(ref):
        return ref
    built = ref + "-dockerfile"
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    with tempfile.TemporaryDirectory() as ctx:
        (Path(ctx) / "Dockerfile").write_text(dockerfile)
        docker("build", "--network", "host", "-q", "-t", built, ctx, env=env)
    _append_layer(built, layer, ref)
    docker("rmi", built)
    return ref


# --- entry tables ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    kind: str  # f d l c b p
    mode: int  # permission bits including setuid/setgid/sticky
    uid: int
    gid: int
    extra: str  # file: sha256 of content; link: target; device: "major,minor"
    caps: str = ""  # security.capability, hex (when asked for)

    def as_root(self) -> "Entry":
        return Entry(self.kind, self.mode, 0, 0, self.extra, self.caps)


_TAR_KIND = {tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l",
             tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p"}


def docker_export_entries(ref: str, caps: bool = False) -> tuple[dict[str, Entry], list[set[str]]]:
    """The filesystem of a container created from ``ref`` (``docker export``), minus what the
    engine adds and enroot leaves out (/.dockerenv, the content of /dev). Also its hard-link groups."""
    cid = docker("create", ref, "/bin/true").decode().strip()
    try:
        data = docker("export", cid)
    finally:
        docker("rm", "-f", cid)
    entries: dict[str, Entry] = {}
    links: dict[str, set[str]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            path = m.name.strip("/").removeprefix("./")
            if not path or path == ".dockerenv" or path.startswith("dev/"):
                continue
            if m.islnk():
                target = m.linkname.strip("/")
                entries[path] = entries[target]
                links.setdefault(target, {target}).add(path)
                continue
            if m.isreg():
                extra = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
            elif m.issym():
                extra = m.linkname
            elif m.ischr() or m.isblk():
                extra = f"{m.devmajor},{m.devminor}"
            else:
                extra = ""
            cap = m.pax_headers.get("SCHILY.xattr.security.capability", "") if caps else ""
            cap = cap.encode("utf-8", "surrogateescape").hex() if cap else ""
            entries[path] = Entry(_TAR_KIND[m.type], stat.S_IMODE(m.mode), m.uid, m.gid, extra, cap)
    return entries, sorted(links.values(), key=sorted)


_LS_KIND = {"-": "f", "d": "d", "l": "l", "c": "c", "b": "b", "p": "p", "s": "s"}


def parse_ls_mode(text: str) -> int:
    """'rwsr-x--T' -> 0o4754 | sticky ... (the permission part of an ls-style mode string)."""
    mode = 0
    for i, (ch, bit) in enumerate(zip(text, (0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 0o4, 0o2, 0o1))):
        if ch in "rwx":
            mode |= bit
        elif ch in "sStT":
            mode |= bit if ch in "st" else 0
            mode |= {2: 0o4000, 5: 0o2000, 8: 0o1000}[i]
    return mode


def squashfs_entries(sqsh: Path, scratch: Path, caps: bool = False) -> tuple[dict[str, Entry], list[set[str]]]:
    """The entries of a squashfs: metadata from ``unsquashfs -lln``, contents and hard links
    from extracting it (as root, so owners, modes and devices come out as stored)."""
    listing = subprocess.run(["unsquashfs", "-lln", str(sqsh)], capture_output=True, check=True).stdout.decode()
    meta: dict[str, tuple[str, int, int, int, str]] = {}
    for line in listing.splitlines():
        if not line.strip() or not line[0] in "-dlcbps":
            continue
        perms, owner, rest = line.split(None, 2)
        if perms[0] in "cb":  # '1,  3 DATE TIME PATH': the device numbers may hold spaces
            devices, _, rest = rest.partition(" ")
            while devices.endswith(","):
                more, _, rest = rest.lstrip().partition(" ")
                devices += more
            size = devices.replace(" ", "")
        else:
            size, rest = rest.split(None, 1)
        _date, _time, path = rest.split(None, 2)
        target = ""
        if perms[0] == "l":
            path, _, target = path.partition(" -> ")
        path = path.removeprefix("squashfs-root").lstrip("/")
        if not path:
            continue
        uid, gid = (int(x) for x in owner.split("/"))
        meta[path] = (_LS_KIND[perms[0]], parse_ls_mode(perms[1:10]), uid, gid, target or size)
    out = scratch / "unsquashed"
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(out), str(sqsh)], capture_output=True, check=True)
    entries: dict[str, Entry] = {}
    inodes: dict[int, set[str]] = {}
    for path, (kind, mode, uid, gid, extra) in meta.items():
        full = out / path
        if kind in "dp":
            extra = ""
        if kind == "f":
            extra = hashlib.sha256(full.read_bytes()).hexdigest()
            st = os.lstat(full)
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, set()).add(path)
        cap = ""
        if caps and kind == "f":
            try:
                cap = os.getxattr(full, "security.capability", follow_symlinks=False).hex()
            except OSError:
                cap = ""
        entries[path] = Entry(kind, mode, uid, gid, extra, cap)
    return entries, sorted((g for g in inodes.values() if len(g) > 1), key=sorted)


def enroot_view(entries: dict[str, Entry], keep_owners: bool = False) -> dict[str, Entry]:
    """docker export's entries as enroot's import leaves them: common::fixperms's modes
    (src/common.sh; builder.export.tarstream.enroot_mode) and, unless kept, root's owners."""
    from builder.export.tarstream import enroot_mode

    out = {}
    for path, e in entries.items():
        mode = e.mode if e.kind == "l" else enroot_mode(e.mode, e.kind == "d", path.count("/") + 1)
        out[path] = Entry(e.kind, mode, e.uid if keep_owners else 0, e.gid if keep_owners else 0, e.extra, e.caps)
    return out


def diff_tables(expected: dict[str, Entry], got: dict[str, Entry]) -> list[str]:
    """Readable differences, one line each (empty when equal)."""
    lines = []
    for path in sorted(set(expected) | set(got)):
        e, g = expected.get(path), got.get(path)
        if e != g:
            lines.append(f"/{path}: docker export {e} != squashfs {g}")
    return lines
