"""The EFA installer: its newest published version, and a new version's SHA256 taken only from a
tarball whose GPG signature verifies against AWS's key, pinned here by fingerprint.

Facts (AWS EC2 user guide, "Get started with EFA" and "Get started with EFA and NCCL", step
"Install the EFA software"; awsdocs/amazon-ec2-user-guide doc_source/efa-start.md, and the same
steps in the 2026 pages that name installer 1.49.0 and 1.50.0):
- tarballs are ``https://efa-installer.amazonaws.com/aws-efa-installer-<version>.tar.gz``, and
  "you can also get the latest version by replacing the version number with ``latest``";
- each has a detached signature at the same URL plus ``.sig``; the public key is
  ``https://efa-installer.amazonaws.com/aws-efa-installer.key``, whose fingerprint must be
  ``4E90 91BC BB97 A96B 26B1 5E59 A054 80B1 DD2D 3CCC`` ("If the fingerprint does not match, don't
  run the EFA installation script").
AWS publishes no machine-readable version list, so the newest version is found without guessing
blindly: from the newest version known (the matrix's and builder.facts' checksum table), the next
patch, minor and major versions are asked with HEAD requests until none exists; the ``latest``
tarball's ETag and size are then compared with the version found, and a mismatch is reported
(a release that skipped a number).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from packaging.version import Version

from builder.outdated.gpg import verify_detached
from builder.outdated.web import SourceError, Web

EFA_URL_TEMPLATE = "https://efa-installer.amazonaws.com/aws-efa-installer-{version}.tar.gz"
# AWS's EFA installer signing key ("Amazon EC2 EFA <ec2-efa-maintainers@amazon.com>"), by the
# fingerprint the EC2 user guide publishes (efa-start.md, "Verify the GPG key's fingerprint").
EFA_GPG_FINGERPRINT = "4E90 91BC BB97 A96B 26B1 5E59 A054 80B1 DD2D 3CCC"
KEY_FILE = "aws-efa-installer.key"
MAX_PROBES = 60
MAX_TARBALL_BYTES = 4 * 2**30


@dataclass(frozen=True)
class EfaRelease:
    newest: str
    found: tuple[str, ...]  # every version found above the starting point, oldest first
    note: str | None = None  # the latest tarball disagreed, or could not be compared


def tarball_url(template: str, version: str) -> str:
    return template.replace("{version}", version)


def key_url(template: str) -> str:
    return template.rsplit("/", 1)[0] + "/" + KEY_FILE


def _exists(web: Web, url: str) -> tuple[bool, str | None]:
    answer = web.head(url, "EFA installer")
    answer.close()
    if answer.status_code == 200:
        return True, _identity(answer)
    if answer.status_code in (403, 404):  # S3 answers 403 for a missing key without list rights
        return False, None
    raise SourceError(f"EFA installer: {url} answered HTTP {answer.status_code}")


def _identity(answer) -> str | None:
    etag, size = answer.headers.get("ETag"), answer.headers.get("Content-Length")
    return f"{etag}/{size}" if etag and size else None


def newest(web: Web, template: str, known: Iterable[str]) -> EfaRelease:
    """The newest EFA installer published at ``template``, probing upward from ``known``."""
    versions = sorted({Version(v) for v in known})
    if not versions:
        raise SourceError("EFA installer: no known version to start from")
    current, found, identity = versions[-1], [], None
    for _ in range(MAX_PROBES):
        major, minor, patch = (list(current.release) + [0, 0])[:3]
        for candidate in (f"{major}.{minor}.{patch + 1}", f"{major}.{minor + 1}.0", f"{major + 1}.0.0"):
            exists, ident = _exists(web, tarball_url(template, candidate))
            if exists:
                current, identity = Version(candidate), ident
                found.append(candidate)
                break
        else:
            break
    else:
        raise SourceError(f"EFA installer: more than {MAX_PROBES} new versions; refusing to go on")
    newest_text = str(current) if found else str(versions[-1])
    if not found:
        _, identity = _exists(web, tarball_url(template, newest_text))
    return EfaRelease(newest_text, tuple(found), _compare_latest(web, template, newest_text, identity))


def _compare_latest(web: Web, template: str, version: str, identity: str | None) -> str | None:
    exists, latest = _exists(web, tarball_url(template, "latest"))
    if not exists:
        return "the 'latest' tarball is not published there; the probe's answer stands alone"
    if identity and latest and identity != latest:
        return (f"the 'latest' tarball differs from {version} (ETag/size); AWS may have skipped a version "
                "number: check the EFA changelog")
    return None


@dataclass(frozen=True)
class VerifiedTarball:
    version: str
    sha256: str
    size: int


def verify_and_hash(web: Web, template: str, version: str, fingerprint: str | None = None) -> VerifiedTarball:
    """Download the tarball, its .sig and AWS's key; verify the signature against the pinned
    fingerprint; return the tarball's SHA256. Nothing is kept on disk."""
    url = tarball_url(template, version)
    with tempfile.TemporaryDirectory(prefix="builder-efa-") as work:
        folder = Path(work)
        tarball, size, digest = _download(web, url, folder / f"aws-efa-installer-{version}.tar.gz", MAX_TARBALL_BYTES)
        signature, _, _ = _download(web, url + ".sig", folder / f"aws-efa-installer-{version}.tar.gz.sig", 2**20)
        key, _, _ = _download(web, key_url(template), folder / KEY_FILE, 2**20)
        verify_detached(tarball, signature, key, fingerprint or EFA_GPG_FINGERPRINT, f"EFA installer {version} ({url})")
        return VerifiedTarball(version, digest, size)


def _download(web: Web, url: str, path: Path, limit: int) -> tuple[Path, int, str]:
    answer = web.get(url, "EFA installer", stream=True)
    try:
        if answer.status_code != 200:
            raise SourceError(f"EFA installer: {url} answered HTTP {answer.status_code}")
        digest, size = hashlib.sha256(), 0
        with open(path, "wb") as out:
            for chunk in answer.iter_content(1024 * 1024):
                size += len(chunk)
                if size > limit:
                    raise SourceError(f"EFA installer: {url} is larger than {limit} bytes; refusing it")
                digest.update(chunk)
                out.write(chunk)
        return path, size, digest.hexdigest()
    except OSError as exc:
        raise SourceError(f"EFA installer: cannot write {path.name}: {exc.strerror}") from None
    finally:
        answer.close()
