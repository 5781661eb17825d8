"""The findings for people (a table per image, one line per finding) and for CI (JSON)."""

from __future__ import annotations

from builder.outdated.bumps import Result
from builder.outdated.upstream import Survey

VERDICTS = {
    "valid": "the rules accept it",
    "unverified": "the rules accept it; SHA256 not yet verified",
    "base-only": "added as a base, not joined to the axes",
    "refused": "refused",
    "kept": "kept",
}


def source_lines(survey: Survey) -> list[str]:
    lines = []
    for source in (*survey.components.values(), *survey.bases.values()):
        if source.error:
            lines.append(f"{source.subject}: not asked: {source.error}")
        elif source.note:
            lines.append(f"{source.subject}: {source.note}")
    return lines


def table(result: Result, survey: Survey, written: bool = False) -> str:
    """Per image, one line per finding: subject, current -> newest, verdict, implications."""
    out: list[str] = []
    by_image: dict[str, list] = {}
    for finding in result.findings:
        by_image.setdefault(finding.image, []).append(finding)
    width = max((len(f.subject) for f in result.findings), default=4)
    for image in sorted(by_image):
        out.append(image)
        for f in sorted(by_image[image], key=lambda f: f.subject):
            verdict = VERDICTS[f.verdict]
            if written and f.verdict in ("valid", "base-only"):
                verdict = "written"
            line = f"  {f.subject:<{width}}  {f.current} -> {f.newest} ({f.newer} newer): {verdict}"
            reasons = f.reasons[:2] + ([f"(+{len(f.reasons) - 2} more with --json)"] if len(f.reasons) > 2 else [])
            details = [*f.notes, *reasons]
            out.append(line + ("; " + "; ".join(details) if details else ""))
    problems = source_lines(survey)
    if problems:
        out.append("sources")
        out += [f"  {line}" for line in problems]
    if not result.findings:
        out.append("everything is at upstream's newest release" + (" (of the sources asked)" if problems else ""))
    return "\n".join(out) + "\n"


def document(result: Result, survey: Survey, written: bool, matrix: str) -> dict:
    return {
        "matrix": matrix,
        "written": written,
        "sources": [{"subject": s.subject, "asked": s.where, "error": s.error, "note": s.note,
                     **({"family": s.family, "newer_tags": s.tags, "ships": s.ships} if s.family else {})}
                    for s in (*survey.components.values(), *survey.bases.values())],
        "findings": [f.to_dict() for f in result.findings],
        "edits": [{"kind": o.edit.kind, "subject": o.edit.subject, "old": o.edit.old, "new": o.edit.new,
                   "where": o.edit.where, "accepted": o.accepted, "images": list(o.images), "problems": list(o.problems)}
                  for o in result.outcomes],
    }

