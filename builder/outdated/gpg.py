"""OpenPGP signature checks with GnuPG (Debian's gpg), against a key pinned by fingerprint.

The key file is imported into a throw-away keyring (never the user's), the pinned fingerprint
must be a primary key in it, and the signature must be good AND made by that key: gpg's machine
interface (``--status-fd``, doc/DETAILS in GnuPG) reports ``VALIDSIG <signing-key-fpr> ... <primary-fpr>``
for a good signature, whose last field is the primary key's fingerprint. Trust levels are not
consulted: the pin is the trust.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from builder.errors import BuilderError

FPR_RE = re.compile(r"^[0-9A-F]{40}\Z")


class SignatureError(BuilderError):
    """A file's signature is missing, bad, or made by a key other than the pinned one."""


def normalise(fingerprint: str) -> str:
    """'4E90 91BC ...' (as AWS prints it) -> '4E9091BC...'."""
    value = fingerprint.replace(" ", "").upper()
    if not FPR_RE.match(value):
        raise ValueError(f"not a 40-hex-digit OpenPGP fingerprint: {fingerprint!r}")
    return value


def verify_detached(data: Path, signature: Path, key_file: Path, fingerprint: str, what: str) -> None:
    """Raise SignatureError unless ``signature`` is a good signature of ``data`` by the key
    whose primary fingerprint is ``fingerprint``, taken from ``key_file``."""
    gpg = shutil.which("gpg")
    if gpg is None:
        raise BuilderError("gpg is not installed (apt-get install gnupg); it verifies the EFA installer's signature")
    pinned = normalise(fingerprint)
    with tempfile.TemporaryDirectory(prefix="builder-gpg-") as home:
        base = [gpg, "--batch", "--no-tty", "--no-auto-key-retrieve", "--homedir", home]
        imported = _run(base + ["--import", str(key_file)])
        if imported.returncode != 0:
            raise SignatureError(f"{what}: the signing key {key_file.name} could not be imported: {_last(imported.stderr)}")
        listing = _run(base + ["--with-colons", "--fingerprint"]).stdout
        if pinned not in _primary_fingerprints(listing):
            raise SignatureError(f"{what}: the key file {key_file.name} does not hold the pinned key {pinned}; "
                                 "refusing it")
        checked = _run(base + ["--status-fd", "1", "--verify", str(signature), str(data)])
        status = checked.stdout.splitlines()
        valid = [line.split() for line in status if line.startswith("[GNUPG:] VALIDSIG ")]
        if checked.returncode != 0 or not any(fields[-1] == pinned for fields in valid):
            reason = "bad signature" if any(" BADSIG " in line for line in status) else \
                "no good signature by the pinned key" if valid else _last(checked.stderr) or "no valid signature"
            raise SignatureError(f"{what}: signature check failed ({reason}); the file is not the one AWS published")


def _primary_fingerprints(colons: str) -> set[str]:
    """Fingerprints of primary keys in ``gpg --with-colons --fingerprint`` output: the ``fpr``
    record that follows a ``pub`` record (subkeys follow ``sub``)."""
    out, after_pub = set(), False
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            after_pub = True
        elif fields[0] == "fpr" and after_pub and len(fields) > 9:
            out.add(fields[9])
            after_pub = False
        elif fields[0] in ("sub", "uid"):
            after_pub = False
    return out


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _last(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
