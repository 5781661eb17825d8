"""enroot's configuration as builder reads it, compared with what the real enroot 4.1.2 resolves.

The oracle is the installed ``enroot`` script itself (scripts/setup-upstream.sh builds it), with
only its configuration path (the ``@sysconfdir@`` the Makefile wrote into it) pointed at a test
folder: ``enroot info`` prints every ENROOT_* variable after enroot.in's config::init.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.errors import UsageError
from builder.export import enroot_conf, squash

import export_support as sup


def _enroot_copy(tmp_path: Path, conf: Path) -> Path:
    enroot = shutil.which("enroot")
    sup.need(enroot is not None, "enroot is not installed (scripts/setup-upstream.sh builds it)")
    installed = enroot_conf.installed_conf(enroot)
    assert installed, f"{enroot} has no config::init line"
    text = Path(enroot).read_text()
    copy = tmp_path / "enroot"
    copy.write_text(text.replace(f'"{installed}"', f'"{conf}"'))
    return copy


def enroot_says(tmp_path: Path, conf: Path, env: dict | None = None) -> dict[str, str]:
    """ENROOT_* as the real enroot resolves them with ``conf`` as its configuration file."""
    copy = _enroot_copy(tmp_path, conf)
    scratch = tmp_path / "scratch"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENROOT_")}
    base.update({"HOME": str(scratch), "XDG_RUNTIME_DIR": str(scratch / "run"), **(env or {})})
    out = subprocess.run(["bash", str(copy), "info"], capture_output=True, text=True, env=base)
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"^  (ENROOT_[A-Z_]+)=(.*)$", out.stdout, re.M))


LAYOUTS = {
    "main file only": ({"enroot.conf": "ENROOT_SQUASH_OPTIONS -comp xz -b 1M\n"}, {}),
    "drop-in when the main file leaves it commented": (
        {"enroot.conf": "#ENROOT_SQUASH_OPTIONS -comp lzo -noD\n",
         "enroot.conf.d/50-squash.conf": "ENROOT_SQUASH_OPTIONS -comp zstd -Xcompression-level 7\n"}, {}),
    "the first value wins, main file before drop-ins": (
        {"enroot.conf": "ENROOT_SQUASH_OPTIONS -comp gzip\nENROOT_SQUASH_OPTIONS -comp xz\n",
         "enroot.conf.d/10-a.conf": "ENROOT_SQUASH_OPTIONS -comp zstd\n"}, {}),
    "drop-ins in name order, non-.conf ignored": (
        {"enroot.conf.d/20-b.conf": "ENROOT_SQUASH_OPTIONS=-comp xz\nENROOT_MAX_PROCESSORS 7\n",
         "enroot.conf.d/10-a.conf": "  ENROOT_MAX_PROCESSORS\t3   # three\n",
         "enroot.conf.d/05-x.conf.bak": "ENROOT_SQUASH_OPTIONS -comp lz4\n"}, {}),
    "an empty value lets a later one in": (
        {"enroot.conf": 'ENROOT_SQUASH_OPTIONS ""\n', "enroot.conf.d/1.conf": "ENROOT_SQUASH_OPTIONS '-comp  xz'\n"}, {}),
    "the environment wins": ({"enroot.conf": "ENROOT_SQUASH_OPTIONS -comp xz\n"},
                             {"ENROOT_SQUASH_OPTIONS": "-comp gzip", "ENROOT_MAX_PROCESSORS": "5"}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_settings_resolve_as_the_real_enroot_resolves_them(tmp_path, layout):
    files, env = LAYOUTS[layout]
    folder = tmp_path / "etc"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    conf = folder / "enroot.conf"
    real = enroot_says(tmp_path, conf, env)
    ours = enroot_conf.EnrootConfig(env, str(conf))
    for key, default in (("ENROOT_SQUASH_OPTIONS", "-comp lzo -noD -exit-on-error"),
                         ("ENROOT_MAX_PROCESSORS", str(len(os.sched_getaffinity(0))))):
        value = ours.get(key)
        assert (value.text if value else default).split() == real[key].split(), key


def test_values_name_their_file_and_line(tmp_path):
    (tmp_path / "enroot.conf.d").mkdir()
    (tmp_path / "enroot.conf").write_text("# comment\n#ENROOT_SQUASH_OPTIONS -comp lzo\n")
    (tmp_path / "enroot.conf.d/a.conf").write_text("\nENROOT_SQUASH_OPTIONS -comp xz\nENROOT_MAX_PROCESSORS 3\n")
    choice = squash.choose(None, None, env={}, conf=str(tmp_path / "enroot.conf"))
    assert choice.origin == f"{tmp_path}/enroot.conf.d/a.conf:2"
    assert choice.processors_origin == f"{tmp_path}/enroot.conf.d/a.conf:3" and choice.processors == 3
    assert squash.choose(None, None, env={"ENROOT_SQUASH_OPTIONS": "-comp gzip"},
                         conf=str(tmp_path / "enroot.conf")).origin == "$ENROOT_SQUASH_OPTIONS"


def test_shell_expansion_is_refused_with_its_file_and_line_for_keys_builder_reads(tmp_path):
    (tmp_path / "enroot.conf.d").mkdir()
    (tmp_path / "enroot.conf").write_text("ENROOT_RUNTIME_PATH /run/enroot/user-$(id -u)\n"
                                          "ENROOT_DATA_PATH ${XDG_DATA_HOME}/enroot\n")
    (tmp_path / "enroot.conf.d/9.conf").write_text("ENROOT_MAX_PROCESSORS $(nproc)\n")
    conf = str(tmp_path / "enroot.conf")
    with pytest.raises(UsageError, match=rf"^{tmp_path}/enroot.conf.d/9.conf:1: ENROOT_MAX_PROCESSORS needs the shell"):
        squash.choose(None, None, env={}, conf=conf)
    assert squash.choose(None, None, 2, env={}, conf=conf).processors == 2  # not read: no error
    assert squash.choose(None, None, env={"ENROOT_MAX_PROCESSORS": "4"}, conf=conf).processors == 4
    for value in ("-comp *", "-comp `x`", "-b {1,2}M", "~/x", "-comp xz; rm -rf /"):
        (tmp_path / "enroot.conf.d/9.conf").write_text(f"ENROOT_SQUASH_OPTIONS {value}\n")
        with pytest.raises(UsageError, match="9.conf:1: ENROOT_SQUASH_OPTIONS needs the shell"):
            squash.choose(None, None, 1, env={}, conf=conf)
    (tmp_path / "enroot.conf.d/9.conf").write_text("ENROOT_SQUASH_OPTIONS '-comp xz\n")
    with pytest.raises(UsageError, match="9.conf:1: ENROOT_SQUASH_OPTIONS has unbalanced quotes"):
        squash.choose(None, None, 1, env={}, conf=conf)


def test_the_installed_enroot_names_its_configuration():
    enroot = shutil.which("enroot")
    sup.need(enroot is not None, "enroot is not installed (scripts/setup-upstream.sh builds it)")
    info = subprocess.run([enroot, "info"], capture_output=True, text=True,
                          env={**os.environ, "XDG_RUNTIME_DIR": "/tmp", "ENROOT_RUNTIME_PATH": "/tmp"})
    said = re.search(r"^Config file: (.+)$", info.stdout, re.M)
    assert said and enroot_conf.installed_conf(enroot) == said[1] == enroot_conf.conf_file()
