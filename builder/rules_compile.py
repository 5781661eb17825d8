"""Compatibility rules found by compiling the stanzas for real (tests/integration/test_compile.py):
combinations that render and pass every static check, yet stop the build. Registered in
builder.rules' RULES (this module is imported at the end of builder/rules.py)."""

from __future__ import annotations

from typing import Iterator

from packaging.version import Version

from builder.rules import Finding, V, rule

# aws-ofi-nccl v1.13.0-aws to v1.16.3 declare the CUDA driver functions they resolve with CUDA's
# unversioned typedefs (src/nccl_ofi_cuda.c/.cpp: "static PFN_##function pfn_##function", e.g.
# PFN_cuCtxGetDevice). CUDA 12's cudaTypedefs.h defines those names ("#define PFN_cuCtxGetDevice
# PFN_cuCtxGetDevice_v2000" in 12.8); CUDA 13's keeps only the versioned ones
# (PFN_cuCtxGetDevice_v2000, _v13000), so the build stops with "unknown type name
# 'PFN_cuCtxGetDevice'". v1.17.0 declares PFN_##function##_v##version; v1.12.1-aws and older
# dlopen libcuda and use no PFN_* type. (Seen compiling v1.13.2-aws against the CUDA 13.0 wheels.)
OFI_UNVERSIONED_PFN = (Version("1.13.0"), Version("1.17.0"))
CUDA_WITHOUT_UNVERSIONED_PFN = Version("13.0")


@rule("ofi-cuda13", "aws-ofi-nccl 1.13.0 to 1.16.x does not compile against CUDA 13")
def _ofi_cuda13(spec) -> Iterator[Finding]:
    ofi, cuda = spec.components.get("aws_ofi_nccl"), spec.versions.get("cuda")
    if not ofi or not cuda or not spec.has("aws-ofi-nccl"):
        return
    low, high = OFI_UNVERSIONED_PFN
    if low <= V(ofi) < high and V(cuda) >= CUDA_WITHOUT_UNVERSIONED_PFN:
        yield Finding("ofi-cuda13", "components.aws_ofi_nccl",
                      f"aws-ofi-nccl {ofi} does not compile against CUDA {cuda}: it uses the unversioned "
                      "PFN_* typedefs CUDA 13's cudaTypedefs.h dropped; use aws-ofi-nccl 1.17.0 or later (or 1.12.1 and older)")
