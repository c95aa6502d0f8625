"""Kong's Prometheus metrics from Envoy's stats (the prometheus plugin's stats access loggers,
:mod:`isthmus.gateway.plugins.prometheus`): Envoy's ``envoy_kong_*`` families renamed ``kong_*``, the ``source``
label as Kong's (``service``, ``exit``, ``error``) instead of Envoy's response code details, ``-`` (no value) as
an empty label, samples that become equal summed. Pure text in, text out; the gateway agent serves the result
(:mod:`isthmus.dp.gateway_observability`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from isthmus.gateway.plugins.kong_log import source

ENVOY_PREFIX = "envoy_kong_"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
HELP = {
    "kong_http_requests_total": "HTTP status codes per consumer/service/route in Kong",
    "kong_kong_latency_ms": "Latency added by Kong and enabled plugins for each service/route in Kong",
    "kong_request_latency_ms": "Total latency incurred during requests for each service/route in Kong",
    "kong_upstream_latency_ms": "Latency added by upstream response for each service/route in Kong",
    "kong_bandwidth_bytes": "Total bandwidth (ingress/egress) throughput in bytes",
}


def _family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(envoy_text: str) -> Iterator[tuple[str, list[tuple[str, str]], float]]:
    """The samples of a Prometheus text exposition: (name, [(label, value)], value), comments skipped."""
    for line in envoy_text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line.strip())
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = [(m["key"], _unescape(m["value"])) for m in _LABEL.finditer(match["labels"] or "")]
        yield match["name"], labels, value


def number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def kong_metrics(envoy_text: str) -> str:
    """Envoy's ``/stats/prometheus`` text -> Kong's metrics text."""
    types: dict[str, str] = {}
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    order: list[str] = []
    for line in envoy_text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) == 4 and parts[2].startswith(ENVOY_PREFIX):
                types["kong_" + parts[2][len(ENVOY_PREFIX) :]] = parts[3]
    for envoy_name, envoy_labels, value_f in parse(envoy_text):
        if not envoy_name.startswith(ENVOY_PREFIX):
            continue
        name = "kong_" + envoy_name[len(ENVOY_PREFIX) :]
        labels = []
        for key, value in envoy_labels:
            if value == "-":
                value = ""
            if key == "source":
                value = source(value or None)
            labels.append((key, value))
        family = _family(name)
        if family not in samples:
            samples[family] = {}
            order.append(family)
        key_ = (("__name__", name), *labels)
        samples[family][key_] = samples[family].get(key_, 0.0) + value_f
    out: list[str] = []
    for family in order:
        if family in HELP:
            out.append(f"# HELP {family} {HELP[family]}")
        out.append(f"# TYPE {family} {types.get(family, 'untyped')}")
        for key_, value_f in samples[family].items():
            name = key_[0][1]
            rendered = ",".join(f'{k}="{escape(v)}"' for k, v in key_[1:])
            shown = number(value_f)
            out.append(f"{name}{{{rendered}}} {shown}" if rendered else f"{name} {shown}")
    return "\n".join(out) + ("\n" if out else "")
