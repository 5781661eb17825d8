"""From what upstream has to findings per image: the newest release, what moving to it implies
(plugin era, checksum, what a new base ships against a pin), and whether the matrix's rules
accept it (each bump tried as an edit and re-validated, see builder.outdated.plan)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

from packaging.version import Version

from builder import components as comp
from builder import facts
from builder.outdated import versions as vers
from builder.outdated.families import family_of
from builder.outdated.plan import MatrixDocument, Outcome
from builder.outdated.upstream import Survey


@dataclass
class Finding:
    image: str
    subject: str  # a component, or "base"
    current: str
    newest: str
    newer: int  # releases between current (excluded) and newest (included)
    verdict: str  # valid | unverified | base-only | refused | kept
    notes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"image": self.image, "subject": self.subject, "current": self.current, "newest": self.newest,
                "newer": self.newer, "verdict": self.verdict, "implications": self.notes, "reasons": self.reasons}


@dataclass
class Result:
    findings: list[Finding] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.accepted]


def analyse(document: MatrixDocument, specs, survey: Survey, checksums: Mapping[str, str],
            verified: Mapping[str, str | Exception]) -> Result:
    """Try every bump on ``document`` (edits kept in memory when valid) and describe each.

    ``checksums``: SHA256 already known per EFA version (facts and the matrix); ``verified``: per
    new EFA version, the SHA256 of a tarball whose signature verified, or why it did not (only
    when writing: a report does not download)."""
    result = Result()
    names = {s.name for s in specs}
    by_name = {s.name: s for s in specs}
    for component, source in sorted(survey.components.items()):
        if source.error:
            continue
        for current in sorted({s.components[component] for s in specs if s.components.get(component)}, key=_safe_key):
            newer = vers.newer(current, source.releases)
            if newer:
                _component(result, document, component, current, newer, by_name, names, checksums, verified)
    edits = _base_edits(document, survey)
    for key, source in sorted(survey.bases.items()):
        if source.error or not source.tags:
            continue
        _base(result, key, source, edits, by_name, names)
    return result


def _component(result, document, component, current, newer, by_name, names, checksums, verified) -> None:
    newest = newer[-1]
    checksum, blocked = None, None
    if component == "efa" and newest not in checksums and newest in verified:
        found = verified[newest]
        checksum, blocked = (found, None) if isinstance(found, str) else (None, str(found))
    users = sorted(n for n, s in by_name.items() if s.components.get(component) == current)
    seen: set[str] = set()
    for edit in document.component_edits(component, current, newest, checksum):
        if blocked:
            outcome = Outcome(edit, False, document.touched(edit), (blocked,))
        else:
            outcome = document.attempt(edit)
        result.outcomes.append(outcome)
        for image in document.touched(edit):
            spec = by_name.get(image)
            if image not in names or image in seen or spec is None:
                continue
            seen.add(image)
            verdict = "valid" if outcome.accepted else "refused"
            if outcome.accepted and component == "efa" and newest not in checksums and not checksum:
                verdict = "unverified"
            result.findings.append(Finding(image, component, current, newest, len(newer), verdict,
                                           _notes(component, current, newest, spec, checksums, checksum),
                                           list(outcome.problems)))
    for image in users:
        if image not in seen:
            result.findings.append(Finding(image, component, current, newest, len(newer), "kept",
                                           ["an older value of an axis: the axis's newest value is the one bumped"]))


def _base_edits(document, survey: Survey) -> dict[str, tuple]:
    """One edit per new tag: made beside the base of that repository whose tag is newest (the
    others of its family see the same outcome). A new base the rules refuse on its axes is
    tried again alone (a base no image uses yet, for a person to wire up)."""
    leaders: dict[tuple[str, str], str] = {}
    for key, source in survey.bases.items():
        if source.error or not source.tags:
            continue
        group = (source.where.rsplit(":", 1)[0], source.tags[-1])
        other = leaders.get(group)
        if other is None or family_of(_tag(source.where)).match(_tag(source.where)) > \
                family_of(_tag(survey.bases[other].where)).match(_tag(survey.bases[other].where)):
            leaders[group] = key
    out = {}
    for (_, newest), key in sorted(leaders.items(), key=lambda item: item[1]):
        edit = document.base_edit(key, newest, survey.bases[key].ships)
        if edit is None:
            out[newest] = (None, None, None)
            continue
        outcome = document.attempt(edit)
        result_alone = None
        if not outcome.accepted and edit.axes:
            alone = replace(edit, axes=())
            result_alone = document.attempt(alone)
        out[newest] = (edit, outcome, result_alone)
    return out


def _base(result, key, source, edits, by_name, names) -> None:
    newest = source.tags[-1]
    edit, outcome, alone = edits.get(newest, (None, None, None))
    for o in (outcome, alone):
        if o is not None and o not in result.outcomes:
            result.outcomes.append(o)
    ships = ", ".join(f"{k} {v}" for k, v in sorted(source.ships.items()))
    for image, spec in sorted(by_name.items()):
        if spec.base.key != key or image not in names:
            continue
        notes = [f"ships {ships} (its image environment)" if ships else
                 "what it ships could not be read from its configuration; fill in ships by hand"]
        pin, shipped = spec.components.get("nccl"), source.ships.get("nccl")
        if pin and shipped and _safe_key(shipped) > _safe_key(pin):
            notes.append(f"ships NCCL {shipped}, newer than this image's pin {pin} (rule nccl-older-than-base "
                         "refuses the pin on the new base)")
        reasons: list[str] = []
        if edit is None:
            notes.append("a base with this tag is in the matrix already")
            verdict = "kept"
        elif outcome.accepted:
            joined = [n for n in outcome.images if n not in by_name]
            notes.append(f"new base {edit.subject}" + (f"; new images {', '.join(joined)}" if joined else
                                                       "; this image keeps its own base (not an axis)"))
            verdict = "valid"
        elif alone is not None and alone.accepted:
            notes.append(f"new base {edit.subject}, not joined to the axes that list {edit.base['from']}: "
                         "the rules refuse the images it would make")
            verdict, reasons = "base-only", list(outcome.problems)
        else:
            verdict, reasons = "refused", list((alone or outcome).problems)
        result.findings.append(Finding(image, "base", spec.base.tag, newest, len(source.tags), verdict, notes, reasons))


def _tag(ref: str) -> str:
    return ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"


def _notes(component, current, newest, spec, checksums, checksum) -> list[str]:
    """What moving from ``current`` to ``newest`` implies, from builder's facts."""
    notes = []
    if component == "efa":
        old, new = Version(current), Version(newest)
        if old < facts.EFA_BUNDLES_OFI <= new:
            notes.append(f"new plugin era: EFA >= {facts.EFA_BUNDLES_OFI} bundles aws-ofi-nccl; "
                         "a source-built aws-ofi-nccl must go (rule ofi-bundled)")
        if old < facts.EFA_OFI_FLAT_LAYOUT <= new:
            notes.append(f"the bundled plugin moves to {comp.ofi_plugin(newest).net_lib}")
        bundled = comp.bundled_ofi_version(newest)
        if comp.efa_bundles_ofi(newest):
            notes.append(f"bundles aws-ofi-nccl {bundled}" if bundled else
                         "bundled aws-ofi-nccl version: not in builder's facts (see the EFA changelog)")
        if newest in checksums:
            notes.append("SHA256 published (builder facts or matrix checksums)")
        elif checksum:
            notes.append(f"SHA256 {checksum} of the tarball whose GPG signature verified")
        else:
            notes.append("no SHA256 known: --write verifies the tarball's GPG signature, then pins its SHA256")
    elif component == "nccl":
        shipped = spec.base.ships.get("nccl")
        if shipped and _safe_key(newest) > _safe_key(shipped):
            notes.append(f"newer than the base's NCCL {shipped} (the pin replaces it)")
    elif component == "aws_ofi_nccl":
        if comp.ofi_git_tag(current).endswith("-aws") and not comp.ofi_git_tag(newest).endswith("-aws"):
            notes.append(f"git tag form changes to {comp.ofi_git_tag(newest)} (derived)")
        if spec.components.get("efa") and comp.efa_bundles_ofi(spec.components["efa"]):
            notes.append("this image's EFA installer bundles its own aws-ofi-nccl")
    if component in vers.PYPI_COMPONENTS and Version(newest).major > Version(current).major:
        notes.append(f"a new major version ({Version(current).major} -> {Version(newest).major}): read its release notes")
    return notes


def _safe_key(value: str):
    try:
        return vers.key(value)
    except ValueError:
        return (Version("0"), 0)
