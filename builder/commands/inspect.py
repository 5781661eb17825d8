"""`builder list`, `validate`, `explain`, `diff`: read the matrix without writing anything."""

from __future__ import annotations

import difflib
import json

import click

from builder import components as comp
from builder import rules, sagemaker_local
from builder.matrix import COMPONENTS, ImageSpec
from builder.render import Renderer


def spec_summary(spec: ImageSpec) -> dict:
    """The machine-readable view of one image (list --json, and other verbs' JSON)."""
    ofi = spec.ofi
    return {
        "name": spec.name,
        "flavor": spec.flavor,
        "base": spec.base_image,
        "repository": spec.repository,
        "tags": list(spec.tags),
        "refs": list(spec.refs),
        "versions": dict(spec.versions),
        "stanzas": list(spec.stanzas),
        "ofi_plugin": ofi.net_lib if ofi and spec.flavor != "dlc" else None,
        "region": spec.region,
        "origin": spec.origin,
    }


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_cmd(state, as_json):
    """List the images of the matrix (after axes are expanded).

    Exit codes: 0 listed; 2 the matrix is invalid (every problem, one line each).
    """
    matrix = state.matrix()
    if as_json:
        click.echo(json.dumps([spec_summary(s) for s in matrix.images], indent=2))
        return
    rows = [(s.name, s.flavor, s.base.key, ", ".join(f"{k} {v}" for k, v in s.versions.items()
                                                    if k in ("pytorch", "cuda", "nccl", "efa", "aws_ofi_nccl")))
            for s in matrix.images]
    widths = [max(len(r[i]) for r in rows + [("NAME", "FLAVOR", "BASE", "")]) for i in range(3)]
    click.echo(f"{'NAME':<{widths[0]}}  {'FLAVOR':<{widths[1]}}  {'BASE':<{widths[2]}}  KEY VERSIONS")
    for row in rows:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    flavors = sorted({s.flavor for s in matrix.images})
    click.echo(f"{len(rows)} images, flavors: {', '.join(flavors)}", err=True)


@click.command("validate")
@click.pass_obj
def validate_cmd(state):
    """Check the matrix: every value and compatibility rule.

    Exit codes: 0 valid (warnings are printed and allowed); 2 invalid, listing every problem,
    one line each naming file, line, image and key.
    """
    matrix = state.matrix()
    click.echo(f"{state.matrix_path}: {len(matrix.images)} images valid"
               + (f", {len(matrix.warnings)} warnings" if matrix.warnings else ""))


@click.command("explain")
@click.argument("name")
@click.pass_obj
def explain_cmd(state, name):
    """Show each stanza and version of an image and the rule or default that chose it.

    Exit codes: 0 shown; 2 unknown image (with a did-you-mean) or an invalid matrix.
    """
    matrix = state.matrix()
    spec = matrix.get(name)
    catalog = matrix.catalog
    prov = spec.provenance
    click.echo(f"{spec.name}  ({spec.flavor}; entry at {spec.origin})")
    click.echo(f"  base       {spec.base_image}  <- base '{spec.base.key}' ({prov.get('base', 'entry')})")
    click.echo(f"  image      {', '.join(spec.refs)}")
    click.echo("versions:")
    for key, value in spec.versions.items():
        if key in spec.components:
            source = prov.get(f"components.{key}", "entry")
        else:
            source = f"shipped by base {spec.base.key}"
        shown = value if COMPONENTS.get(key) != "url" else value.rsplit("/", 1)[1]
        click.echo(f"  {key:<27}{shown:<22}<- {source}")
    for line in _derived(spec):
        click.echo(f"  {line}")
    if sagemaker_local.supports_contract(spec, catalog):
        click.echo(f"sagemaker job runs: {sagemaker_local.program_summary(spec)}")
    click.echo("stanzas (build order):")
    flavor_stanzas = catalog.flavors[spec.flavor].stanzas
    for name_ in flavor_stanzas:
        meta = catalog.stanzas[name_]
        on = name_ in spec.stanzas
        why = _stanza_reason(spec, meta, prov)
        click.echo(f"  [{'x' if on else ' '}] {name_:<20}{why}")
    click.echo("rules checked:")
    for rule_id, description, _ in rules.RULES:
        click.echo(f"  {rule_id:<22}{description}")
    waived = dict(spec.waivers)
    for key, reason in waived.items():
        click.echo(f"  waived {key}: {reason}")


def _derived(spec: ImageSpec) -> list[str]:
    out = []
    v = spec.versions
    if "nccl" in spec.components:
        out.append(f"{'nccl git tag':<27}{comp.nccl_git_tag(v['nccl']):<22}<- derived from nccl {v['nccl']}")
    if "aws_ofi_nccl" in spec.components:
        out.append(f"{'aws-ofi-nccl git tag':<27}{comp.ofi_git_tag(v['aws_ofi_nccl']):<22}"
                   f"<- derived: -aws suffix up to 1.13.x")
    ofi = spec.ofi
    if ofi and spec.flavor != "dlc":
        how = (f"bundled by EFA installer {v['efa']}" if ofi.bundled else "built from source (EFA < 1.38)")
        out.append(f"{'nccl net plugin':<27}{ofi.net_lib}  <- {how}")
    return out


def _stanza_reason(spec: ImageSpec, meta, prov) -> str:
    switch = prov.get(f"stanzas.{meta.name}")
    if switch:
        return f"switched {'on' if meta.name in spec.stanzas else 'off'} by {switch}"
    if meta.name in spec.stanzas:
        return f"on: {'needs ' + ', '.join(meta.needs) + ' (set)' if meta.needs else 'always in this flavor'}"
    if meta.optional:
        return "off: optional, not switched on"
    missing = [n for n in meta.needs if n not in spec.components and not (n == "code" and spec.code) and not (n == "pip" and spec.pip)]
    return f"off: needs {', '.join(missing)}" if missing else "off"


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.pass_obj
def diff_cmd(state, a, b):
    """Compare two images: a component table, then the diff of their Dockerfiles.

    Exit codes: 0 compared; 2 unknown image or an invalid matrix.
    """
    matrix = state.matrix()
    sa, sb = matrix.get(a), matrix.get(b)
    keys = sorted(set(sa.versions) | set(sb.versions))
    rows = [("component", a, b)] + [(k, _short(sa.versions.get(k, "-")), _short(sb.versions.get(k, "-"))) for k in keys]
    rows.insert(1, ("base", sa.base.key, sb.base.key))
    rows.insert(2, ("flavor", sa.flavor, sb.flavor))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for key, va, vb in rows:
        mark = " " if va == vb else "*"
        click.echo(f"{mark} {key:<{w0}}  {va:<{w1}}  {vb}")
    renderer = Renderer()
    da, db = renderer.render(sa).dockerfile, renderer.render(sb).dockerfile
    click.echo()
    for line in difflib.unified_diff(da.splitlines(), db.splitlines(), f"images/{a}/Dockerfile",
                                     f"images/{b}/Dockerfile", lineterm=""):
        click.echo(line)


def _short(value: str) -> str:
    return value.rsplit("/", 1)[1] if value.startswith("http") else value


@click.command("stanzas")
@click.option("--flavor", type=click.Choice(["dlc", "source", "nvidia"]), help="Only this flavor's stanzas, in build order.")
@click.pass_obj
def stanzas_cmd(state, flavor):
    """List the stanza catalogue: what each does, what it needs, which checks prove it.

    Exit codes: 0 listed; 2 bad option.
    """
    from builder.stanzas import load_catalog

    catalog = load_catalog()
    names = catalog.flavors[flavor].stanzas if flavor else sorted(catalog.stanzas)
    for name in names:
        meta = catalog.stanzas[name]
        flavors = [f for f, fl in sorted(catalog.flavors.items()) if name in fl.stanzas]
        extra = []
        if meta.needs:
            extra.append("needs " + ", ".join(meta.needs))
        if meta.optional:
            extra.append("optional")
        extra.append(f"{len(meta.checks)} checks")
        extra.append("flavors " + ",".join(flavors))
        click.echo(f"{name:<20}{meta.summary}")
        click.echo(f"{'':<20}({'; '.join(extra)})")


def register(cli: click.Group) -> None:
    for command in (list_cmd, validate_cmd, explain_cmd, diff_cmd, stanzas_cmd):
        cli.add_command(command)
