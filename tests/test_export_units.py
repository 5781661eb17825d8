"""Fast tests of the export stages (no Docker): layer application, save-stream ordering,
enroot files, squash options, atomic publishing, sidecar and error lines."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from builder.errors import BuilderError, UsageError
from builder.export import ExportRequest, atomic, enroot_config, sidecar, source, squash, validate_reference
from builder.export.layers import RootfsBuilder

import export_support as sup


def layer(*entries) -> io.BytesIO:
    """entries: (name, kind, data_or_target, mode[, uid, gid])"""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode, *owner in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, 1_600_000_000
            info.uid, info.gid = owner or (0, 0)
            if kind == tarfile.REGTYPE:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload or ""
                tar.addfile(info)
    buf.seek(0)
    return buf


F, D, L, H = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def tree(root: Path) -> dict[str, str]:
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes().decode()
    return out


def build(tmp_path: Path, *layers) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir(parents=True)
    with RootfsBuilder(root) as b:
        for l in layers:
            b.apply(l)
        b.finish()
    return root


def base():
    return layer(("etc", D, None, 0o755), ("etc/a", F, b"a", 0o644), ("etc/sub", D, None, 0o755),
             ("etc/sub/x", F, b"x", 0o644), ("opt", D, None, 0o755), ("opt/f", F, b"f", 0o644),
             ("dev", D, None, 0o755), ("dev/null-ish", F, b"n", 0o644))


def test_whiteouts_replace_and_dev_content(tmp_path):
    upper = layer(("etc/.wh.a", F, b"", 0), ("etc/sub/.wh..wh..opq", F, b"", 0), ("etc/sub/y", F, b"y", 0o600),
                  ("opt", F, b"now a file", 0o644), ("new", D, None, 0o700), ("new/z", F, b"z", 0o644))
    root = build(tmp_path, base(), upper)
    assert tree(root) == {"etc": "dir", "etc/sub": "dir", "etc/sub/y": "y", "opt": "now a file",
                          "dev": "dir", "new": "dir", "new/z": "z"}
    assert stat.S_IMODE(os.stat(root / "new").st_mode) == 0o700


def test_opaque_marker_after_this_layers_entries_keeps_them(tmp_path):
    upper = layer(("etc/sub", D, None, 0o755), ("etc/sub/mine", F, b"m", 0o644),
                  ("etc/sub/.wh..wh..opq", F, b"", 0))
    root = build(tmp_path, base(), upper)
    assert sorted(os.listdir(root / "etc/sub")) == ["mine"]


def test_directory_over_file_and_symlink(tmp_path):
    lower = layer(("lib", L, "usr/lib", 0o777), ("f", F, b"f", 0o644))
    upper = layer(("lib", D, None, 0o755), ("lib/x", F, b"x", 0o644), ("f", D, None, 0o755))
    root = build(tmp_path, lower, upper)
    assert tree(root) == {"lib": "dir", "lib/x": "x", "f": "dir"}


def test_paths_never_escape_the_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = layer(("escape", L, str(outside), 0o777))
    through = layer(("escape/pwned", F, b"!", 0o644), ("escape/.wh.victim", F, b"", 0))
    (outside / "victim").write_text("safe")
    root = build(tmp_path, evil, through)
    assert sorted(os.listdir(outside)) == ["victim"]  # nothing written or removed through the symlink
    assert tree(root) == {"escape": "dir", "escape/pwned": "!"}
    with pytest.raises(BuilderError, match="unsafe path"):
        build(tmp_path / "b", layer(("../up", F, b"", 0o644)))


def test_hard_links_special_modes_and_read_only_dirs(tmp_path):
    l1 = layer(("ro", D, None, 0o555), ("bin", D, None, 0o755), ("bin/tool", F, b"t", 0o4755),
               ("bin/alias", H, "bin/tool", 0o4755), ("tmp", D, None, 0o1777))
    l2 = layer(("ro", D, None, 0o555), ("ro/added", F, b"later", 0o444))
    root = build(tmp_path, l1, l2)
    assert os.stat(root / "bin/tool").st_ino == os.stat(root / "bin/alias").st_ino
    assert stat.S_IMODE(os.stat(root / "bin/tool").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(root / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o555 and (root / "ro/added").read_text() == "later"
    with pytest.raises(BuilderError, match="hard-links"):
        build(tmp_path / "c", layer(("x", H, "missing", 0o644)))


def test_hard_link_to_a_symlink_never_changes_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("host file")
    victim.chmod(0o600)
    root = build(tmp_path, layer(("s", L, str(victim), 0o777), ("h", H, "s", 0o6777)))
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.read_text() == "host file"
    assert os.readlink(root / "h") == str(victim)  # a second name of the symlink, as the engine makes it
    assert os.lstat(root / "h").st_ino == os.lstat(root / "s").st_ino


@pytest.mark.parametrize("whiteout", [".wh.", ".wh..", "a/.wh.", "a/.wh..", "a/.wh./"])
def test_whiteouts_naming_nothing_or_a_parent_are_refused(tmp_path, whiteout):
    outside = tmp_path / "outside"
    outside.mkdir()
    keep = tmp_path / "keep-me"
    keep.write_text("!")
    lower = layer(("a", D, None, 0o755), ("a/x", F, b"x", 0o644))
    hostile = layer((whiteout, F, b"", 0), ("a", L, str(outside), 0o777), ("a/pwned", F, b"!", 0o644))
    with pytest.raises(BuilderError, match="invalid whiteout"):
        build(tmp_path, lower, hostile)
    assert list(outside.iterdir()) == [] and keep.read_text() == "!"
    assert (tmp_path / "rootfs/a/x").read_text() == "x"


def test_symlinked_parent_planted_in_the_same_layer_stays_inside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    lower = layer(("a", D, None, 0o755), ("a/x", F, b"x", 0o644))
    upper = layer(("a", L, str(outside), 0o777), ("a/pwned", F, b"!", 0o644), ("a/sub/deep", F, b"d", 0o644),
                  ("a/.wh.x", F, b"", 0), ("a/sub/.wh..wh..opq", F, b"", 0))
    root = build(tmp_path, lower, upper)
    assert list(outside.iterdir()) == []
    assert tree(root) == {"a": "dir", "a/pwned": "!", "a/sub": "dir", "a/sub/deep": "d"}


def test_opaque_marker_keeps_this_layers_entries_without_their_folder_header(tmp_path):
    lower = layer(("d", D, None, 0o755), ("d/sub", D, None, 0o755), ("d/sub/old", F, b"old", 0o644),
                  ("d/gone", F, b"g", 0o644))
    upper = layer(("d/sub/new", F, b"new", 0o644), ("d/.wh..wh..opq", F, b"", 0), ("x/y/z", F, b"z", 0o644),
                  ("x/.wh.y", F, b"", 0))
    root = build(tmp_path, lower, upper)
    assert tree(root) == {"d": "dir", "d/sub": "dir", "d/sub/new": "new", "x": "dir", "x/y": "dir", "x/y/z": "z"}


def test_opaque_root_marker_is_applied_not_mistaken_for_aufs_metadata(tmp_path):
    root = build(tmp_path, layer(("old", F, b"o", 0o644)), layer(("new", F, b"n", 0o644), (".wh..wh..opq", F, b"", 0)))
    assert tree(root) == {"new": "n"}


def test_aufs_metadata_is_dropped_and_its_hard_links_resolved(tmp_path):
    lower = layer(("etc", D, None, 0o755), ("etc/a", F, b"a", 0o644))
    upper = layer((".wh..wh.plnk", D, None, 0o700), (".wh..wh.plnk/1234.5678", F, b"linked", 0o640),
                  (".wh..wh.aufs", F, b"", 0o600), (".wh..wh.orph", D, None, 0o700),
                  ("etc/b", H, ".wh..wh.plnk/1234.5678", 0o640))
    root = build(tmp_path, lower, upper)
    assert tree(root) == {"etc": "dir", "etc/a": "a", "etc/b": "linked"}


def test_workdir_under_an_absolute_image_symlink_resolves_inside_the_root(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    with RootfsBuilder(root) as b:
        b.apply(layer(("data", D, None, 0o755), ("opt", D, None, 0o755), ("opt/link", L, "/data", 0o777),
                      ("up", L, "../../..", 0o777), ("file", F, b"f", 0o644)))
        b.ensure_dir("/opt/link/sub")
        b.ensure_dir("/up/made")  # '..' stops at the image's root
        b.ensure_dir("/file/below")  # a file in the way: left alone (enroot's /etc/rc fails the cd, as docker would)
        b.finish()
    assert os.readlink(root / "opt/link") == "/data" and (root / "data/sub").is_dir()
    assert (root / "made").is_dir() and (root / "file").read_text() == "f"
    assert stat.S_IMODE((root / "data/sub").stat().st_mode) == 0o755


def test_zstd_layer_is_one_clear_error(tmp_path):
    with pytest.raises(BuilderError, match="zstd-compressed.*--source container"):
        build(tmp_path, io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 100))


def test_not_root_unreadable_entries_are_opened_up_and_their_modes_kept(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    with RootfsBuilder(root) as b:
        b._is_root = False  # the decision a non-root exporter makes; the real thing runs in test_export_docker
        b.apply(layer(("etc", D, None, 0o755), ("etc/shadow", F, b"s", 0o000), ("priv", D, None, 0o000),
                      ("priv/x", F, b"x", 0o200), ("ok", F, b"o", 0o644)))
        b.finish()
    assert sorted(b.mode_fixes) == [("etc/shadow", 0o000), ("priv", 0o000), ("priv/x", 0o200)]
    assert stat.S_IMODE((root / "etc/shadow").stat().st_mode) == 0o400
    assert stat.S_IMODE((root / "priv").stat().st_mode) == 0o500


def test_work_tree_with_read_only_and_unlistable_folders_is_removed(tmp_path):
    from builder.export import tree as tree_mod

    work = tmp_path / "work"
    (work / "usr/bin").mkdir(parents=True)
    (work / "usr/bin/tool").write_text("t")
    (work / "priv").mkdir()
    (work / "priv/x").write_text("x")
    (work / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/keep").write_text("k")
    (work / "usr/bin").chmod(0o555)
    (work / "priv").chmod(0o000)
    tree_mod.remove_tree(work)
    assert not work.exists() and (tmp_path / "outside/keep").read_text() == "k"
    tree_mod.remove_tree(work)  # already gone: fine


def test_enroot_files_written_safely(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    with RootfsBuilder(root) as b:
        b.apply(layer(("etc", L, str(tmp_path), 0o777)))  # a hostile /etc pointing out of the root
        b.write_file("etc/rc", b"exec x\n")
    assert (root / "etc").is_dir() and not (root / "etc").is_symlink()
    assert not (tmp_path / "rc").exists()


def _save_stream(layers: list[bytes], shuffle: bool, classic: bool = True) -> tuple[bytes, list[str]]:
    """A docker-save-like archive: classic per-layer folders (json with parent) or OCI blobs."""
    buf = io.BytesIO()
    names, members = [], []
    parent = None
    for i, data in enumerate(layers):
        if classic:
            layer_id = f"{i:02d}".ljust(64, "a")
            meta = {"id": layer_id, **({"parent": parent} if parent else {})}
            members.append([(f"{layer_id}/VERSION", b"1.0"), (f"{layer_id}/json", json.dumps(meta).encode()),
                            (f"{layer_id}/layer.tar", data)])
            names.append(f"{layer_id}/layer.tar")
            parent = layer_id
        else:
            name = f"blobs/sha256/{i:02d}".ljust(77, "b")
            members.append([(name, data)])
            names.append(name)
    if shuffle:
        random.Random(4).shuffle(members)
    members.append([("manifest.json", json.dumps([{"Config": "c.json", "Layers": names}]).encode())])
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for group in members:
            for name, data in group:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), names


@pytest.mark.parametrize("classic", [True, False])
def test_save_stream_applies_layers_in_manifest_order(tmp_path, classic):
    layers = [layer(("f", F, f"v{i}".encode(), 0o644)).getvalue() for i in range(6)]
    data, names = _save_stream(layers, shuffle=True, classic=classic)
    seen = []

    def apply(fileobj, index, name):
        with tarfile.open(fileobj=fileobj, mode="r|") as t:
            for m in t:
                seen.append((index, name, t.extractfile(m).read()))

    chunks = (data[i:i + 1000] for i in range(0, len(data), 1000))
    result = source.apply_saved_image(source.ChunkReader(chunks), str(tmp_path / "spool"), apply)
    assert [s[1] for s in seen] == names and [s[2] for s in seen] == [f"v{i}".encode() for i in range(6)]
    assert [s[0] for s in seen] == list(range(6))
    assert result.streamed + result.spooled == 6 and (result.streamed > 0) == classic
    assert list((tmp_path / "spool").iterdir()) == []


def test_enroot_config_matches_enroot_rules():
    files = enroot_config.render({"Env": ["A=1", "B=two words"], "Volumes": {"/v": {}, "/a": {}},
                                  "WorkingDir": "/w d", "Entrypoint": ["/e"], "Cmd": ["it's"],
                                  "Labels": {"k": "v"}})
    assert files["etc/environment"] == "A=1\nB=two words\n"
    assert files["etc/fstab"] == ("${ENROOT_ROOTFS}/a /a none x-create=dir,bind,rw,nosuid,nodev\n"
                                  "${ENROOT_ROOTFS}/v /v none x-create=dir,bind,rw,nosuid,nodev\n")
    rc = files["etc/rc"]
    assert rc.startswith("# k v\n\n") and 'cd "/w d" && unset OLDPWD' in rc
    assert "exec '/e' \"$@\"" in rc and "exec '/e' 'it'\\''s'" in rc
    bare = enroot_config.render({})["etc/rc"]
    assert 'exec  "$@"' in bare and "exec  '/bin/sh'\n" in bare and 'cd "/" &&' in bare


def test_rc_quotes_words_as_bash_at_q_does():
    """enroot writes ENTRYPOINT and CMD with bash's ${a[@]@Q}: the same quoting, checked against bash."""
    sup.need(shutil.which("bash") is not None, "bash is missing")
    words = ["plain", "it's", "a b", "$HOME", "tab\there", "nl\nx", "esc\x1bz", "back\\slash", "", "ünï",
             'q"x', "bell\a\x7f\x01"]
    script = 'a=("$@"); printf "%s\\0" "${a[@]@Q}"'
    out = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == [enroot_config.bash_quote(w) for w in words]


def test_workdir_the_shell_would_expand_is_quoted_safely():
    rc = enroot_config.render({"WorkingDir": '/a"b$(x)'})["etc/rc"]
    assert "cd '/a\"b$(x)' && unset OLDPWD" in rc


def _squash(compression, extra, env=None, conf=None, processors=None):
    return squash.choose(compression, extra, processors, env={} if env is None else env, conf=conf)


def test_squash_options(tmp_path):
    no_conf = str(tmp_path / "absent.conf")

    def options(compression, extra, env=None):
        return _squash(compression, extra, env, no_conf).options

    assert options(None, None) == ("-comp", "zstd", "-Xcompression-level", "1")
    assert _squash(None, None, conf=no_conf).origin == "builder's default (zstd level 1)"
    assert options(None, None, {"ENROOT_SQUASH_OPTIONS": "-comp lz4 -b 1M"}) == ("-comp", "lz4", "-b", "1M")
    assert options("zstd", None) == ("-comp", "zstd", "-Xcompression-level", "3")
    assert options("lzo", None) == ("-comp", "lzo", "-noD")  # what enroot means by lzo
    assert options("gzip:9", None) == ("-comp", "gzip", "-Xcompression-level", "9")
    assert options("none", None) == ("-noI", "-noD", "-noF", "-noX")
    for bad in ("zip", "zstd:99", "lzo:3"):
        with pytest.raises(UsageError):
            options(bad, None)
    with pytest.raises(UsageError, match="not both"):
        options("zstd", "-comp xz")
    with pytest.raises(UsageError, match="characters"):
        options(None, "-comp xz;rm")


def test_processors_come_from_the_option_then_the_squash_options_then_enroot_then_the_cpus(tmp_path):
    no_conf = str(tmp_path / "absent.conf")
    env = {"ENROOT_MAX_PROCESSORS": "3", "ENROOT_SQUASH_OPTIONS": "-comp lz4 -processors 5"}
    assert _squash(None, None, env, no_conf, 2).processors == 2
    assert _squash(None, None, env, no_conf).processors == 5
    assert _squash("zstd", None, env, no_conf).processors == 3
    assert _squash("zstd", None, {}, no_conf).processors == len(os.sched_getaffinity(0))
    assert squash.default_processors({"ENROOT_MAX_PROCESSORS": "3"}, conf=no_conf) == 3
    assert squash.default_processors({"ENROOT_MAX_PROCESSORS": "0"}, conf=no_conf) == len(os.sched_getaffinity(0))


def test_options_builder_sets_itself_are_overridden_not_refused(tmp_path):
    choice = _squash(None, None, {"ENROOT_SQUASH_OPTIONS": "-comp zstd -no-progress -processors 6 -noappend "
                                                           "-all-root -b 1M"}, str(tmp_path / "x"))
    assert choice.options == ("-comp", "zstd", "-b", "1M") and choice.processors == 6
    with pytest.raises(UsageError, match="positive number"):
        _squash(None, "-processors many", conf=str(tmp_path / "x"))


def test_tar2sqfs_gets_the_same_settings_or_none():
    from builder.export.sqfs_stream import tar2sqfs_args

    assert tar2sqfs_args(("-comp", "zstd", "-Xcompression-level", "3")) == [
        "--compressor", "zstd", "--comp-extra", "level=3"]
    assert tar2sqfs_args(("-comp", "xz", "-b", "1M", "-exit-on-error", "-no-xattrs")) == [
        "--block-size", "1048576", "--no-xattr", "--compressor", "xz"]
    assert tar2sqfs_args(("-b", "262144",)) == ["--block-size", "262144", "--compressor", "gzip"]  # mksquashfs's default
    assert tar2sqfs_args(("-comp", "lzo", "-noD")) is None  # enroot's default: only mksquashfs has -noD
    assert tar2sqfs_args(("-comp", "lz4")) is None  # unsquashfs cannot read tar2sqfs's lz4 (next test)
    assert tar2sqfs_args(("-comp", "zstd", "-e", "x")) is None


def test_tar2sqfs_lz4_is_still_unreadable_by_unsquashfs(tmp_path):
    """Why lz4 goes to mksquashfs: when this starts passing, tar2sqfs_args may take lz4 again."""
    for tool in ("tar2sqfs", "unsquashfs"):
        sup.need(shutil.which(tool) is not None, f"{tool} is missing (scripts/setup-host.sh)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    for comp, readable in (("lz4", False), ("zstd", True)):
        out = tmp_path / f"{comp}.sqsh"
        subprocess.run(["tar2sqfs", "-q", "-c", comp, str(out)], input=buf.getvalue(), check=True)
        listing = subprocess.run(["unsquashfs", "-lln", str(out)], capture_output=True)
        assert (listing.returncode == 0) == readable, (comp, listing.stderr)


def test_pseudo_lines_quote_names_and_refuse_newlines():
    assert squash.pseudo_line("etc/shadow", 0) == '"etc/shadow" m 0 0 0\n'
    assert squash.pseudo_line('a b/q"x\\y', 0o4750) == '"a b/q\\"x\\\\y" m 4750 0 0\n'
    with pytest.raises(BuilderError, match="export as root"):
        squash.pseudo_line("bad\nname", 0)


def test_mksquashfs_failure_is_one_line(tmp_path):
    sup.need(shutil.which("mksquashfs") is not None, "mksquashfs is missing (apt-get install squashfs-tools)")
    (tmp_path / "root").mkdir()
    (tmp_path / "root/f").write_text("x")
    squash.mksquashfs(str(tmp_path / "root"), str(tmp_path / "ok.sqsh"), ("-comp", "zstd"), processors=1,
                      all_root=True, log_path=str(tmp_path / "log"))
    assert (tmp_path / "ok.sqsh").stat().st_size > 0
    with pytest.raises(BuilderError, match=r"^mksquashfs failed \(exit \d+\): .*") as err:
        squash.mksquashfs(str(tmp_path / "root"), str(tmp_path / "bad.sqsh"), ("-comp", "nope"), processors=1,
                          all_root=True, log_path=str(tmp_path / "log"))
    assert "\n" not in str(err.value)


def test_unreadable_file_fails_mksquashfs_instead_of_an_empty_file_and_modes_restore():
    """As a non-root user: a file mksquashfs cannot read is one error line (never an empty file in
    the image); the same tree opened up with its real modes in mode_fixes squashes correctly."""
    sup.need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and setpriv to act as nobody")
    sup.need(shutil.which("mksquashfs") is not None, "mksquashfs is missing (apt-get install squashfs-tools)")
    work = Path(tempfile.mkdtemp(prefix="builder-export-nonroot-", dir="/tmp"))
    try:
        work.chmod(0o777)
        script = """
import os, sys
from pathlib import Path
from builder.errors import BuilderError
from builder.export import squash
work = Path(sys.argv[1])
root = work / "root"
(root / "etc").mkdir(parents=True)
(root / "etc/shadow").write_text("root:secret")
os.chmod(root / "etc/shadow", 0)
try:
    squash.mksquashfs(str(root), str(work / "bad.sqsh"), squash.ENROOT_DEFAULT, processors=1, all_root=True,
                      log_path=str(work / "log"))
    print("no error")
except BuilderError as exc:
    print("error:", exc)
os.chmod(root / "etc/shadow", 0o400)
squash.mksquashfs(str(root), str(work / "ok.sqsh"), squash.ENROOT_DEFAULT, processors=1, all_root=True,
                  log_path=str(work / "log"), mode_fixes=[("etc/shadow", 0)])
"""
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               script, str(work)], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("error: mksquashfs could not read the unpacked image (Failed to read file /etc/shadow")
        assert proc.stdout.count("\n") == 1
        listing = subprocess.run(["unsquashfs", "-lln", str(work / "ok.sqsh")], capture_output=True, text=True).stdout
        assert any(line.startswith("---------- 0/0") and line.endswith("/etc/shadow") for line in listing.splitlines())
        out = work / "x"
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(out), str(work / "ok.sqsh")], check=True, capture_output=True)
        assert (out / "etc/shadow").read_text() == "root:secret"
    finally:
        shutil.rmtree(work)


def test_stale_temporaries_are_removed_but_live_and_recent_foreign_ones_kept(tmp_path):
    dest = tmp_path / "img.sqsh"
    dead = subprocess.Popen(["true"])
    dead.wait()
    me = atomic.IDENTITY
    other_ns = f"{atomic._HOST}.{atomic._BOOT}-1"  # a container on this host with its own PID namespace
    other_boot = f"{atomic._HOST}.{'f' * 8}-{atomic._PIDNS}"  # another node that happens to share the host name
    names = {
        "dead": f".img.sqsh.{me}.{dead.pid}.tmp",
        "live": f".img.sqsh.{me}.{os.getppid()}.tmp",
        "other_ns_dead_pid": f".img.sqsh.{other_ns}.{dead.pid}.tmp",
        "other_boot": f".img.sqsh.{other_boot}.{dead.pid}.tmp",
        "foreign_new": ".img.sqsh.otherhost.12.tmp",  # older builder versions: host.pid
        "foreign_old": ".img.sqsh.otherhost.13.tmp",
        "sidecar_dead": f".img.sqsh.json.{me}.{dead.pid}.tmp",
        "unrelated": ".other.sqsh.otherhost.1.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_text("partial")
    old = time.time() - atomic.STALE_FOREIGN_SECONDS - 10
    os.utime(tmp_path / names["foreign_old"], (old, old))
    # Without the destination lock: only this PID namespace's dead processes are known to be gone.
    removed = atomic.clean_stale(dest, sidecar.sidecar_path(dest))
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["foreign_old"], names["sidecar_dead"]])
    # Holding the lock: whatever this kernel made is stale (a live writer would hold the lock).
    removed = atomic.clean_stale(dest, sidecar.sidecar_path(dest), locked=True)
    assert sorted(p.name for p in removed) == sorted([names["live"], names["other_ns_dead_pid"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["other_boot"], names["foreign_new"], names["unrelated"]])


def test_destination_lock_serialises_exports(tmp_path):
    dest = tmp_path / "img.sqsh"
    first = atomic.DestinationLock(dest)
    assert first.acquire() and first.held
    script = ("import sys; from pathlib import Path; from builder.export import atomic; "
              "l = atomic.DestinationLock(Path(sys.argv[1])); print(l.acquire(print), flush=True)")
    waiter = subprocess.Popen([sys.executable, "-c", script, str(dest)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    assert waiter.stdout.readline().startswith("waiting for another export to")  # blocked on our lock
    first.release()
    assert waiter.stdout.readline().strip() == "True" and waiter.wait(timeout=30) == 0
    waiter.stdout.close()
    assert atomic.lock_path(dest).exists()


def _no_flock(monkeypatch):
    """A filesystem without flock (Lustre mounted noflock, NFS without lockd): flock says ENOLCK."""
    import fcntl

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


def _workdirs(parent: Path) -> dict[str, Path]:
    from builder.export.native import WORKDIR_PREFIX

    dead = subprocess.Popen(["true"])
    dead.wait()
    other_boot = f"{atomic._HOST}.{'f' * 8}-{atomic._PIDNS}"
    folders = {
        "live": parent / f"{WORKDIR_PREFIX}{atomic.IDENTITY}.{os.getppid()}-abc",  # a running export's
        "dead": parent / f"{WORKDIR_PREFIX}{atomic.IDENTITY}.{dead.pid}-def",
        "other_boot": parent / f"{WORKDIR_PREFIX}{other_boot}.{dead.pid}-ghi",  # another node's, recent
    }
    for folder in folders.values():
        (folder / "rootfs/usr").mkdir(parents=True)
    return folders


def test_stale_work_folders_are_removed_and_a_locked_one_kept(tmp_path):
    from builder.export.native import clean_stale_workdirs as _clean_stale_workdirs

    folders = _workdirs(tmp_path)
    fd, locked = atomic.lock_exclusive(folders["live"], directory=True)  # as its export holds it
    try:
        assert locked
        assert atomic.lock_exclusive(folders["live"], directory=True) == (None, False)
        _clean_stale_workdirs(tmp_path)
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folders["live"].name, folders["other_boot"].name])
    _clean_stale_workdirs(tmp_path)  # unlocked and made under this kernel: its export is gone
    assert [p.name for p in tmp_path.iterdir()] == [folders["other_boot"].name]


def test_without_flock_a_live_exports_work_folder_is_kept(tmp_path, monkeypatch):
    from builder.export.native import clean_stale_workdirs as _clean_stale_workdirs

    folders = _workdirs(tmp_path)
    _no_flock(monkeypatch)
    fd, locked = atomic.lock_exclusive(folders["live"], directory=True)
    assert fd is not None and not locked
    os.close(fd)
    _clean_stale_workdirs(tmp_path)  # the lock proves nothing: the folder's pid decides
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folders["live"].name, folders["other_boot"].name])
    lock = atomic.DestinationLock(tmp_path / "img.sqsh")
    assert not lock.acquire() and not lock.held


def test_a_work_folder_that_cannot_be_set_up_is_not_left_behind(tmp_path, monkeypatch):
    from builder.export import native

    def broken(path, **_kw):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic, "lock_exclusive", broken)
    with pytest.raises(BuilderError, match=r"Input/output error while creating a work folder in"):
        native.make_workdir(tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    work, fd = native.make_workdir(tmp_path)
    os.close(fd)
    assert [p.name for p in tmp_path.iterdir()] == [work.name] and work.name.startswith(native.WORKDIR_PREFIX)


def test_sticky_folder_with_another_users_file_fails_before_any_work(tmp_path):
    sup.need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and setpriv to act as nobody")
    folder = Path(tempfile.mkdtemp(prefix="builder-export-sticky-", dir="/tmp"))
    try:
        folder.chmod(0o1777)
        (folder / "x.sqsh.json").write_text("{}")  # root's, in a sticky folder nobody may write to
        script = ("import sys; from pathlib import Path; from builder.export import atomic, sidecar; "
                  "d = Path(sys.argv[1]); atomic.check_writable_folder(d, sidecar.sidecar_path(d))")
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               script, str(folder / "x.sqsh")], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
        assert proc.returncode == 1 and "cannot replace" in proc.stderr and "sticky bit" in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(folder)


def test_os_errors_become_one_clear_line(tmp_path):
    for code, start in ((errno.ENOSPC, "no space left"), (errno.EDQUOT, "no space left"),
                        (errno.EACCES, "permission denied"), (errno.EROFS, "read-only filesystem")):
        message = str(atomic.os_error_line(OSError(code, os.strerror(code)), "/fsx/x.sqsh", "writing"))
        assert message.startswith(start) and "/fsx/x.sqsh" in message and "\n" not in message
    full = OSError(errno.ENOSPC, "No space left on device")
    assert "--work-dir" not in str(atomic.os_error_line(full, "/fsx/x.sqsh", "writing"))
    assert "--work-dir" in str(atomic.os_error_line(full, "/tmp/w", "unpacking the image into", work_dir=True))
    with pytest.raises(BuilderError, match="does not exist"):
        atomic.check_writable_folder(tmp_path / "missing" / "x.sqsh")
    with pytest.raises(BuilderError, match="is a folder"):
        atomic.check_writable_folder(tmp_path)


def test_permission_denied_before_any_work(request):
    sup.need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and setpriv to act as nobody")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    if subprocess.run([*as_nobody, "-c", "import builder.cli"], capture_output=True, cwd="/").returncode:
        pytest.skip("user nobody cannot import the project from here (checkout in a private folder)")
    open_dir = Path(tempfile.mkdtemp(prefix="builder-export-test-", dir="/tmp"))
    os.chmod(open_dir, 0o755)  # nobody may enter, not write
    locked = open_dir / "locked"
    locked.mkdir(mode=0o755)
    request.addfinalizer(lambda: shutil.rmtree(open_dir))
    proc = subprocess.run([*as_nobody, "-m", "builder", "--matrix", "/nonexistent/matrix.yaml", "export", "any/image:1",
                           "--to", str(locked / "x.sqsh")],
                          capture_output=True, text=True, cwd="/")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: permission denied") and proc.stderr.count("\n") == 1, proc.stderr


def test_sidecar_up_to_date_rules(tmp_path):
    dest = tmp_path / "x.sqsh"
    dest.write_bytes(b"squash")
    settings = ExportRequest(ref="r:1", dest=dest).settings()
    meta = {"image": {"id": "sha256:1"}, "settings": settings, "file": {"sha256": "s", **sidecar.file_facts(dest)}}
    sidecar.sidecar_path(dest).write_bytes(sidecar.render(meta))
    assert sidecar.up_to_date(dest, "sha256:1", settings)
    assert not sidecar.up_to_date(dest, "sha256:2", settings)
    assert not sidecar.up_to_date(dest, "sha256:1", ExportRequest(ref="r:1", dest=dest, keep_owners=True).settings())
    dest.write_bytes(b"squash, but replaced by hand")
    assert not sidecar.up_to_date(dest, "sha256:1", settings)


def test_references():
    for good in ("pytorch-efa/nvidia:ngc24.09-py3", "localhost:5000/a/b:1", "123.dkr.ecr.us-east-1.amazonaws.com/x:y",
                 "sha256:" + "a" * 64, "img@sha256:" + "b" * 64, "busybox"):
        assert validate_reference(good) == good
    for bad in ("Bad Ref", "x:y;rm -rf", "a//b", "-x", "x:"):
        with pytest.raises(UsageError):
            validate_reference(bad)


def _matrix(tmp_path):
    from matrix_samples import SOURCE, dump, matrix

    from builder.matrix import load_matrix

    path = tmp_path / "matrix.yaml"
    path.write_text(dump(matrix(dict(SOURCE, name="pt-efa", repository="repo/pt", tags=["a", "b"]))))
    return load_matrix(path)


def test_matrix_name_resolves_to_its_primary_ref(tmp_path):
    from builder.commands.export import _resolve

    matrix = _matrix(tmp_path)
    ref, entry = _resolve(matrix, "pt-efa")
    assert ref == "repo/pt:a" and entry["name"] == "pt-efa" and entry["components"]["cuda"] == "12.1.1"
    assert _resolve(matrix, "some/other:image") == ("some/other:image", None)
    assert _resolve(matrix, "busybox") == ("busybox", None)  # a local image, or a mistyped NAME: the engine says
    assert _resolve(None, "pt-efa") == ("pt-efa", None)
    with pytest.raises(UsageError):
        _resolve(matrix, "Not An Image")


def test_registry_ref_of_a_matrix_image_records_its_entry(tmp_path):
    from builder.commands.export import _resolve

    matrix = _matrix(tmp_path)
    for ref in ("123456789012.dkr.ecr.us-west-2.amazonaws.com/repo/pt:b", "localhost:5000/repo/pt:a", "repo/pt:b"):
        got, entry = _resolve(matrix, ref)
        assert got == ref and entry["name"] == "pt-efa"
    assert _resolve(matrix, "registry.example/repo/pt:other")[1] is None


def test_entry_of_a_reference_from_its_title_label(tmp_path):
    from builder.commands.export import _entry_lookup

    lookup = _entry_lookup(_matrix(tmp_path))
    assert lookup({"org.opencontainers.image.title": "pt-efa"})["refs"] == ["repo/pt:a", "repo/pt:b"]
    assert lookup({"org.opencontainers.image.title": "other"}) is None and lookup({}) is None
    assert _entry_lookup(None) is None


def _export_cli(*args, env=None):
    from click.testing import CliRunner

    from builder.cli import cli

    # No engine answers here: what is decided before the engine is asked shows in the exit code.
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "ENROOT_SQUASH_OPTIONS": "",
           "ENROOT_MAX_PROCESSORS": "", **(env or {})}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_an_invalid_matrix_fails_an_export_by_reference_too(tmp_path):
    (tmp_path / "matrix.yaml").write_text("schema: 1\nimages: [{name: x}]\n")
    result = _export_cli("--matrix", str(tmp_path / "matrix.yaml"), "export", "team/pt:1",
                         "--to", str(tmp_path / "x.sqsh"))
    assert result.exit_code == 2 and "matrix.yaml" in result.output, result.output
    no_matrix = _export_cli("--matrix", str(tmp_path / "absent.yaml"), "export", "team/pt:1",
                            "--to", str(tmp_path / "x.sqsh"))
    assert no_matrix.exit_code == 1 and "cannot reach the Docker engine" in no_matrix.output


def test_enroot_conf_is_read_for_an_sqsh_only(tmp_path, monkeypatch):
    conf = tmp_path / "enroot.conf"
    conf.write_text("ENROOT_RUNTIME_PATH /run/enroot/user-$(id -u)\nENROOT_SQUASH_OPTIONS -comp $(cat /c)\n")
    monkeypatch.setattr("builder.export.enroot_conf.conf_file", lambda: str(conf))
    common = ("--matrix", str(tmp_path / "absent.yaml"), "export", "team/pt:1")
    tar = _export_cli(*common, "--to", str(tmp_path / "x.tar"))
    assert tar.exit_code == 1 and "cannot reach the Docker engine" in tar.output, tar.output
    sqsh = _export_cli(*common, "--to", str(tmp_path / "x.sqsh"))
    assert sqsh.exit_code == 2 and "enroot.conf:2: ENROOT_SQUASH_OPTIONS needs the shell" in sqsh.output
    conf.write_text("ENROOT_RUNTIME_PATH /run/enroot/user-$(id -u)\n")
    sqsh = _export_cli(*common, "--to", str(tmp_path / "x.sqsh"))
    assert sqsh.exit_code == 1 and "cannot reach the Docker engine" in sqsh.output, sqsh.output


def test_tar_settings_name_the_tag_written_into_it():
    request = ExportRequest(ref="img:2", dest=Path("/x.tar"), fmt="tar")
    assert request.settings("img:1") != request.settings("img:2")


def test_label_newlines_stay_comments_in_etc_rc():
    rc = enroot_config.render({"Labels": {"evil": "x\nrm -rf /\r\necho", "ok": "v"}})["etc/rc"]
    assert "# evil x rm -rf /\r echo\n" in rc  # jq gsub("\n"; " "), as enroot writes it
    assert not any(line.startswith("rm ") for line in rc.splitlines())


def test_components_from_labels():
    from builder.export import components_from_labels

    labels = {"builder.component.nccl": "2.21.5", "com.example.component.efa": "1.35.0", "other": "x",
              "org.opencontainers.image.version": "1"}
    assert components_from_labels(labels) == {"nccl": "2.21.5", "efa": "1.35.0"}


def _stream(entries, *, keep_owners=False, files=None, workdir="", fmt=tarfile.PAX_FORMAT, chunk=7):
    """Run EnrootStream over a tar of ``entries`` (TarInfo, data) read in small pieces; the result as members."""
    from builder.export.container import engine_excludes
    from builder.export.tarstream import EnrootStream

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    chunks = (raw[i:i + chunk] for i in range(0, len(raw), chunk))
    stream = EnrootStream(source.ChunkReader(chunks), files=files or {}, workdir=workdir, exclude=engine_excludes,
                          keep_owners=keep_owners, mtime=5)
    out = b"".join(stream.chunks())
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isreg() else None) for m in tar}, stream.stats


def _info(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, data=b"", link="", **pax):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, uid, gid, link
    info.uname, info.gname = ("user" if uid else "root"), ("group" if gid else "root")
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.pax_headers = pax
    return info, (data if kind == tarfile.REGTYPE else None)


def test_enroot_stream_rewrites_modes_owners_and_files_and_passes_data_through():
    long = "d/" + "L" * 150
    cap = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12
    big = 3_000_000  # beyond ustar's 2097151 uid: a pax record, dropped with the other owner fields
    entries = [
        _info("d", tarfile.DIRTYPE, 0o555, 5, 6),
        _info(long, mode=0o000, uid=big, gid=big, data=b"x" * 1000),
        _info("d/suid", mode=0o4711, uid=1000, data=b"s", **{"SCHILY.xattr.security.capability": cap}),
        _info("d/link", tarfile.SYMTYPE, 0o777, 7, 7, link="suid"),
        _info("d/hard", tarfile.LNKTYPE, link=long),
        _info("a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p", tarfile.DIRTYPE, 0o555),  # 16 levels: no u+w (fixperms depth 15)
        _info("a/b/c/d/e/f/g/h/i/j/k/l/m/n/o", tarfile.DIRTYPE, 0o555),
        _info("dev/null", tarfile.CHRTYPE, 0o666),
        _info("dev", tarfile.DIRTYPE, 0o755),
        _info(".dockerenv", data=b""),
        _info("etc/environment", mode=0o600, data=b"OLD=1\n"),
    ]
    got, stats = _stream(entries, files={"etc/environment": b"NEW=1\n", "etc/rc": b"exec sh\n"}, workdir="/w x/y")
    assert got["d"][0].mode == 0o755 and got["d"][0].uid == 0 and got["d"][0].gid == 0
    assert got[long][0].mode == 0o400 and got[long][0].uid == 0 and got[long][1] == b"x" * 1000
    suid = got["d/suid"][0]
    assert suid.mode == 0o4711 and suid.uid == 0 and suid.pax_headers["SCHILY.xattr.security.capability"] == cap
    assert got["d/link"][0].linkname == "suid" and got["d/hard"][0].linkname == long
    assert got["a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p"][0].mode == 0o555 | 0o100 | 0o400
    assert got["a/b/c/d/e/f/g/h/i/j/k/l/m/n/o"][0].mode == 0o755
    assert "dev" in got and "dev/null" not in got and ".dockerenv" not in got
    mode = {name: stat.S_IMODE(m.mode) for name, (m, _data) in got.items()}
    assert got["etc/environment"][1] == b"NEW=1\n" and mode["etc/environment"] == 0o600  # keeps its mode
    assert got["etc/rc"][1] == b"exec sh\n" and mode["etc/rc"] == 0o644 and got["etc/rc"][0].isreg()
    assert got["w x"][0].isdir() and mode["w x/y"] == 0o755
    assert stats.replaced == ["etc/environment"] and set(stats.added) == {"w x", "w x/y", "etc/rc"}
    kept, _stats = _stream(entries, keep_owners=True)
    assert kept[long][0].uid == big and kept["d"][0].uid == 5 and kept["d/suid"][0].uid == 1000


def test_enroot_stream_reads_gnu_long_names_and_refuses_climbing_paths():
    long = "x/" + "N" * 200
    got, _stats = _stream([_info("x", tarfile.DIRTYPE), _info(long, data=b"gnu")], fmt=tarfile.GNU_FORMAT)
    assert got[long][1] == b"gnu"
    with pytest.raises(BuilderError, match="unsafe path"):
        _stream([_info("../etc/passwd", data=b"x")])
    with pytest.raises(BuilderError, match="ended in the middle"):
        from builder.export.tarstream import EnrootStream

        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            tar.addfile(_info("f", data=b"y" * 5000)[0], io.BytesIO(b"y" * 5000))
        cut = raw.getvalue()[:2048]
        list(EnrootStream(io.BytesIO(cut), files={}, workdir="", exclude=lambda _r: False).chunks())
