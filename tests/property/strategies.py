"""Hypothesis strategies for Universal documents of every resource kind the registry knows.

Specs are derived from the pydantic models: :func:`spec_of` walks ``model_fields`` and draws each field from its
type (constraints such as ``ge``/``le``/``min_length``/``pattern`` included). Fields whose meaning the type does
not carry (names, tags, ports, addresses, durations, targetRefs, percentages, regexes, Envoy YAML) get
hand-tuned leaves so that most drawn documents are schema-valid, while a minority probes the edges (huge
numbers and durations, odd characters). Documents from ``docs/**/*.md`` seed every kind.

The strategies yield plain documents (``dict``), as a user would ``isthmus apply`` them; validation is the
code under test's job (:func:`isthmus.resources.registry.parse_document`).
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from isthmus.resources.registry import Registry, ResourceType, Scope


def _default_registry() -> Registry:
    try:
        from isthmus.catalog import default_registry
    except ImportError:  # before the registry moved above resources and policies
        from isthmus.resources.registry import default_registry  # type: ignore[attr-defined,no-redef]
    return default_registry()


Strategy = st.SearchStrategy
REGISTRY = _default_registry()
DOCS = Path(__file__).resolve().parents[2] / "docs"

# -- vocabulary shared by meshes, dataplanes and policies, so that references resolve ----------------------------
SERVICES = ("web", "backend", "db", "api")
DATAPLANE_NAMES = ("web-1", "backend-1", "backend-2", "db-1", "api-1")
ROUTE_NAMES = ("route-1", "route-2")
MESH_NAMES = ("default", "m1", "mesh-2")
BACKEND_NAMES = ("ca-1", "ca-2")
PROTOCOLS = ("http", "http2", "grpc", "tcp")  # kafka is refused at apply (not supported yet)
HEADER_NAMES = ("x-user", "x-version", "content-type", "x-a", "user-agent")

_SAFE = "abcdefghijklmnopqrstuvwxyz0123456789-"
_TAG_KEY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:/"
_TAG_VALUE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:"
_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _word(alphabet: str = _SAFE, max_size: int = 10) -> Strategy[str]:
    return st.text(alphabet=alphabet, min_size=1, max_size=max_size)


def rarely(common: Strategy[Any], rare: Strategy[Any], one_in: int = 8) -> Strategy[Any]:
    """``common`` most of the time, ``rare`` about once in ``one_in`` draws (``one_of`` would be 50/50)."""
    return st.sampled_from(range(one_in)).flatmap(lambda i: rare if i == one_in - 1 else common)


# odd text: printable ASCII with spaces, quotes and slashes, and rarely anything at all (probes the edges)
ODD_TEXT = rarely(st.text(_PRINTABLE, min_size=1, max_size=8), st.text(min_size=1, max_size=6), 3)
TEXT = rarely(st.one_of(st.sampled_from(("a", "v1", "x", "test")), _word()), ODD_TEXT, 4)

_LABEL = r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
NAMES = rarely(
    st.one_of(
        st.sampled_from(("n1", "n2", "a.b", "long-name-1")),
        st.from_regex(rf"\A{_LABEL}(\.{_LABEL}){{0,2}}\Z"),
    ),
    st.one_of(st.sampled_from(("A", "a_b", "-a", "a.", "x" * 254)), ODD_TEXT),
)
MESH_NAME = rarely(
    st.one_of(st.sampled_from(MESH_NAMES), st.from_regex(rf"\A{_LABEL}\Z")), st.sampled_from(("a.b", "M1"))
)
SERVICE = rarely(
    st.one_of(st.sampled_from(SERVICES), _word(_TAG_VALUE_CHARS)), st.one_of(ODD_TEXT, st.just("x" * 300))
)

PORTS = st.one_of(
    st.sampled_from((80, 8080, 10001, 20001, 20002, 5432)), st.sampled_from((1, 65535)), st.integers(1, 65535)
)
ADDRESSES = rarely(
    st.one_of(
        st.sampled_from(("127.0.0.1", "127.0.0.2", "10.0.0.1", "192.168.1.10")), st.ip_addresses().map(str)
    ),
    st.sampled_from(
        ("0.0.0.0", "::1", "::", "fd00::1", "255.255.255.255", "fe80::1%eth0", "::ffff:10.0.0.1")
    ),
    4,
)

DURATION_UNITS = ("ns", "us", "ms", "s", "m", "h", "d", "y")
DURATIONS = rarely(
    st.one_of(
        st.sampled_from(("0s", "1ms")),
        st.sampled_from(
            ("1s", "500ms", "10s", "1m", "1m30s", "1h", "24h", "100ms", "5s", "0s", "1.5s", "2d")
        ),
        st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**6), st.sampled_from(DURATION_UNITS)),
    ),
    st.sampled_from(
        ("9000y", "20000y", "1000000000h", "1ns", "0.5ns", "1y1ns", "99999999999s", "10y", "87600h")
    ),
)
PERCENT = rarely(
    st.one_of(
        st.integers(0, 100),
        st.floats(0, 100, allow_nan=False, allow_infinity=False),
        st.integers(0, 100).map(str),
        st.floats(0, 100, allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.3f}"),
    ),
    st.sampled_from((-1, 101, "abc", "1e400", "nan", "1e-400", 1e-300)),
)
DECIMAL = st.one_of(
    st.floats(0, 10, allow_nan=False, allow_infinity=False),
    st.sampled_from(("1.9", "0", "2", "1e10", "-1", "nan", "inf", "abc")),
)
REGEXES = st.sampled_from(
    (
        "^/api/.*$",
        "/v[12]/.*",
        ".*",
        "[a-z]+",
        "x{2,5}",
        "(a|b)*c",
        "\\d+",
        "(?i)foo",
        "(?=x)",
        "a{1001}",
        "(?<n>a)",
    )
)
HEADER_NAME = rarely(
    st.one_of(st.sampled_from(HEADER_NAMES), _word()),
    st.one_of(ODD_TEXT, st.sampled_from((":path", "host", "Host"))),
)
HEADER_VALUE = rarely(st.one_of(st.sampled_from(("v1", "yes", "")), _word()), ODD_TEXT)
PATHS = rarely(
    st.one_of(st.sampled_from(("/", "/api", "/api/v1", "/v2/")), _word().map(lambda w: "/" + w)),
    ODD_TEXT.map(lambda w: "/" + w),
)
HOSTNAMES = st.one_of(
    st.sampled_from(("example.com", "backend", "a.b.c")), st.from_regex(r"\A[a-z0-9]{1,10}\Z")
)


@st.composite
def tags(draw: st.DrawFn, *, service: bool = True) -> dict[str, str]:
    """Kuma tags: ``kuma.io/service`` (usually), a protocol, a version, and sometimes odd keys or values."""
    out: dict[str, str] = {}
    if service:
        out["kuma.io/service"] = draw(SERVICE)
    if draw(st.booleans()):
        out["kuma.io/protocol"] = draw(rarely(st.sampled_from(PROTOCOLS), _word()))
    if draw(st.booleans()):
        out["version"] = draw(st.sampled_from(("v1", "v2", "v3")))
    extra = draw(
        st.dictionaries(
            rarely(_word(_TAG_KEY_CHARS), ODD_TEXT),
            rarely(_word(_TAG_VALUE_CHARS), ODD_TEXT),
            max_size=2,
        )
    )
    return {**extra, **out}


SUBSET_TAGS = st.one_of(
    st.sampled_from(({"version": "v1"}, {"version": "v2"}, {"kuma.io/protocol": "http"})),
    tags(service=False).filter(bool),
)


# -- targetRefs ---------------------------------------------------------------------------------------------------
def _ref(kind: str, **fields: Strategy[Any]) -> Strategy[dict[str, Any]]:
    return st.fixed_dictionaries({"kind": st.just(kind), **fields})


def _extras(where: str) -> dict[str, Strategy[Any]]:
    """proxyTypes selects proxies: top level only, never empty (Kuma's validator)."""
    if where in ("to", "from"):
        return {}
    return {"proxyTypes": st.lists(st.sampled_from(("Sidecar", "Gateway")), min_size=1, max_size=2)}


def target_refs(where: str, allowed: frozenset[str] | None = None) -> Strategy[dict[str, Any]]:
    """A structurally valid targetRef for its place: top level, a ``to`` item or a ``from`` item; only kinds in
    ``allowed`` if given."""
    if allowed is not None:
        options = [(k, s) for k, s in _ref_options(where) if k in allowed]
        return st.one_of([s for _, s in options]) if options else target_refs(where)
    return st.one_of([s for _, s in _ref_options(where)])


def _ref_options(where: str) -> list[tuple[str, Strategy[dict[str, Any]]]]:
    mesh = st.fixed_dictionaries({"kind": st.just("Mesh")}, optional=_extras(where))
    service = _ref("MeshService", name=SERVICE)
    subset = _ref("MeshSubset", tags=SUBSET_TAGS)
    service_subset = _ref("MeshServiceSubset", name=SERVICE, tags=SUBSET_TAGS)
    if where == "to":
        return [("Mesh", mesh), ("MeshService", service)]
    if where == "from":
        return [
            ("Mesh", mesh),
            ("MeshSubset", subset),
            ("MeshService", service),
            ("MeshServiceSubset", service_subset),
        ]
    dataplane = st.one_of(
        _ref("Dataplane", name=st.sampled_from(DATAPLANE_NAMES)),
        _ref("Dataplane", labels=st.dictionaries(_word(), _word(), min_size=1, max_size=2)),
    )
    route = _ref("MeshHTTPRoute", name=st.sampled_from(ROUTE_NAMES))
    return [
        ("Mesh", mesh),
        ("MeshSubset", subset),
        ("MeshService", service),
        ("MeshServiceSubset", service_subset),
        ("Dataplane", dataplane),
        ("MeshHTTPRoute", route),
    ]


_PROBE_REFS = {
    "Mesh": {"kind": "Mesh"},
    "MeshSubset": {"kind": "MeshSubset", "tags": {"version": "v1"}},
    "MeshService": {"kind": "MeshService", "name": "web"},
    "MeshServiceSubset": {"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v1"}},
    "Dataplane": {"kind": "Dataplane", "name": "web-1"},
    "MeshHTTPRoute": {"kind": "MeshHTTPRoute", "name": "route-1"},
}


@cache
def allowed_kinds(model: type[BaseModel], section: str) -> frozenset[str] | None:
    """The targetRef kinds a policy spec accepts at the top level (``section`` "") or in a section's items:
    each kind is put in a docs example of the policy, and refused when the error names its ``targetRef.kind``.
    None when no example has that section."""
    kind_name = next((t.kind for t in REGISTRY.policies() if t.spec_model is model), None)
    seeds = [d["spec"] for d in doc_seeds().get(kind_name or "", ()) if isinstance(d.get("spec"), dict)]
    if section:
        seeds = [s for s in seeds if isinstance(s.get(section), list) and s[section]]
    if not seeds:
        return None
    seed = seeds[0]
    where = f"{section}[0].targetRef.kind" if section else "targetRef.kind"
    allowed = set()
    for kind, ref in _PROBE_REFS.items():
        if section:
            doc = {**seed, section: [{**seed[section][0], "targetRef": ref}]}
        else:
            doc = {**seed, "targetRef": ref}
        try:
            model.model_validate(doc)
        except ValidationError as exc:
            if where in str(exc):
                continue
        allowed.add(kind)
    return frozenset(allowed)


# -- the generic walker ---------------------------------------------------------------------------------------------
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), _word(), ODD_TEXT)
FREE_FORM: Strategy[dict[str, Any]] = st.dictionaries(
    _word(),
    st.recursive(
        JSON_LEAF,
        lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(_word(), inner, max_size=2)),
        max_leaves=4,
    ),
    max_size=2,
)

# by field alias, whatever the model
BY_ALIAS: dict[str, Strategy[Any]] = {
    "port": PORTS,
    "servicePort": PORTS,
    "address": ADDRESSES,
    "advertisedAddress": ADDRESSES,
    "serviceAddress": ADDRESSES,
    "percentage": PERCENT,
    "standardDeviationFactor": DECIMAL,
    "healthyPanicThreshold": DECIMAL,
    "activeRequestBias": DECIMAL,
    "labels": st.dictionaries(_word(), _word(), max_size=2),
    "hostname": HOSTNAMES,
}
# by (model name, field alias): meanings that depend on the model
BY_MODEL_FIELD: dict[tuple[str, str], Strategy[Any]] = {
    ("Header", "name"): HEADER_NAME,
    ("Header", "value"): HEADER_VALUE,
    ("HeaderKeyValue", "name"): HEADER_NAME,
    ("HeaderKeyValue", "value"): HEADER_VALUE,
    ("HeaderModifier", "remove"): st.lists(HEADER_NAME, max_size=2),
    ("Named", "name"): HEADER_NAME,
    ("Cookie", "name"): HEADER_NAME,
    ("BackendRef", "name"): SERVICE,
    ("BackendRef", "tags"): SUBSET_TAGS,
    ("Inbound", "tags"): tags(),
    ("Inbound", "name"): st.sampled_from(("main", "metrics")),
    ("Gateway", "tags"): tags(),
    ("Gateway", "type"): st.sampled_from(("DELEGATED", "BUILTIN")),
    ("Inbound", "health"): st.one_of(st.just({"ready": False}), st.just({"ready": True}), FREE_FORM),
    ("Http", "retryOn"): st.lists(
        st.sampled_from(("5xx", "GatewayError", "Reset", "ConnectFailure", "503", "HttpMethodGet", "Bogus")),
        max_size=3,
    ),
    ("Grpc", "retryOn"): st.lists(
        st.sampled_from(("Canceled", "Unavailable", "Internal", "Bogus")), max_size=3
    ),
    ("Http", "expectedStatuses"): st.lists(st.integers(100, 599), max_size=3),
    ("Http", "path"): PATHS,
    ("Tcp", "send"): st.one_of(_word(), st.just("")),
    ("Tcp", "receive"): st.lists(st.one_of(_word(), st.just("")), max_size=2),
    ("ResponseBandwidth", "limit"): st.one_of(
        st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**7), st.sampled_from(("kbps", "Mbps", "gbps"))),
        st.sampled_from(("99999999999999gbps",)),
    ),
    ("SpiffeId", "value"): st.one_of(
        st.sampled_from(SERVICES).map(lambda s: f"spiffe://default/{s}"),
        st.sampled_from(("spiffe://default/", "spiffe://m1/web", "spiffe://")),
        ODD_TEXT.map(lambda s: f"spiffe://{s}"),
    ),
    ("RingHash", "hashFunction"): st.sampled_from(("XXHash", "MurmurHash2")),
    ("FilterState", "key"): _word(),
    ("Cookie", "path"): PATHS,
    ("QueryParamsMatch", "name"): _word(),
}
# fields refused at apply as "not supported yet" (or whose non-default values are): never drawn, or drawn
# with the value Isthmus accepts
NEVER_DRAWN = {
    ("MeshSpec", "logging"),
    ("MeshSpec", "tracing"),
    ("MeshSpec", "metrics"),
    ("Networking", "transparentProxying"),
    ("DataplaneSpec", "probes"),
    ("DataplaneSpec", "metrics"),
    ("Inbound", "serviceProbe"),
}
BY_MODEL_FIELD |= {
    ("OutboundNetworking", "passthrough"): st.just(True),
    ("Routing", "localityAwareLoadBalancing"): st.just(False),
    ("Routing", "zoneEgress"): st.just(False),
    ("Routing", "defaultForbidMeshExternalServiceAccess"): st.just(False),
}
# list fields that are usually non-empty (the model refuses an empty one)
NON_EMPTY_LISTS = {("Networking", "inbound"), ("RuleConf", "backendRefs")}
SECTIONS = ("to", "from", "rules")
# whole models drawn by hand (cross-field rules the type does not carry)
ModelStrategy = Callable[[str], Strategy[dict[str, Any]]]
BY_MODEL: dict[str, ModelStrategy] = {}


def _by_model(name: str) -> Callable[[ModelStrategy], ModelStrategy]:
    def register(fn: ModelStrategy) -> ModelStrategy:
        BY_MODEL[name] = fn
        return fn

    return register


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    """``ge``/``gt``/``le``/``lt``/``min_length``/``max_length``/``pattern`` from annotated metadata."""
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, FieldInfo):
            out.update(_constraints(list(m.metadata)))
            continue
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(m, attr, None)
            if value is not None and not callable(value):
                out[attr] = value
    return out


def _validator_leaf(metadata: list[Any]) -> Strategy[Any] | None:
    """Leaves for the project's annotated types, recognised by their validator's name (durations by module)."""
    for m in metadata:
        func = getattr(m, "func", None)
        if func is None:
            continue
        if "duration" in getattr(func, "__module__", ""):
            return DURATIONS
        leaf = VALIDATOR_LEAVES.get(getattr(func, "__name__", ""))
        if leaf is not None:
            return leaf
    return None


VALIDATOR_LEAVES: dict[str, Strategy[Any]] = {
    "_check_tags": tags(),
    "_check_selector": st.fixed_dictionaries({"kuma.io/service": st.one_of(SERVICE, st.just("*"))}),
    "check_tag_value": SERVICE,
    "check_name": NAMES,
    "check_mesh_name": MESH_NAME,
    "check_ip": ADDRESSES,
    "check_cidr": st.sampled_from(("10.0.0.0/8", "127.0.0.1/32", "::/0", "fd00::/8", "10.0.0.1/8")),
    "_check_labels": st.dictionaries(_word(), _word(), max_size=2),
}


def _integers(c: dict[str, Any]) -> Strategy[int]:
    lo = c.get("ge", c["gt"] + 1 if "gt" in c else -(2**31))
    hi = c.get("le", c["lt"] - 1 if "lt" in c else 2**64)
    small = st.integers(max(lo, 0) if lo <= 0 <= hi else lo, min(hi, max(lo, 0) + 100))
    return st.one_of(small, st.sampled_from(sorted({lo, hi})), st.integers(lo, hi))


def _floats(c: dict[str, Any]) -> Strategy[float]:
    lo = c.get("ge", c.get("gt"))
    hi = c.get("le", c.get("lt"))
    return st.floats(
        lo, hi, allow_nan=False, allow_infinity=False, exclude_min="gt" in c, exclude_max="lt" in c
    )


def for_type(tp: Any, where: str, metadata: tuple[Any, ...] = ()) -> Strategy[Any]:
    """Values of the (possibly annotated) type ``tp``; ``where`` is the alias of the field that holds it."""
    meta = list(metadata)
    if get_origin(tp) is typing.Annotated:
        base, *extra = get_args(tp)
        return for_type(base, where, (*metadata, *extra))
    leaf = _validator_leaf(meta)
    if leaf is not None:
        return leaf
    c = _constraints(meta)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return st.one_of([for_type(a, where, metadata) for a in get_args(tp) if a is not type(None)])
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from([m.value for m in tp])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return spec_of(tp, where)
    if origin is list:
        (item,) = get_args(tp)
        max_size = min(c.get("max_length", 3), 3)
        return st.lists(for_type(item, where), min_size=c.get("min_length", 0), max_size=max_size)
    if origin is dict:
        _, value = get_args(tp)
        if value is str:
            return st.dictionaries(_word(), TEXT, max_size=2)
        return FREE_FORM
    if tp is Any:
        return JSON_LEAF
    if tp is bool:
        return st.booleans()
    if tp is int:
        return _integers(c)
    if tp is float:
        return _floats(c)
    if tp is str:
        if "pattern" in c:
            return st.from_regex(c["pattern"], fullmatch=True)
        return TEXT if c.get("min_length", 0) <= 1 else st.text(min_size=c["min_length"])
    raise NotImplementedError(f"no strategy for {tp!r} (field {where!r})")


def _field(model: type[BaseModel], alias: str, info: FieldInfo, where: str) -> Strategy[Any]:
    special = BY_MODEL_FIELD.get((model.__name__, alias))
    if special is not None:
        return special
    if alias == "targetRef":
        return target_refs(where)
    if alias in BY_ALIAS:
        return BY_ALIAS[alias]
    if (model.__name__, alias) in NON_EMPTY_LISTS:
        return for_type(info.annotation, alias, (annotated_types.MinLen(1),)).filter(bool)
    return for_type(info.annotation, alias, tuple(info.metadata))


def _policy_spec(model: type[BaseModel]) -> Strategy[dict[str, Any]]:
    """A policy spec: the targetRef first, then ``default`` (for kind MeshHTTPRoute) or a non-empty choice of
    the ``to``/``from``/``rules`` sections the model has."""
    fields = {info.alias or name: (name, info) for name, info in model.model_fields.items()}
    sections = [s for s in SECTIONS if s in fields]

    def field(alias: str) -> Strategy[Any]:
        _, info = fields[alias]
        return for_type(info.annotation, alias, tuple(info.metadata)).filter(lambda v: v is not None)

    def section(alias: str) -> Strategy[list[dict[str, Any]]]:
        _, info = fields[alias]
        item = next(a for a in _flatten(info.annotation) if get_origin(a) is list)
        (item_model,) = get_args(item)
        refs = target_refs(alias, allowed_kinds(model, alias))
        items = st.builds(lambda i, r: {**i, "targetRef": r}, generic_spec(item_model, alias), refs)
        if "targetRef" not in item_model.model_fields and "target_ref" not in item_model.model_fields:
            items = generic_spec(item_model, alias)
        return st.lists(items, min_size=1, max_size=3)

    @st.composite
    def draw(d: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "targetRef" in fields:
            out["targetRef"] = d(target_refs("", allowed_kinds(model, "")))
        rest = [a for a in fields if a not in ("targetRef", "default", *SECTIONS)]
        for alias in rest:
            if fields[alias][1].is_required() or d(st.booleans()):
                out[alias] = d(field(alias))
        if "default" in fields and (out.get("targetRef", {}).get("kind") == "MeshHTTPRoute" or not sections):
            out["default"] = d(field("default"))
            return out
        if sections:
            chosen = d(st.lists(st.sampled_from(sections), min_size=1, max_size=2, unique=True))
            if "from" in chosen and "rules" in chosen:
                chosen.remove("rules")
            for alias in chosen:
                out[alias] = d(section(alias))
        return out

    return draw()


def _flatten(tp: Any) -> list[Any]:
    if get_origin(tp) in (Union, types.UnionType):
        return [a for arg in get_args(tp) for a in _flatten(arg)]
    return [tp]


def generic_spec(model: type[BaseModel], where: str = "") -> Strategy[dict[str, Any]]:
    """A document for ``model`` drawn field by field from ``model_fields`` (aliases as keys)."""
    if where == "spec" and "target_ref" in model.model_fields:
        return _policy_spec(model)
    required: dict[str, Strategy[Any]] = {}
    optional: dict[str, Strategy[Any]] = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        if (model.__name__, alias) in NEVER_DRAWN:
            continue
        strategy = _field(model, alias, info, where)
        must = info.is_required() or (model.__name__, alias) in NON_EMPTY_LISTS
        (required if must else optional)[alias] = strategy
    return st.fixed_dictionaries(required, optional=optional)


@cache
def spec_of(model: type[BaseModel], where: str = "") -> Strategy[dict[str, Any]]:
    """The hand-drawn strategy for ``model`` if there is one, else :func:`generic_spec`."""
    base = model.__name__.split("[", 1)[0]
    hand = BY_MODEL.get(base)
    if hand is not None:
        return hand(where)
    return generic_spec(model, where)


# -- hand-drawn models ----------------------------------------------------------------------------------------------
def _cls(module: str, name: str) -> type[BaseModel]:
    import importlib

    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, BaseModel)
    return cls


@_by_model("Mtls")
def _mtls(where: str) -> Strategy[dict[str, Any]]:
    backend = generic_spec(_cls("isthmus.resources.mesh", "CaBackend"), "backends")

    @st.composite
    def draw(d: st.DrawFn) -> dict[str, Any]:
        names = d(st.lists(st.sampled_from(BACKEND_NAMES), max_size=2, unique=True))
        backends = [
            {**d(backend), "name": n, "type": d(st.sampled_from(("builtin", "builtin", "provided")))}
            for n in names
        ]
        out: dict[str, Any] = {"backends": backends}
        if names and d(st.integers(0, 3)):
            out["enabledBackend"] = d(st.sampled_from(names))
        return out

    return draw()


@_by_model("Rotation")
def _rotation(where: str) -> Strategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={"expiration": DURATIONS})


@_by_model("Outbound")
def _outbound(where: str) -> Strategy[dict[str, Any]]:
    backend_ref = st.fixed_dictionaries(
        {"name": st.sampled_from(SERVICES)}, optional={"kind": st.just("MeshService"), "port": PORTS}
    )
    return st.one_of(
        st.fixed_dictionaries({"port": PORTS, "tags": tags()}, optional={"address": ADDRESSES}),
        st.fixed_dictionaries({"port": PORTS, "backendRef": backend_ref}, optional={"address": ADDRESSES}),
    )


@_by_model("PathMatch")
def _path_match(where: str) -> Strategy[dict[str, Any]]:
    return st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(("Exact", "PathPrefix")), "value": PATHS}),
        st.fixed_dictionaries({"type": st.just("RegularExpression"), "value": REGEXES}),
    )


@_by_model("HeaderMatch")
def _header_match(where: str) -> Strategy[dict[str, Any]]:
    return st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(("Exact", "Prefix")), "name": HEADER_NAME, "value": HEADER_VALUE}
        ),
        st.fixed_dictionaries({"type": st.sampled_from(("Present", "Absent")), "name": HEADER_NAME}),
        st.fixed_dictionaries({"type": st.just("RegularExpression"), "name": HEADER_NAME, "value": REGEXES}),
    )


@_by_model("QueryParamsMatch")
def _query_match(where: str) -> Strategy[dict[str, Any]]:
    return st.one_of(
        st.fixed_dictionaries({"type": st.just("Exact"), "name": _word(), "value": HEADER_VALUE}),
        st.fixed_dictionaries({"type": st.just("RegularExpression"), "name": _word(), "value": REGEXES}),
    )


@_by_model("PathRewrite")
def _path_rewrite(where: str) -> Strategy[dict[str, Any]]:
    return st.one_of(
        st.fixed_dictionaries({"type": st.just("ReplaceFullPath"), "replaceFullPath": PATHS}),
        st.fixed_dictionaries({"type": st.just("ReplacePrefixMatch"), "replacePrefixMatch": PATHS}),
    )


_FILTER_MODELS = {
    "RequestHeaderModifier": ("requestHeaderModifier", "HeaderModifier"),
    "ResponseHeaderModifier": ("responseHeaderModifier", "HeaderModifier"),
    "RequestRedirect": ("requestRedirect", "RequestRedirect"),
    "URLRewrite": ("urlRewrite", "URLRewrite"),
    "RequestMirror": ("requestMirror", "RequestMirror"),
}


@_by_model("Filter")
def _filter(where: str) -> Strategy[dict[str, Any]]:
    module = "isthmus.policies.meshhttproute.api"
    return st.one_of(
        [
            st.fixed_dictionaries({"type": st.just(kind), field: generic_spec(_cls(module, model), field)})
            for kind, (field, model) in _FILTER_MODELS.items()
        ]
    )


@_by_model("HashPolicy")
def _hash_policy(where: str) -> Strategy[dict[str, Any]]:
    module = "isthmus.policies.meshloadbalancingstrategy.api"
    sections = {
        "Header": ("header", "Named"),
        "Cookie": ("cookie", "Cookie"),
        "QueryParameter": ("queryParameter", "Named"),
        "FilterState": ("filterState", "FilterState"),
        "Connection": ("connection", "Connection"),
    }
    options = [
        st.fixed_dictionaries(
            {"type": st.just(kind), field: generic_spec(_cls(module, model), field)},
            optional={"terminal": st.booleans()},
        )
        for kind, (field, model) in sections.items()
    ]
    options.append(st.fixed_dictionaries({"type": st.sampled_from(("SourceIP", "Connection"))}))
    return st.one_of(options)


# MeshProxyPatch: modifications that usually apply, and some that do not (the errors are contained per proxy)
_CLUSTER_ADD = """name: extra
connect_timeout: 2s
type: STATIC
load_assignment:
  cluster_name: extra
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9000}}}
"""
_BUFFER = """name: envoy.filters.http.buffer
typed_config:
  '@type': type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
  max_request_bytes: 65536
"""
_TCP_PROXY = """name: envoy.filters.network.tcp_proxy
typed_config:
  '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
  stat_prefix: extra
  cluster: backend
"""
_MATCH = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(SERVICES), st.sampled_from(("envoy.filters.http.router", "extra"))),
        "origin": st.sampled_from(("inbound", "outbound")),
    },
)
_JSON_PATCHES = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"op": st.just("replace"), "path": st.just("/connectTimeout"), "value": DURATIONS}
        ),
        st.fixed_dictionaries(
            {
                "op": st.just("add"),
                "path": st.just("/perConnectionBufferLimitBytes"),
                "value": st.integers(0, 2**33),
            }
        ),
        st.fixed_dictionaries({"op": st.just("remove"), "path": st.sampled_from(("/name", "/type", "/x"))}),
        st.fixed_dictionaries({"op": st.sampled_from(("add", "replace")), "path": PATHS, "value": JSON_LEAF}),
    ),
    min_size=1,
    max_size=2,
)


@_by_model("Modification")
def _modification(where: str) -> Strategy[dict[str, Any]]:
    resource_ops = st.one_of(
        st.fixed_dictionaries({"operation": st.just("Add"), "value": st.just(_CLUSTER_ADD)}),
        st.fixed_dictionaries({"operation": st.just("Remove")}, optional={"match": _MATCH}),
        st.fixed_dictionaries(
            {"operation": st.just("Patch"), "jsonPatches": _JSON_PATCHES}, optional={"match": _MATCH}
        ),
        st.fixed_dictionaries(
            {
                "operation": st.just("Patch"),
                "value": st.sampled_from(("connect_timeout: 3s", "per_connection_buffer_limit_bytes: 1024")),
            },
            optional={"match": _MATCH},
        ),
    )
    filter_ops = st.one_of(
        st.fixed_dictionaries(
            {"operation": st.sampled_from(("AddFirst", "AddLast")), "value": st.just(_BUFFER)},
            optional={"match": _MATCH},
        ),
        st.fixed_dictionaries(
            {
                "operation": st.sampled_from(("AddBefore", "AddAfter")),
                "value": st.just(_BUFFER),
                "match": _MATCH.filter(lambda m: "name" in m),
            }
        ),
        st.fixed_dictionaries({"operation": st.just("Remove")}, optional={"match": _MATCH}),
    )
    network_ops = st.one_of(
        st.fixed_dictionaries(
            {"operation": st.sampled_from(("AddFirst", "AddLast")), "value": st.just(_TCP_PROXY)},
            optional={"match": _MATCH},
        ),
        st.fixed_dictionaries({"operation": st.just("Remove")}, optional={"match": _MATCH}),
    )
    vhost_ops = st.one_of(
        st.fixed_dictionaries(
            {
                "operation": st.just("Patch"),
                "value": st.just("request_headers_to_add:\n- header: {key: x-patched, value: 'yes'}\n"),
            },
            optional={"match": _MATCH},
        ),
        st.fixed_dictionaries({"operation": st.just("Remove")}, optional={"match": _MATCH}),
    )
    return st.one_of(
        st.fixed_dictionaries({"cluster": resource_ops}),
        st.fixed_dictionaries({"listener": resource_ops.filter(lambda m: m["operation"] != "Add")}),
        st.fixed_dictionaries({"httpFilter": filter_ops}),
        st.fixed_dictionaries({"networkFilter": network_ops}),
        st.fixed_dictionaries({"virtualHost": vhost_ops}),
    )


# -- documents ------------------------------------------------------------------------------------------------------
@cache
def doc_seeds() -> dict[str, tuple[dict[str, Any], ...]]:
    """Every YAML document with a ``type`` in the docs, by kind."""
    found: dict[str, list[dict[str, Any]]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for block in re.findall(r"```ya?ml\n(.*?)```", page.read_text(), re.S):
            try:
                docs = [d for d in yaml.safe_load_all(block) if isinstance(d, dict)]
            except yaml.YAMLError:
                continue
            for d in docs:
                if isinstance(d.get("type"), str):
                    found.setdefault(d["type"], []).append(d)
    return {k: tuple(v) for k, v in found.items()}


def _meta(rtype: ResourceType, mesh: str, name: Strategy[str]) -> Strategy[dict[str, Any]]:
    fields: dict[str, Strategy[Any]] = {"type": st.just(rtype.kind), "name": name}
    if rtype.scope is Scope.MESH:
        fields["mesh"] = st.just(mesh)
    return st.fixed_dictionaries(fields, optional={"labels": st.dictionaries(_word(), _word(), max_size=2)})


def _name_for(kind: str) -> Strategy[str]:
    if kind == "Dataplane":
        return st.one_of(st.sampled_from(DATAPLANE_NAMES), NAMES)
    if kind == "MeshHTTPRoute":
        return st.one_of(st.sampled_from(ROUTE_NAMES), NAMES)
    if kind == "Mesh":
        return MESH_NAME
    return st.one_of(st.sampled_from(("p1", "p2", "p3")), NAMES)


def _seeded(kind: str, mesh: str) -> list[Strategy[dict[str, Any]]]:
    seeds = doc_seeds().get(kind, ())
    if not seeds:
        return []
    rtype = REGISTRY.kind(kind)
    assert rtype is not None
    if rtype.scope is Scope.MESH:
        seeds = tuple({**d, "mesh": mesh} for d in seeds)
    return [st.sampled_from(seeds)]


def document(kind: str, mesh: str = "default", name: Strategy[str] | None = None) -> Strategy[dict[str, Any]]:
    """A Universal document of ``kind`` in ``mesh``: a docs example or one drawn from the spec model."""
    rtype = REGISTRY.kind(kind)
    assert rtype is not None, kind
    meta = _meta(rtype, mesh, name if name is not None else _name_for(kind))
    spec = spec_of(rtype.spec_model, "spec")
    if rtype.spec_at_top_level:
        drawn = st.builds(lambda m, s: {**s, **m}, meta, spec)
    else:
        drawn = st.builds(lambda m, s: {**m, "spec": s}, meta, spec)
    if name is None:
        return st.one_of(drawn, *_seeded(kind, mesh))
    return drawn


def public_kinds() -> list[str]:
    return [t.kind for t in REGISTRY.public()]


def policy_kinds() -> list[str]:
    return [t.kind for t in REGISTRY.policies()]


@st.composite
def mesh_documents(draw: st.DrawFn, max_dataplanes: int = 4, max_policies: int = 5) -> list[dict[str, Any]]:
    """A whole mesh: a Mesh, 1.. Dataplanes (distinct names) and policies of any kind (distinct kind/name)."""
    mesh = draw(document("Mesh"))
    name = mesh["name"] if isinstance(mesh.get("name"), str) else "default"
    dataplanes = draw(
        st.lists(
            document("Dataplane", name, st.sampled_from(DATAPLANE_NAMES)),
            min_size=1,
            max_size=max_dataplanes,
            unique_by=lambda d: d["name"],
        )
    )
    policies = draw(
        st.lists(
            st.sampled_from(policy_kinds()).flatmap(lambda k: document(k, name)),
            max_size=max_policies,
            unique_by=lambda d: (d["type"], d["name"]),
        )
    )
    return [mesh, *dataplanes, *policies]


def profile(**overrides: Any) -> Any:
    """Settings for ``@settings(...)``: the profile chosen by ``ISTHMUS_HYPOTHESIS_PROFILE`` (default ``ci``, see
    conftest.py) with ``overrides``; other profiles keep their own (larger) ``max_examples``."""
    import os

    from hypothesis import settings

    name = os.environ.get("ISTHMUS_HYPOTHESIS_PROFILE", "ci")
    if name != "ci":
        overrides.pop("max_examples", None)
    return settings(settings.get_profile(name), **overrides)
