"""The enroot login-shell check of `builder smoke` (builder/smoke_login_shell.py), without Docker:
what it hands the shell, how it reads the result, what it reports. The check against a real image
and the real enroot under pyxis is in tests/integration/test_slurm_pyxis.py."""

from __future__ import annotations

import subprocess

from builder import smoke_login_shell as login

DEBIAN_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Debian's /etc/profile
IMAGE_PATH = f"/opt/nccl-tests/build:/opt/amazon/openmpi/bin:/opt/amazon/efa/bin:{DEBIAN_ROOT_PATH}"


def test_parse_environ_reads_nul_separated_entries_with_newlines_and_equals():
    data = "PATH=/a:/b\0MULTI=line1\nline2\0EQ=a=b\0EMPTY=\0junk\0"
    assert login.parse_environ(data) == {"PATH": "/a:/b", "MULTI": "line1\nline2", "EQ": "a=b", "EMPTY": ""}


def test_compare_names_lost_path_entries_and_changed_or_unset_variables():
    baked = {"PATH": IMAGE_PATH, "LD_LIBRARY_PATH": "/opt/amazon/efa/lib", "OPAL_PREFIX": "/opt/amazon/openmpi",
             "NCCL_SOCKET_IFNAME": "^docker,lo,veth"}
    after = {"PATH": DEBIAN_ROOT_PATH, "OPAL_PREFIX": "/usr", "NCCL_SOCKET_IFNAME": "^docker,lo,veth", "HOME": "/root"}
    assert login.compare(baked, after) == [
        "drops /opt/nccl-tests/build, /opt/amazon/openmpi/bin, /opt/amazon/efa/bin from PATH",
        "unsets LD_LIBRARY_PATH",
        "changes OPAL_PREFIX from '/opt/amazon/openmpi' to '/usr'",
    ]
    # Additions by the login shell (HOME, SHLVL, a longer PATH) are not findings.
    assert login.compare(baked, {**baked, "PATH": IMAGE_PATH + ":/usr/games", "SHLVL": "1"}) == []
    # Nor is an ordinary user's login PATH without the sbin folders (Debian's /etc/profile) when
    # the image added nothing of its own.
    user_path = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
    assert login.compare({"PATH": DEBIAN_ROOT_PATH}, {"PATH": user_path}) == []
    assert login.compare({"PATH": "/opt/a/bin:/opt/b/bin:/bin"}, {"PATH": "/opt/b/bin:/opt/a/bin:/bin"}) == [
        "reorders PATH from '/opt/a/bin:/opt/b/bin:/bin' to '/opt/b/bin:/opt/a/bin:/bin'"]


def test_the_shell_gets_the_image_env_plus_what_enroot_switchroot_adds():
    argv = login.login_env_argv("/usr/bin/docker", "c1", "1000:1000", "/nonexistent",
                                {"PATH": IMAGE_PATH, "HOME": "/workspace", "SHELL": "/bin/zsh"})
    assert argv[:5] == ["/usr/bin/docker", "exec", "-u", "1000:1000", "c1"]
    pairs = argv[argv.index("probe") + 1:]
    assert f"PATH={IMAGE_PATH}" in pairs
    assert "HOME=/workspace" in pairs  # the image's value wins (sys_login: setenv(..., 0))
    assert "TERM=dumb" in pairs and "USER=user" in pairs and "LOGNAME=user" in pairs
    assert not any(p.startswith("SHELL=") for p in pairs)  # the probe names the shell it runs
    # No PATH in the image: enroot-switchroot's default for root.
    bare = login.login_env_argv("docker", "c1", "0:0", "/root", {})
    assert f"PATH={DEBIAN_ROOT_PATH}" in bare and "HOME=/root" in bare


def test_probe_runs_a_login_shell_that_reads_etc_profile(tmp_path):
    """The probe on this machine (Debian): a login shell as root reads /etc/profile, which sets
    PATH, so the image's PATH does not survive; the probe's output is what compare() reads."""
    res = subprocess.run(["/bin/sh", "-c", login.PROBE, "probe", f"PATH={IMAGE_PATH}", "HOME=/root", "KEEP=1"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    env = login.parse_environ(res.stdout)
    assert env["KEEP"] == "1" and env["SHELL"] in ("/bin/bash", "/bin/sh")
    assert login.compare({"PATH": IMAGE_PATH, "KEEP": "1"}, env) == [
        "drops /opt/nccl-tests/build, /opt/amazon/openmpi/bin, /opt/amazon/efa/bin from PATH"]
