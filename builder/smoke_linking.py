"""Linking checks for what the stanzas compile: the defects a build that "succeeds" can still
carry, found without a GPU.

- ``ldd_tree``: every ELF executable and shared library under a folder resolves under ldd.
- ``nccl_linked``: the libnccl.so.2 the loader picks for a binary (ldd, with the image's own
  environment) reports, through its own ``ncclGetVersion``, the NCCL the matrix pins. A binary
  linked against the base image's libnccl2 instead measures the wrong library.
- ``ofi_plugin_version``: the aws-ofi-nccl plugin, loaded as NCCL loads it, reports the version
  the matrix says. Its init function logs ``"Initializing " PACKAGE_STRING`` first thing
  (aws-ofi-nccl src/nccl_ofi_net.c, .cpp from 1.14), through the logger NCCL hands it;
  ``ncclNetPlugin_v8`` (exported by every release from 1.7 to 1.21 at least) takes that logger
  as its only argument. Without an EFA device init then fails, which is expected here.
- ``no_gpu_run``: a CUDA program run without a GPU fails with CUDA's or NCCL's own error, never
  with a loader error: proof that everything it links is present and loads.

Each is ``handler(smoker, **args) -> (ok, detail)``; builder.smoke dispatches to HANDLERS.
"""

from __future__ import annotations

import re

from packaging.version import InvalidVersion, Version

from builder.buildkit import last_line

# Libraries the host supplies at run time (the NVIDIA container toolkit mounts the driver's):
# an ldd check with driver_libs: true tolerates these, never anything else.
DRIVER_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")

# "ldd<TAB>path" then ldd's output, for each ELF file (executable or shared library) under $1.
LDD_TREE_SCRIPT = r"""
[ -d "$1" ] || { printf 'scan-error\t%s is not a folder\n' "$1"; exit 3; }
find "$1" -type f | while IFS= read -r f; do
  [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || continue
  printf 'ldd\t%s\n' "$f"
  ldd "$f" 2>&1 | sed 's/^/  /'
done
printf '__builder_ldd_done__\n'
"""

# argv[1]: the binary. Prints "path VERSION" of the libnccl.so.2 the loader resolves for it.
NCCL_LINKED_PROBE = r"""
import ctypes, re, subprocess, sys
out = subprocess.run(["ldd", sys.argv[1]], capture_output=True, text=True)
m = re.search(r"^\s*libnccl\.so[.\d]*\s+=>\s+(\S+)", out.stdout, re.M)
if out.returncode != 0 or not m:
    print("unlinked %s" % (out.stderr.strip() or "libnccl.so.2 not in ldd's output").splitlines()[-1])
    sys.exit(0)
if m.group(1) == "not":
    print("unresolved libnccl.so.2 not found")
    sys.exit(0)
v = ctypes.c_int(0)
ctypes.CDLL(m.group(1)).ncclGetVersion(ctypes.byref(v))
major, rest = divmod(v.value, 10000 if v.value >= 10000 else 1000)
minor, patch = divmod(rest, 100)
print("lib %s %d.%d.%d" % (m.group(1), major, minor, patch))
"""

# argv[1]: the plugin. Calls ncclNetPlugin_v8.init with a logger that prints each format string.
OFI_PROBE = r"""
import ctypes, sys
LOGGER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
@LOGGER
def log(level, flags, file, line, fmt):
    print("log %s" % (fmt or b"").decode(errors="replace").strip(), flush=True)
lib = ctypes.CDLL(sys.argv[1])
table = (ctypes.c_void_p * 2).in_dll(lib, "ncclNetPlugin_v8")  # {const char *name; init; ...}
name = ctypes.cast(table[0], ctypes.c_char_p).value.decode()
print("name %s" % name, flush=True)
rc = ctypes.CFUNCTYPE(ctypes.c_int, LOGGER)(table[1])(log)
print("init %d" % rc)
"""
INIT_RE = re.compile(r"Initializing aws-ofi-nccl (\S+)")

# Errors of the dynamic loader: the program never ran.
LOADER_ERRORS = ("error while loading shared libraries", "symbol lookup error", "undefined symbol",
                 "cannot open shared object file", "version `GLIBC")
# What CUDA's runtime and NCCL say when there is no GPU or no driver (cudaGetErrorString of
# cudaErrorInsufficientDriver, cudaErrorNoDevice; NCCL's "Cuda failure"/"NCCL failure" lines as
# nccl-tests prints them in src/common.h CUDACHECK/NCCLCHECK).
NO_DEVICE = ("CUDA driver version is insufficient", "no CUDA-capable device", "CUDA driver is a stub library",
             "Cuda failure", "NCCL failure", "cudaErrorNoDevice", "cudaErrorInsufficientDriver")


def parse_ldd_tree(output: str, allow: tuple[str, ...]) -> tuple[list[str], dict[str, list[str]]]:
    """(files seen, {file: unresolved libraries}) from LDD_TREE_SCRIPT's output."""
    files, missing, current = [], {}, None
    for line in output.splitlines():
        if line.startswith("ldd\t"):
            current = line[4:]
            files.append(current)
        elif current and "not found" in line:
            lib = line.split("=>", 1)[0].strip()
            if lib not in allow:
                missing.setdefault(current, []).append(lib)
    return files, missing


def nccl_matches(found: str, expected: str) -> bool:
    try:
        return Version(found) == Version(expected)
    except InvalidVersion:
        return found == expected


def ldd_tree(smoker, path, driver_libs=True):
    allow = DRIVER_LIBS if driver_libs else ()
    proc = smoker.box.exec(["/bin/sh", "-c", LDD_TREE_SCRIPT, "sh", path])
    if proc.returncode != 0 or "__builder_ldd_done__" not in proc.stdout:
        return False, f"cannot list {path}: {last_line(proc.stdout + proc.stderr)}"
    files, missing = parse_ldd_tree(proc.stdout, allow)
    if not files:
        return False, f"no executable or shared library under {path}"
    if missing:
        shown = [f"{f}: {', '.join(libs)}" for f, libs in sorted(missing.items())[:3]]
        return False, f"{len(missing)} of {len(files)} files do not resolve: " + "; ".join(shown)
    return True, f"{len(files)} files resolve"


def nccl_linked(smoker, path, version):
    if not smoker.python:
        return False, "no python in the image to call ncclGetVersion"
    proc = smoker.box.exec([smoker.python, "-c", NCCL_LINKED_PROBE, path])
    kind, _, rest = proc.stdout.strip().partition(" ")
    if proc.returncode != 0 or kind not in ("lib", "unlinked", "unresolved"):
        return False, f"the probe failed: exit {proc.returncode}: {last_line(proc.stderr or proc.stdout)}"
    if kind != "lib":
        return False, f"{path}: {rest}"
    where, _, found = rest.rpartition(" ")
    if not nccl_matches(found, version):
        return False, (f"{path} loads NCCL {found} from {where}, the matrix pins {version} "
                       "(it links another NCCL than the pinned one, e.g. the base image's libnccl2)")
    return True, f"{path} loads NCCL {found} from {where}"


def ofi_plugin_version(smoker, path, version):
    if not smoker.python:
        return False, "no python in the image to load the plugin"
    proc = smoker.box.exec([smoker.python, "-c", OFI_PROBE, path], env={"NCCL_DEBUG": "INFO"})
    lines = proc.stdout.splitlines()
    name = next((line[5:] for line in lines if line.startswith("name ")), None)
    reported = next((m.group(1) for line in lines if (m := INIT_RE.search(line))), None)
    if name is None:
        return False, f"cannot load {path} as an NCCL net plugin: {last_line(proc.stderr or proc.stdout)}"
    if reported is None:
        return False, f"{path} ({name}) did not log 'Initializing aws-ofi-nccl <version>' (exit {proc.returncode})"
    expected = {version, f"{version}-aws"}
    if reported not in expected:
        return False, f"{path} reports aws-ofi-nccl {reported}, the matrix says {version}"
    return True, f"{name}: aws-ofi-nccl {reported}"


NO_GPU_TIMEOUT = 120


def no_gpu_run(smoker, argv):
    # Built with MPI=1: MPI_Init runs first, as a singleton (no mpirun), as root in the container.
    proc = smoker.box.exec(list(argv), timeout=NO_GPU_TIMEOUT,
                           env={"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    text = (proc.stdout or "") + (proc.stderr or "")
    loader = next((e for e in LOADER_ERRORS if e in text), None)
    if loader:
        line = next(line for line in text.splitlines() if loader in line)
        return False, f"loader error, the program never ran: {line.strip()[:200]}"
    hit = next((e for e in NO_DEVICE if e in text), None)
    if proc.returncode == 0:
        return False, "exited 0 without a GPU: expected CUDA's no-device error"
    if hit is None:
        return False, f"exit {proc.returncode} without CUDA's or NCCL's no-device error: {last_line(text)[:200]}"
    line = next(line for line in text.splitlines() if hit in line)
    return True, f"exit {proc.returncode}: {line.strip()[:160]}"


HANDLERS = {
    "ldd_tree": ldd_tree,
    "nccl_linked": nccl_linked,
    "ofi_plugin_version": ofi_plugin_version,
    "no_gpu_run": no_gpu_run,
}
