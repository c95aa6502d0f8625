"""Every example on the docs pages does what its page says.

Each YAML block on ``docs/policies/*.md`` and ``docs/resources/*.md`` is followed by an HTML comment that says
what the example is and what it does; a block without one fails :func:`test_every_example_is_described`:

``<!-- expect: LINE -->`` or ``<!-- expect:`` newline, one LINE per line, ``-->``
    The block's resources are applied into a small mesh (:data:`BASE`, mTLS on; a Mesh block replaces its Mesh,
    a Dataplane block adds or replaces a Dataplane), every proxy's IR is built and translated, and each LINE is
    checked. A LINE is ``PROXY PATH OP LITERAL``, or ``with: Kind/name, ...`` to apply other documented
    examples too (for precedence and attachment examples).
``<!-- example: refused field=FIELD -->``
    The block shows a refusal: parsing it fails with an error naming FIELD.
``<!-- example: fragment -->``
    A partial snippet, not a resource.

PATH walks the proxy's IR (:class:`isthmus.ir.model.ProxyIR`), or its xDS when it starts with ``xds.`` (e.g.
``xds.clusters[backend].connect_timeout``, protobuf JSON with proto field names). Steps are ``.field`` and
``[selector]``: an integer index, ``key=value`` (the element whose ``key`` path equals ``value``), or a name (the
element whose ``name``, else ``service``, else ``cluster_name``, else ``cluster`` equals it; key/value pairs are looked up by key).
``len(PATH)`` is the length. (YAML 1.1: quote ``"off"``, ``"yes"``, ``"on"``, ``"no"`` to compare strings.) The special PATH ``admitted`` says whether the mesh's ``constraints`` admit the
proxy's Dataplane. OP is ``==``, ``!=``, ``contains``, ``allows`` or ``denies`` (a permission expression evaluated
for a client with the URI SAN(s) of LITERAL). LITERAL is a YAML scalar or flow collection. Nothing is evaluated
as Python.

Blocks on other pages (the guides) are applied and translated without expectations.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import Principal, ProxyIR
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.mesh import MeshSpec
from isthmus.resources.registry import load_documents, parse_document
from isthmus.xds import types
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CERTS = ROOT / "tests" / "golden" / "certs"
DESCRIBED = ("policies", "resources")
BLOCK = re.compile(r"```ya?ml\n(.*?)```[ \t]*\n(?:[ \t]*\n)*(<!--(.*?)-->)?", re.S)
REG = default_registry()

# The mesh the examples are applied to: web calls backend (v1, v2), db (v1, v2) and api; legacy, demo-client
# and test-server serve the MeshTLS and membership examples.
BASE = """
type: Mesh
name: {mesh}
mtls:
  enabledBackend: ca-1
  backends: [{{name: ca-1, type: builtin}}]
---
type: Dataplane
mesh: {mesh}
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {{port: 20001, servicePort: 8001, tags: {{kuma.io/service: web, kuma.io/protocol: http, version: v1}}}}
  outbound:
  - {{port: 10001, tags: {{kuma.io/service: backend}}}}
  - {{port: 10002, tags: {{kuma.io/service: db}}}}
  - {{port: 10003, tags: {{kuma.io/service: api}}}}
---
type: Dataplane
mesh: {mesh}
name: backend-1
networking:
  address: 127.0.0.2
  inbound:
  - {{port: 20002, servicePort: 8002, tags: {{kuma.io/service: backend, kuma.io/protocol: http, version: v1}}}}
---
type: Dataplane
mesh: {mesh}
name: backend-2
networking:
  address: 127.0.0.3
  inbound:
  - {{port: 20002, servicePort: 8002, tags: {{kuma.io/service: backend, kuma.io/protocol: http, version: v2}}}}
---
type: Dataplane
mesh: {mesh}
name: db-1
networking:
  address: 127.0.0.4
  inbound:
  - {{port: 20003, servicePort: 5432, tags: {{kuma.io/service: db, kuma.io/protocol: tcp, version: v1}}}}
---
type: Dataplane
mesh: {mesh}
name: db-2
networking:
  address: 127.0.0.5
  inbound:
  - {{port: 20003, servicePort: 5432, tags: {{kuma.io/service: db, kuma.io/protocol: tcp, version: v2}}}}
---
type: Dataplane
mesh: {mesh}
name: api-1
networking:
  address: 127.0.0.6
  inbound:
  - {{port: 22001, servicePort: 9001, tags: {{kuma.io/service: api, kuma.io/protocol: http}}}}
  - {{port: 22002, servicePort: 9002, tags: {{kuma.io/service: api, kuma.io/protocol: http}}}}
---
type: Dataplane
mesh: {mesh}
name: legacy-1
networking:
  address: 127.0.0.7
  inbound:
  - {{port: 20004, servicePort: 8004, tags: {{kuma.io/service: legacy, kuma.io/protocol: http}}}}
---
type: Dataplane
mesh: {mesh}
name: demo-client-1
networking:
  address: 127.0.0.8
  inbound:
  - {{port: 20005, servicePort: 8005, tags: {{kuma.io/service: demo-client}}}}
---
type: Dataplane
mesh: {mesh}
name: test-server-1
networking:
  address: 127.0.0.9
  inbound:
  - {{port: 20006, servicePort: 8006, tags: {{kuma.io/service: test-server}}}}
"""


@dataclasses.dataclass(frozen=True)
class Example:
    where: str  # "policies/meshtimeout.md#0 (line 6)"
    page: str
    block: str
    comment: str | None  # the text of the HTML comment right after the block, if any


def _examples(pages: Iterator[Path]) -> list[Example]:
    out = []
    for page in sorted(pages):
        text = page.read_text()
        for i, m in enumerate(BLOCK.finditer(text)):
            line = text.count("\n", 0, m.start()) + 1
            rel = str(page.relative_to(DOCS))
            out.append(Example(f"{rel}#{i} (line {line})", rel, m.group(1), m.group(3)))
    return out


DESCRIBED_EXAMPLES = _examples(p for d in DESCRIBED for p in (DOCS / d).glob("*.md"))
OTHER_EXAMPLES = [
    e
    for e in _examples(p for p in DOCS.rglob("*.md") if p.parent.name not in DESCRIBED)
    if re.search(r"^type: ", e.block, re.M)
]


def _by_name() -> dict[str, list[str]]:
    """``Kind/name`` -> the YAML of the documents of that name on the described pages (for ``with:``)."""
    out: dict[str, list[str]] = {}
    for ex in DESCRIBED_EXAMPLES:
        for doc in load_documents(ex.block):
            if isinstance(doc, dict) and "type" in doc and "name" in doc:
                out.setdefault(f"{doc['type']}/{doc['name']}", []).append(yaml.safe_dump(doc))
    return out


# -- the expectation language ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Check:
    proxy: str
    path: str
    op: str
    literal: Any
    text: str


@dataclasses.dataclass(frozen=True)
class Expectation:
    kind: str  # "expect" | "refused" | "fragment"
    checks: tuple[Check, ...] = ()
    with_: tuple[str, ...] = ()
    field: str = ""


LINE = re.compile(r"^(?P<proxy>\S+)\s+(?P<path>\S+)\s+(?P<op>==|!=|contains|allows|denies)\s+(?P<lit>.+)$")


def parse_expectation(comment: str | None) -> Expectation:
    if comment is None:
        raise ValueError("no <!-- expect: ... --> or <!-- example: ... --> comment right after the block")
    text = comment.strip()
    if text.startswith("example:"):
        words = text.removeprefix("example:").split()
        if words == ["fragment"]:
            return Expectation("fragment")
        if len(words) == 2 and words[0] == "refused" and words[1].startswith("field="):
            return Expectation("refused", field=words[1].removeprefix("field="))
        raise ValueError(f"unknown example marker: {text!r}")
    if not text.startswith("expect:"):
        raise ValueError(f"the comment after the block is neither expect: nor example: ({text[:40]!r})")
    checks: list[Check] = []
    with_: list[str] = []
    for raw in text.removeprefix("expect:").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("with:"):
            with_.extend(w.strip() for w in line.removeprefix("with:").split(",") if w.strip())
            continue
        m = LINE.match(line)
        if m is None:
            raise ValueError(f"not PROXY PATH OP LITERAL: {line!r}")
        checks.append(Check(m["proxy"], m["path"], m["op"], yaml.safe_load(m["lit"]), line))
    if not checks:
        raise ValueError("expect: with no checks")
    return Expectation("expect", tuple(checks), tuple(with_))


STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[([^\]]+)\]")


def _steps(path: str) -> list[tuple[str, str]]:
    steps: list[tuple[str, str]] = []
    pos = 0
    path = "." + path if not path.startswith("[") else path
    while pos < len(path):
        m = STEP.match(path, pos)
        if m is None:
            raise ValueError(f"bad path {path[1:]!r} at {path[pos:]!r}")
        steps.append(("attr", m[1]) if m[1] is not None else ("sel", m[2]))
        pos = m.end()
    return steps


def _attr(node: Any, name: str) -> Any:
    if isinstance(node, dict):
        if name not in node:
            raise LookupError(f"no key {name!r} (keys: {sorted(node)})")
        return node[name]
    if dataclasses.is_dataclass(node):
        if not hasattr(node, name):
            raise LookupError(f"{type(node).__name__} has no field {name!r}")
        return getattr(node, name)
    if _is_pairs(node):
        return _select(node, name)
    raise LookupError(f"cannot take .{name} of {type(node).__name__}")


def _is_pairs(node: Any) -> bool:
    return isinstance(node, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in node) and bool(node)


def _select(node: Any, sel: str) -> Any:
    if isinstance(node, dict):
        return _attr(node, sel)
    if not isinstance(node, (list, tuple)):
        raise LookupError(f"cannot select [{sel}] in {type(node).__name__}")
    if re.fullmatch(r"-?\d+", sel):
        return node[int(sel)]
    if _is_pairs(node):
        found = [v for k, v in node if k == sel]
        if len(found) != 1:
            raise LookupError(f"no key {sel!r} in {node!r}")
        return found[0]
    if "=" in sel:
        key, value = sel.split("=", 1)
        hits = [e for e in node if _plain(_try(e, key)) == _plain(yaml.safe_load(value))]
    else:
        hits = []
        for key in ("name", "service", "cluster_name", "cluster"):
            hits = [e for e in node if _plain(_try(e, key)) == sel]
            if hits:
                break
    if len(hits) != 1:
        raise LookupError(f"[{sel}] selects {len(hits)} elements")
    return hits[0]


def _try(node: Any, path: str) -> Any:
    try:
        return resolve(node, path)
    except (LookupError, IndexError):
        return None


def resolve(root: Any, path: str) -> Any:
    node = root
    for kind, step in _steps(path):
        node = _attr(node, step) if kind == "attr" else _select(node, step)
    return node


def _plain(value: Any) -> Any:
    """IR values as YAML literals read: enums by value, tuples as lists, dataclasses as dicts."""
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class UnexpectedOutcome(Exception):
    """A check failed that was expected to pass, or a known-failing one passed (never excused by xfail)."""


@dataclasses.dataclass
class Applied:
    irs: dict[str, ProxyIR]
    xds: dict[str, dict[str, Any]]
    admitted: dict[str, bool]


XDS_NAMES = {
    "clusters": types.CLUSTER,
    "endpoints": types.ENDPOINT,
    "listeners": types.LISTENER,
    "routes": types.ROUTE,
    "secrets": types.SECRET,
}


def evaluate(check: Check, applied: Applied) -> None:
    if check.path == "admitted":
        actual: Any = applied.admitted[check.proxy]
    else:
        if check.proxy not in applied.irs:
            raise AssertionError(f"{check.text}: no proxy {check.proxy!r} (have {sorted(applied.irs)})")
        if check.path.startswith("len(") and check.path.endswith(")"):
            actual = len(_path_value(check.path[4:-1], check.proxy, applied))
        else:
            actual = _path_value(check.path, check.proxy, applied)
    if check.op in ("allows", "denies"):
        assert isinstance(actual, Principal), f"{check.text}: {check.path} is not a permission expression"
        uris = {check.literal} if isinstance(check.literal, str) else set(check.literal)
        assert actual.matches(uris) is (check.op == "allows"), f"{check.text}: {actual!r}"
        return
    plain = _plain(actual)
    if check.op == "==":
        assert plain == check.literal, f"{check.text}: actual {plain!r}"
    elif check.op == "!=":
        assert plain != check.literal, f"{check.text}: actual {plain!r}"
    else:
        assert check.literal in plain, f"{check.text}: actual {plain!r}"


def _path_value(path: str, proxy: str, applied: Applied) -> Any:
    if path.startswith("xds."):
        return resolve(applied.xds[proxy], path.removeprefix("xds."))
    return resolve(applied.irs[proxy], path)


# -- applying examples -----------------------------------------------------------------------------------------
def apply(block: str, extra: list[str]) -> Applied:
    docs = [parse_document(d, REG) for text in [*extra, block] for d in load_documents(text)]
    meshes = [r for r in docs if r.type.kind == "Mesh"]
    mesh_name = meshes[-1].name if meshes else "default"
    base = [parse_document(d, REG) for d in load_documents(BASE.format(mesh=mesh_name))]
    mesh = meshes[-1] if meshes else base[0]
    mesh_spec = mesh.spec
    assert isinstance(mesh_spec, MeshSpec)
    dataplanes = {r.name: r for r in base if r.type.kind == "Dataplane"}
    dataplanes.update({r.name: r for r in docs if r.type.kind == "Dataplane" and r.mesh == mesh_name})
    admitted: dict[str, bool] = {}
    for name, dp in list(dataplanes.items()):
        spec = dp.spec
        assert isinstance(spec, DataplaneSpec)
        admitted[name] = spec.membership_problem(mesh_name, mesh_spec.dataplane_constraints) is None
        if not admitted[name]:
            del dataplanes[name]  # refused on PUT: never joins
    names = (
        "MeshService",
        "MeshMultiZoneService",
        "MeshExternalService",
    )  # isthmus.names: in the context too
    policies = [r for r in docs if (r.type.is_policy or r.type.kind in names) and r.mesh == mesh_name]
    mtls = mesh_spec.enabled_backend is not None
    ctx = build_mesh_context(mesh, list(dataplanes.values()), policies, _cert("ca.pem") if mtls else "")
    identity = Identity(_cert("cert.pem"), _cert("key.pem")) if mtls else None
    irs: dict[str, ProxyIR] = {}
    xds: dict[str, dict[str, Any]] = {}
    for name in dataplanes:
        ir = build_proxy_ir(ctx, name, identity)
        messages = translate(ir)
        assert Snapshot.build(messages).consistency_errors() == [], name
        irs[name] = ir
        xds[name] = {
            short: json.loads(
                json.dumps(
                    [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages[url]]
                )
            )
            for short, url in XDS_NAMES.items()
        }
    return Applied(irs, xds, admitted)


def _cert(name: str) -> str:
    return (CERTS / name).read_text()


# -- the tests --------------------------------------------------------------------------------------------------
def test_every_example_is_described() -> None:
    problems = []
    for ex in DESCRIBED_EXAMPLES:
        try:
            parse_expectation(ex.comment)
        except ValueError as e:
            problems.append(f"{ex.where}: {e}")
    assert problems == []


def test_the_language_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="PROXY PATH OP LITERAL"):
        parse_expectation("expect: web-1 outbounds[backend].timeouts.request_ms < 5")
    with pytest.raises(ValueError, match="unknown example marker"):
        parse_expectation("example: refused")
    with pytest.raises(ValueError, match="bad path"):
        resolve({}, "outbounds[backend]..x")
    applied = apply("", [])  # the base mesh alone
    evaluate(Check("web-1", "outbounds[backend].cluster", "==", "backend", "t"), applied)
    evaluate(Check("web-1", "len(outbounds)", "==", 3, "t"), applied)
    with pytest.raises(AssertionError):
        evaluate(Check("web-1", "outbounds[backend].cluster", "==", "db", "t"), applied)
    with pytest.raises(LookupError, match="selects 0 elements"):
        resolve(applied.irs["web-1"], "outbounds[nope]")
    with pytest.raises(LookupError, match="has no field"):
        resolve(applied.irs["web-1"], "outbounds[backend].nope")


# Checks that state what a page claims but Isthmus does not do (yet): check text -> reason, recorded in
# /work/notes/k4-findings.md. Each must fail (strict: once it passes, remove it here); the example's other
# checks still have to pass.
KNOWN_FAILING: dict[str, str] = {}


def _params() -> list[Any]:
    out = []
    for ex in DESCRIBED_EXAMPLES:
        known = [reason for text, reason in KNOWN_FAILING.items() if ex.comment and text in ex.comment]
        marks = (
            [pytest.mark.xfail(reason="; ".join(known), strict=True, raises=AssertionError)] if known else []
        )
        out.append(pytest.param(ex, id=ex.where.split(" ")[0], marks=marks))
    return out


@pytest.mark.parametrize("example", _params())
def test_doc_example_has_its_documented_effect(example: Example) -> None:
    try:
        expectation = parse_expectation(example.comment)
    except ValueError:
        pytest.skip("not described (test_every_example_is_described fails for it)")
    if expectation.kind == "fragment":
        return
    if expectation.kind == "refused":
        with pytest.raises(ResourceValidationError) as info:
            for doc in load_documents(example.block):
                parse_document(doc, REG)
        fields = [e.field for e in info.value.errors]
        assert any(f == expectation.field or f.endswith("." + expectation.field) for f in fields), fields
        return
    known = _by_name()
    unclear = [w for w in expectation.with_ if len(known.get(w, [])) != 1]
    assert unclear == [], f"with: must name exactly one documented resource each: {unclear}"
    applied = apply(example.block, [known[w][0] for w in expectation.with_])
    failures: list[str] = []
    known_failures: list[str] = []
    known_passes: list[str] = []
    for check in expectation.checks:
        try:
            evaluate(check, applied)
        except (AssertionError, LookupError, IndexError, KeyError) as e:
            (known_failures if check.text in KNOWN_FAILING else failures).append(f"{check.text}\n    {e}")
        else:
            if check.text in KNOWN_FAILING:
                known_passes.append(check.text)
    # Unexpected failures and known failures that now pass must not be hidden by the xfail mark: raise them in
    # a way xfail(raises=...) does not accept.
    if failures or known_passes:
        raise UnexpectedOutcome(
            "\n".join(failures + [f"now passes, remove from KNOWN_FAILING: {t}" for t in known_passes])
        )
    assert known_failures == [], "\n".join(known_failures)


@pytest.mark.parametrize("example", OTHER_EXAMPLES, ids=[e.where.split(" ")[0] for e in OTHER_EXAMPLES])
def test_guide_example_applies_and_translates(example: Example) -> None:
    apply(example.block, [])


def test_refused_and_fragment_markers() -> None:
    refused = Example(
        "self-test",
        "self-test",
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-2\n  backends: [{name: ca-1, type: builtin}]\n",
        " example: refused field=mtls.enabledBackend ",
    )
    test_doc_example_has_its_documented_effect(refused)
    wrong_field = dataclasses.replace(refused, comment="example: refused field=mtls.backends")
    with pytest.raises(AssertionError):
        test_doc_example_has_its_documented_effect(wrong_field)
    accepted = dataclasses.replace(refused, block="type: Mesh\nname: default\n")
    with pytest.raises(pytest.fail.Exception):
        test_doc_example_has_its_documented_effect(accepted)
    test_doc_example_has_its_documented_effect(
        dataclasses.replace(refused, block="x: 1", comment="example: fragment")
    )
