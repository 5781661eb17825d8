"""builder export against the real enroot 4.1.2 (integration): the same files, the same container.

For an NGC-like, a DLC-like and an awkward image (quotes and ``$`` in ENV, ENTRYPOINT and CMD, a
WORKDIR with a space, a VOLUME, a 0000 /etc/shadow), builder's default ``.sqsh`` and
``enroot import dockerd://`` of the same image must hold the same entries (type, mode, owner,
size, link target, content: enroot's /etc/rc included, byte for byte), and ``enroot create`` +
``enroot start`` of each must behave the same: default command, arguments, environment, working
directory, ``--env``, ``--mount``, ``--root``, /etc/mtab, and ``enroot start X.sqsh`` straight
from the file. enroot is built from ../shared/upstream by scripts/setup-upstream.sh; in CI a
missing enroot fails these tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import export_support as sup

pytestmark = pytest.mark.integration
NO_MATRIX = {"BUILDER_MATRIX": "/nonexistent/matrix.yaml"}

IMAGES = {
    # NGC PyTorch's shape: NVIDIA's entrypoint script, /workspace, no CMD, driver-related ENV.
    "ngc": r"""
FROM {base}
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/bin:/usr/bin:/bin \
    LD_LIBRARY_PATH=/usr/local/cuda/compat/lib:/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    NVIDIA_PYTORCH_VERSION=24.09 PYTORCH_VERSION=2.5.0a0
LABEL com.nvidia.cuda.version=12.6.1 com.nvidia.build.id=107063150
RUN mkdir -p /opt/nvidia /workspace && \
    printf '#!/bin/sh\necho "== PyTorch =="\nexec "$@"\n' > /opt/nvidia/nvidia_entrypoint.sh && \
    chmod 0755 /opt/nvidia/nvidia_entrypoint.sh && echo 'root:!:19000::::::' > /etc/shadow && chmod 0000 /etc/shadow
WORKDIR /workspace
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh"]
""",
    # AWS DLC's shape: an entrypoint script, CMD, Python/SageMaker ENV, /opt/ml/code.
    "dlc": r"""
FROM {base}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LD_LIBRARY_PATH=/opt/conda/lib:/usr/local/lib \
    SAGEMAKER_TRAINING_MODULE=sagemaker_pytorch_container.training:main DLC_CONTAINER_TYPE=training
RUN mkdir -p /opt/ml/code /usr/local/bin && \
    printf '#!/bin/sh\necho "dlc: $#: $*"\nexec "$@"\n' > /usr/local/bin/start_with_right_hostname.sh && \
    chmod 0755 /usr/local/bin/start_with_right_hostname.sh
ENTRYPOINT ["/bin/sh", "/usr/local/bin/start_with_right_hostname.sh"]
CMD ["/bin/sh", "-c", "echo default command"]
""",
    # Quotes and $ everywhere, a WORKDIR with a space, a VOLUME, a read-only folder.
    "awkward": r"""
FROM {base}
ENV QUOTED="it's \"double\" and 'single'" DOLLAR='$HOME and ${{PATH}} and $(id)' EMPTY= SPACES="  a  b  "
RUN mkdir -p /data/vol /ro && echo inside > /data/vol/file && chmod 0555 /ro
WORKDIR "/work dir/with space"
VOLUME /data/vol
ENTRYPOINT ["/bin/sh", "-c", "echo \"entry [$0] [$*] Q=[$QUOTED] D=[$DOLLAR]\"; pwd"]
CMD ["arg with space", "$NOT_EXPANDED", "it's"]
""",
}

PROBES = {  # name -> enroot start arguments after the container name (None: its default command)
    "default": None,
    "inside": ["/bin/sh", "-c", "pwd; env | sort | grep -v -e '^_=' -e '^SHLVL=' -e '^OLDPWD='; "
               "ls -l /etc/mtab | sed 's/.* -> //'; head -1 /etc/mtab | cut -d' ' -f3; "
               "cat /etc/hostname /etc/resolv.conf; ls -ld /ro /proc | cut -c1-10; "
               "cat /etc/shadow; echo status $?"],
}


def image(name: str) -> str:
    base = sup.base_image()
    dockerfile = IMAGES[name].format(base=base)
    ref = f"builder-test/export-enroot-{name}:{sup._key(dockerfile, sup.RECIPE_REVISION)}"
    if not sup.image_exists(ref):
        with tempfile.TemporaryDirectory() as ctx:
            (Path(ctx) / "Dockerfile").write_text(dockerfile)
            sup.docker("build", "--network", "host", "-q", "-t", ref, ctx, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return ref


@pytest.fixture(scope="module")
def enroot_env():
    sup.need_export_tools()
    sup.need(shutil.which("enroot") is not None, "enroot is not installed (scripts/setup-upstream.sh builds it)")
    scratch = Path(tempfile.mkdtemp(prefix="builder-i12-enroot-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENROOT_")}
    for key in ("RUNTIME", "CACHE", "DATA", "TEMP"):
        (scratch / key.lower()).mkdir()
        env[f"ENROOT_{key}_PATH"] = str(scratch / key.lower())
    yield env
    shutil.rmtree(scratch, ignore_errors=True)


def enroot(env, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["enroot", *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if check and proc.returncode:
        raise AssertionError(f"enroot {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


# No GPU here: enroot's hooks.d/98-nvidia.sh runs nvidia-container-cli whenever the container's
# NVIDIA_VISIBLE_DEVICES is set (the NGC-like image sets it) and is skipped for "void".
NO_GPU = ("--env", "NVIDIA_VISIBLE_DEVICES=void")


def behaviour(env, target: str, mount_src: Path, only: tuple[str, ...] = ()) -> dict[str, tuple[int, str]]:
    """What the container does for every probe; ``target`` is a container name or a .sqsh path."""
    seen = {}
    for probe, command in PROBES.items():
        if only and probe not in only:
            continue
        proc = enroot(env, "start", *NO_GPU, target, *(command or []), check=False)
        seen[probe] = (proc.returncode, proc.stdout + proc.stderr)
    if only:
        return seen
    proc = enroot(env, "start", *NO_GPU, "--env", "GIVEN=from --env", "--mount", f"{mount_src}:/mnt/given", "--root",
                  target, "/bin/sh", "-c", "echo $GIVEN; cat /mnt/given/marker; id -u", check=False)
    seen["env, mount, root"] = (proc.returncode, proc.stdout + proc.stderr)
    return seen


@pytest.mark.parametrize("name", list(IMAGES))
def test_builder_sqsh_is_enroot_import_file_for_file_and_at_run_time(enroot_env, tmp_path, name):
    ref = image(name)
    ours, theirs = tmp_path / "builder.sqsh", tmp_path / "enroot.sqsh"
    proc = subprocess.run([sys.executable, "-m", "builder", "export", ref, "--to", str(ours)], capture_output=True,
                          text=True, env={**enroot_env, **NO_MATRIX})
    assert proc.returncode == 0, proc.stderr
    enroot(enroot_env, "import", "-o", str(theirs), f"dockerd://{ref}")

    got, got_links = sup.squashfs_entries(ours, tmp_path / "ours")
    want, want_links = sup.squashfs_entries(theirs, tmp_path / "theirs")
    assert sup.diff_tables(want, got) == [] and got_links == want_links
    assert got["etc/mtab"].extra == "/proc/mounts"
    assert name != "ngc" or got["etc/shadow"].mode == 0o400  # 0000 in the image: common::fixperms's u+r

    marker = tmp_path / "mount"
    marker.mkdir()
    (marker / "marker").write_text("mounted\n")
    names = {}
    try:
        for label, sqsh in (("builder", ours), ("enroot", theirs)):
            names[label] = f"i12-{name}-{label}-{os.getpid()}"
            enroot(enroot_env, "create", "-n", names[label], str(sqsh))
        ran = {label: behaviour(enroot_env, names[label], marker) for label in names}
        direct = {label: behaviour(enroot_env, str(sqsh), marker, ("inside",))["inside"]
                  for label, sqsh in (("builder", ours), ("enroot", theirs))}
    finally:
        for container in names.values():
            enroot(enroot_env, "remove", "-f", container, check=False)
    assert ran["builder"] == ran["enroot"]
    assert direct["builder"] == direct["enroot"]  # (its root is squashfuse + overlay, not the created copy)
    assert all(code == 0 for code, _out in ran["builder"].values()), ran["builder"]
    out = {probe: text for probe, (_code, text) in ran["builder"].items()}
    if name != "awkward":  # its ENTRYPOINT is sh -c '...': arguments are not commands
        assert "/proc/mounts\n" in out["inside"]  # the engine's /etc/mtab, which setmntent() reads
        assert "from --env\nmounted\n0\n" in out["env, mount, root"]
    if name == "awkward":
        assert "entry [arg with space] [$NOT_EXPANDED it's]" in out["default"]
        assert "Q=[it's \"double\" and 'single'] D=[" in out["default"] and "$(id)]" in out["default"]
        assert out["default"].rstrip().endswith("/work dir/with space")
    if name == "ngc":
        assert out["default"] == "== PyTorch ==\n" and "== PyTorch ==\n/workspace\n" in out["inside"]
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in out["inside"]
        assert "root:!:19000::::::\n" in out["inside"] and "status 0\n" in out["inside"]
        assert "root:!:19000::::::\n" in direct["builder"][1]  # 0400 after fixperms: readable from the file too
    if name == "dlc":
        assert out["default"] == "dlc: 3: /bin/sh -c echo default command\ndefault command\n"
