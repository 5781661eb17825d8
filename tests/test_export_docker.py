"""builder export against the real engine and real squashfs-tools (integration).

The tricky image has deleted files, replaced directories, opaque directories, symlinks, hard
links, set-id and sticky bits, a device node, a FIFO and non-root owners; its .sqsh must equal
the filesystem of a container made from it (``docker export``), entry by entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

import export_support as sup

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tricky() -> str:
    sup.need_export_tools()
    return sup.tricky_image()


@pytest.fixture(scope="module")
def reference(tricky):
    return sup.docker_export_entries(tricky)


# These tests name images by reference: keep the project's matrix (another area's) out of them.
NO_MATRIX = {"BUILDER_MATRIX": "/nonexistent/matrix.yaml"}


def run_export(*args: str, env: dict | None = None, check: bool = True, umask: int = -1) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "builder", "export", *args], capture_output=True, text=True,
                          env={**os.environ, **NO_MATRIX, **(env or {})}, umask=umask)
    if check and proc.returncode != 0:
        raise AssertionError(f"export failed ({proc.returncode}): {proc.stderr}")
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(reference, sqsh: Path, scratch: Path, keep_owners: bool) -> None:
    expected, expected_links = reference
    got, got_links = sup.squashfs_entries(sqsh, scratch)
    for name in sup.ENROOT_FILES:
        assert got.pop(name).kind == "f", name
    expected = dict(expected)
    for name in sup.ENGINE_INIT_FILES:
        assert expected.pop(name).kind == got.pop(name).kind == "f", name
    expected = sup.enroot_view(expected, keep_owners)
    assert sup.diff_tables(expected, got) == []
    assert got_links == expected_links
    # The cases the image is made of are really in it (a guard against a too-easy image).
    assert {"data/opq/new", "data/keep/fresh", "data/file2dir/zz_new", "data/null",
            "data/fifo", f"data/{sup.LONG_NAME}", "data/name with space"} <= set(got)
    assert not {"data/gone", "data/opq/o1", "data/keep/a", "data/sticky", "bin/true", "data/deleted",
                "data/file2dir/in"} & set(got)
    assert got["data/dir2file"].kind == "f" and got["data/setgid_dir"].kind == "l"


@pytest.mark.parametrize("source", ["layers", "container"])
def test_sqsh_equals_docker_export_with_root_owners(tricky, reference, tmp_path, source):
    dest = tmp_path / "tricky.sqsh"
    run_export(tricky, "--to", str(dest), "--source", source)
    compare(reference, dest, tmp_path, keep_owners=False)
    assert leftover_containers() == []


def leftover_containers() -> list[str]:
    """Export containers whose export has ended (others may be exporting on this shared engine)."""
    from builder.export import atomic

    labels = sup.docker("ps", "-a", "--filter", "label=builder.export.owner", "--format",
                        '{{.Label "builder.export.owner"}}').decode().split()
    return [l for l in labels if l.startswith(atomic.IDENTITY + ":") and not os.path.exists(f"/proc/{l.rpartition(':')[2]}")]


def test_sqsh_keeps_image_owners_on_request(tricky, reference, tmp_path):
    dest = tmp_path / "tricky.sqsh"
    run_export(tricky, "--to", str(dest), "--keep-owners", "--compression", "zstd")
    compare(reference, dest, tmp_path, keep_owners=True)
    assert any(e.uid == 1234 for e in sup.squashfs_entries(dest, tmp_path / "again")[0].values())


def test_enroot_runtime_files_run_the_entrypoint(tricky, tmp_path):
    dest = tmp_path / "tricky.sqsh"
    run_export(tricky, "--to", str(dest))
    root = tmp_path / "root"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(root), str(dest)], check=True, capture_output=True)
    environment = (root / "etc/environment").read_text().splitlines()
    assert "FOO=bar baz" in environment and "PATH=/usr/local/bin:/bin" in environment
    assert (root / "etc/fstab").read_text() == "${ENROOT_ROOTFS}/scratch /scratch none x-create=dir,bind,rw,nosuid,nodev\n"
    assert "# org.opencontainers.image.title tricky" in (root / "etc/rc").read_text()
    # What enroot start does, minus namespaces: environment from /etc/environment, then /etc/rc.
    env = {"FOO": "bar baz", "PATH": "/usr/local/bin:/bin"}
    chroot = shutil.which("chroot")
    sup.need(chroot is not None, "chroot is missing (coreutils)")
    default = subprocess.run([chroot, str(root), "/bin/sh", "/etc/rc"], env=env, capture_output=True, text=True)
    assert default.stdout == "it's quoted bar baz\n", default.stderr
    given = subprocess.run([chroot, str(root), "/bin/sh", "/etc/rc", "pwd; echo $FOO"], env=env,
                           capture_output=True, text=True)
    assert given.stdout == "/work/dir\nbar baz\n", given.stderr


def test_unchanged_image_is_skipped_and_force_or_new_settings_export_again(tricky, tmp_path):
    dest = tmp_path / "tricky.sqsh"
    first = json.loads(run_export(tricky, "--to", str(dest), "--json").stdout)
    meta = json.loads((tmp_path / "tricky.sqsh.json").read_text())
    image_id = sup.docker("image", "inspect", "-f", "{{.Id}}", tricky).decode().strip()
    assert first["skipped"] is False and meta["image"]["id"] == image_id
    assert meta["file"]["sha256"] == sha256(dest) == first["sha256"]
    assert meta["image"]["labels"]["com.example.pytorch"] == "2.3.0"
    mtime = dest.stat().st_mtime_ns

    again = json.loads(run_export(tricky, "--to", str(dest), "--json").stdout)
    assert again["skipped"] is True and dest.stat().st_mtime_ns == mtime

    forced = json.loads(run_export(tricky, "--to", str(dest), "--json", "--force").stdout)
    assert forced["skipped"] is False and dest.stat().st_mtime_ns != mtime
    other = json.loads(run_export(tricky, "--to", str(dest), "--json", "--compression", "gzip").stdout)
    assert other["skipped"] is False and other["squash"]["origin"] == "--compression"
    assert json.loads((tmp_path / "tricky.sqsh.json").read_text())["settings"]["squash_options"][:2] == ["-comp", "gzip"]


def test_tar_format_is_a_loadable_docker_save(tricky, tmp_path):
    dest = tmp_path / "tricky.tar"
    run_export(tricky, "--to", str(dest), umask=0o077)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644  # every node reads it, whatever the CI umask
    with tarfile.open(dest) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    image_id = sup.docker("image", "inspect", "-f", "{{.Id}}", tricky).decode().strip()
    assert manifest[0]["RepoTags"] == [tricky]
    assert manifest[0]["Config"].removesuffix(".json").removeprefix("blobs/sha256/") == image_id.removeprefix("sha256:")
    assert json.loads((tmp_path / "tricky.tar.json").read_text())["file"]["sha256"] == sha256(dest)
    assert "Loaded image" in sup.docker("load", "-i", str(dest)).decode()
    assert run_export(tricky, "--to", str(dest)).stdout.count("up to date") == 1

    # The same image under another tag: the tar must be made again, naming the new tag.
    other = tricky + "-retagged"
    sup.docker("tag", tricky, other)
    try:
        again = run_export(other, "--to", str(dest))
        assert "up to date" not in again.stdout
        with tarfile.open(dest) as tar:
            assert json.load(tar.extractfile("manifest.json"))[0]["RepoTags"] == [other]
    finally:
        sup.docker("rmi", other)


def test_sidecar_of_a_reference_records_the_matrix_entry_from_the_title_label(tricky, tmp_path):
    from matrix_samples import SOURCE, dump, matrix

    (tmp_path / "matrix.yaml").write_text(dump(matrix(dict(SOURCE, name="tricky"))))  # the image's title label
    with_matrix = {"BUILDER_MATRIX": str(tmp_path / "matrix.yaml")}
    bare = "builder-test-export-bare"  # a local image named by a bare word that is no matrix NAME
    sup.docker("tag", tricky, bare)
    try:
        dest = tmp_path / "tricky.tar"
        run_export(bare, "--to", str(dest), env=with_matrix)
        meta = json.loads((tmp_path / "tricky.tar.json").read_text())
        assert meta["matrix"]["name"] == "tricky" and meta["components"]["nccl"] == "2.21.5"
        assert meta["file"]["mtime_ns"] == dest.stat().st_mtime_ns
        mistyped = run_export("trickx", "--to", str(tmp_path / "x.tar"), env=with_matrix, check=False)
        assert mistyped.returncode == 2 and "did you mean 'tricky'" in mistyped.stderr, mistyped.stderr
    finally:
        sup.docker("rmi", bare)


def _wait_stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"export ended ({proc.returncode}) before its pause: {proc.stderr.read()}")
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.05)
    raise AssertionError("export never reached its pause point")


KILL_AT = {  # stage -> the export options that pass through it
    "stream": [], "layers": ["--source", "layers"], "squash": ["--source", "layers"],
    "container": ["--compression", "lzo"], "hash": [], "publish": [], "sidecar": [], "tar": [],
}


@pytest.mark.parametrize("stage", list(KILL_AT))
def test_killed_export_keeps_previous_file_and_leaves_no_partial_one(tricky, tmp_path, stage):
    fmt = "tar" if stage == "tar" else "sqsh"
    source = KILL_AT[stage]
    dest = tmp_path / f"image.{fmt}"
    work = tmp_path / "work"
    work.mkdir()
    run_export(sup.base_image(), "--to", str(dest))  # the previous good file
    before = sha256(dest)

    proc = subprocess.Popen([sys.executable, "-m", "builder", "export", tricky, "--to", str(dest),
                             "--work-dir", str(work), *source], env={**os.environ, **NO_MATRIX, "BUILDER_EXPORT_TEST_PAUSE_AT": stage},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_stopped(proc)
    proc.kill()
    proc.wait()

    if stage == "sidecar":  # killed after the rename: the new file is complete, its sidecar absent
        assert sha256(dest) != before
        assert not (tmp_path / f"image.{fmt}.json").exists()
    else:
        assert sha256(dest) == before
    if fmt == "sqsh":
        subprocess.run(["unsquashfs", "-s", str(dest)], check=True, capture_output=True)

    # The killed export's container (the engine is shared: only this one is looked at).
    from builder.export import atomic

    mine = f"label=builder.export.owner={atomic.IDENTITY}:{proc.pid}"
    if stage in ("stream", "container"):  # killed while the container existed: the next export removes it
        assert sup.docker("ps", "-aq", "--filter", mine).strip() != b""
    again = json.loads(run_export(tricky, "--to", str(dest), "--work-dir", str(work), "--json", *source).stdout)
    assert again["skipped"] is False  # never trusts a sidecar that does not describe the file
    if stage in ("stream", "container"):
        assert sup.docker("ps", "-aq", "--filter", mine).strip() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dest.name, f"{dest.name}.json", f".{dest.name}.lock", "work"])
    assert list(work.iterdir()) == []  # the killed run's unpacked image is gone too


def test_sigterm_removes_the_temporary_at_once(tricky, tmp_path):
    dest = tmp_path / "image.sqsh"
    proc = subprocess.Popen([sys.executable, "-m", "builder", "export", tricky, "--to", str(dest)],
                            env={**os.environ, **NO_MATRIX, "BUILDER_EXPORT_TEST_PAUSE_AT": "publish"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_stopped(proc)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the finished temporary
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=60) == 130
    assert [p.name for p in tmp_path.iterdir()] == [".image.sqsh.lock"]  # the lock file stays, empty


def test_disk_full_gives_one_line_and_keeps_previous_file(tricky, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs CAP_SYS_ADMIN) to fill a disk")
    try:
        (small / "image.sqsh").write_bytes(b"previous good file")
        for fmt in ("sqsh", "tar"):
            proc = run_export(tricky, "--to", str(small / f"image.{fmt}"), "--force", check=False)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1, proc.stderr
            assert lines[-1].startswith("error: no space left"), proc.stderr
            assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in proc.stderr
        assert sorted(p.name for p in small.iterdir()) == [".image.sqsh.lock", ".image.tar.lock", "image.sqsh"]
        assert (small / "image.sqsh").read_bytes() == b"previous good file"
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("source", ["container", "layers"])
def test_non_root_export_matches_docker_export_and_leaves_nothing_behind(tricky, reference, source):
    """The usual CI user: not root, in the docker group, umask 077. The streamed export needs no
    privilege at all (device nodes included); unpacking the layers cannot make device nodes
    (a warning says so), opens up unreadable files (the tricky image's 0000 /data/nomode) and
    leaves nothing in the work folder. Both give enroot's modes (0400 for /data/nomode)."""
    sup.need(shutil.which("setpriv") is not None, "setpriv is missing (util-linux)")
    docker_gid = os.stat("/var/run/docker.sock").st_gid
    repo = Path(__file__).resolve().parent.parent
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", f"--groups={docker_gid}", sys.executable,
                            "-c", "import builder.cli"], capture_output=True, cwd=repo)
    if probe.returncode:
        pytest.skip("user nobody cannot import the project from here (checkout in a private folder)")
    out = Path(tempfile.mkdtemp(prefix="builder-export-nonroot-", dir="/tmp"))
    try:
        out.chmod(0o777)
        work = out / "work"
        work.mkdir(mode=0o777)
        work.chmod(0o777)
        dest = out / "tricky.sqsh"
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", f"--groups={docker_gid}", sys.executable,
                               "-m", "builder", "export", tricky, "--to", str(dest), "--work-dir", str(work),
                               "--source", source],
                              capture_output=True, text=True, cwd=repo, umask=0o077,
                              env={**os.environ, **NO_MATRIX, "HOME": str(out)})
        assert proc.returncode == 0, proc.stderr
        assert ("device nodes need root" in proc.stderr) == (source == "layers")
        assert stat.S_IMODE(dest.stat().st_mode) == 0o644 and dest.stat().st_uid == 65534
        expected, expected_links = reference
        expected = sup.enroot_view({path: entry for path, entry in expected.items()
                                    if source == "container" or path != "data/null"})
        got, got_links = sup.squashfs_entries(dest, out / "scratch")
        for name in sup.ENROOT_FILES:
            assert got.pop(name).kind == "f", name
        for name in sup.ENGINE_INIT_FILES:
            assert expected.pop(name).kind == got.pop(name).kind == "f", name
        assert sup.diff_tables(expected, got) == []
        assert got["data/nomode"].mode == 0o400 and got_links == expected_links
        assert list(work.iterdir()) == []
    finally:
        shutil.rmtree(out)


def test_unknown_image_and_bad_reference(tmp_path):
    sup.need(sup.docker_ok(), "no Docker engine answers (run scripts/setup-host.sh)")
    missing = run_export("builder-test/no-such-image:1", "--to", str(tmp_path / "x.sqsh"), check=False)
    assert missing.returncode == 1 and "not in the Docker engine" in missing.stderr
    bad = run_export("Bad Ref!", "--to", str(tmp_path / "x.sqsh"), check=False)
    assert bad.returncode == 2 and "valid image reference" in bad.stderr
    assert list(tmp_path.iterdir()) == []


def test_enroot_method_runs_the_real_enroot(tricky, reference, tmp_path):
    """--method enroot: enroot import dockerd:// (built by scripts/setup-upstream.sh), published the same way."""
    sup.need(shutil.which("enroot") is not None, "enroot is not installed (scripts/setup-upstream.sh builds it)")
    scratch = {f"ENROOT_{k}_PATH": str(tmp_path / k.lower()) for k in ("RUNTIME", "CACHE", "DATA", "TEMP")}
    for folder in scratch.values():
        os.mkdir(folder)
    dest = tmp_path / "out" / "enroot.sqsh"
    dest.parent.mkdir()
    meta = json.loads(run_export(tricky, "--to", str(dest), "--method", "enroot", "--json", env=scratch).stdout)
    assert meta["skipped"] is False and sha256(dest) == meta["sha256"]
    assert json.loads((dest.parent / "enroot.sqsh.json").read_text())["settings"]["method"] == "enroot"
    compare(reference, dest, tmp_path / "x", keep_owners=False)
    assert "Compression zstd" in subprocess.run(["unsquashfs", "-s", str(dest)], capture_output=True, text=True).stdout
    again = json.loads(run_export(tricky, "--to", str(dest), "--method", "enroot", "--json", env=scratch).stdout)
    assert again["skipped"] is True
    no_enroot = run_export(tricky, "--to", str(tmp_path / "x.sqsh"), "--method", "enroot", check=False,
                           env={"PATH": "/usr/bin:/bin"})
    assert no_enroot.returncode == 2 and "enroot is not installed" in no_enroot.stderr
