"""bench.observability imports, and its policies, medians and table work on tiny inputs (no timing)."""

from __future__ import annotations

import importlib
from pathlib import Path

from bench.observability.report import BARE, OBSERVED, medians, table

from isthmus.catalog import default_registry
from isthmus.resources.registry import parse_document


def test_the_policies_are_valid_resources(tmp_path: Path) -> None:
    module = importlib.import_module("bench.observability.__main__")
    docs = module.policies(tmp_path / "access.log", 9411, {"client-obs": 5670, "server-obs": 5671})
    kinds = sorted(d["type"] for d in docs)
    assert kinds == ["MeshAccessLog", "MeshMetric", "MeshMetric", "MeshTrace", "MeshTrafficPermission"]
    for doc in docs:
        parse_document(doc, default_registry())  # raises on an invalid spec
    trace = next(d for d in docs if d["type"] == "MeshTrace")
    assert trace["spec"]["default"]["sampling"] == {"overall": 10}
    only_logs = module.policies(tmp_path / "a.log", 9411, {"client-obs": 5670}, frozenset({"log"}))
    assert sorted(d["type"] for d in only_logs) == ["MeshAccessLog", "MeshTrafficPermission"]
    assert "bench: observed" in module.dataplane("client-obs", "client-obs", 1, 2, 3, "server-obs")
    assert "bench" not in module.dataplane("client-bare", "client-bare", 1, 2).replace("mesh: bench", "")


def test_medians_keep_the_cpu_figure_where_measured() -> None:
    runs = {
        BARE: [
            {"rps": r, "p50": 1.0, "p99": 2.0, "non2xx": 0.0, "cpu_us": 50.0} for r in (100.0, 300.0, 200.0)
        ],
        OBSERVED: [
            {"rps": 180.0, "p50": 1.0, "p99": 2.0, "non2xx": 0.0},
            {"rps": 190.0, "p50": 1.0, "p99": 4.0, "non2xx": 0.0, "cpu_us": 55.0},
        ],
    }
    med = medians(runs)
    assert med[BARE]["rps"] == 200.0 and med[BARE]["cpu_us"] == 50.0
    assert med[OBSERVED]["rps"] == 185.0 and med[OBSERVED]["p99"] == 3.0 and med[OBSERVED]["cpu_us"] == 55.0


def test_table_ratios_and_verdicts() -> None:
    med = {
        BARE: {"rps": 1000.0, "p50": 1.0, "p99": 2.0, "non2xx": 0.0, "cpu_us": 50.0},
        OBSERVED: {"rps": 950.0, "p50": 1.1, "p99": 3.0, "non2xx": 0.0, "cpu_us": 52.5},
    }
    lines = table(med, {"access-log lines written": 12.0})
    assert lines[0].split()[:3] == ["path", "req/s", "p50"]
    observed = next(line for line in lines if line.startswith(OBSERVED))
    assert "0.950" in observed and "1.500" in observed and "52.5" in observed
    assert "(target >= 0.90): met" in "\n".join(lines)
    assert "0.952 x the bare path's requests per CPU second" in "\n".join(lines)
    assert lines[-1].strip() == "access-log lines written: 12"
    med[OBSERVED]["rps"] = 800.0
    del med[OBSERVED]["cpu_us"]
    text = "\n".join(table(med))
    assert "0.800 x the bare path's req/s (target >= 0.90): MISSED" in text and "CPU second" not in text


def test_the_trace_backends_are_kumas() -> None:
    module = importlib.import_module("bench.observability.__main__")
    assert module.DEFAULT_TRACER == "zipkin-proto"
    proto = module.trace_backend("zipkin-proto", 9411)
    assert proto["zipkin"] == {"url": "http://127.0.0.1:9411/api/v2/spans", "apiVersion": "httpProto"}
    assert module.trace_backend("zipkin-json", 9411)["zipkin"]["apiVersion"] == "httpJson"
    assert module.trace_backend("otel", 4317) == {
        "type": "OpenTelemetry",
        "openTelemetry": {"endpoint": "127.0.0.1:4317"},
    }


def test_the_zipkin_receiver_counts_protobuf_and_json_spans(tmp_path: Path) -> None:
    from bench.observability.receiver import Counter, ZipkinProtocol, proto_spans, read_counts

    # zipkin.proto3.ListOfSpans: field 1 (Span, length-delimited) three times
    spans = b"".join(b"\x0a" + bytes([len(body)]) + body for body in (b"\x0a\x02ab", b"", b"\x12\x01x"))
    assert proto_spans(spans) == 3

    class Transport:
        written = b""

        def write(self, data: bytes) -> None:
            self.written += data

    counter = Counter(tmp_path / "count")
    protocol = ZipkinProtocol(counter)
    transport = Transport()
    protocol.transport = transport  # type: ignore[assignment]
    head = b"POST /api/v2/spans HTTP/1.1\r\nhost: zipkin\r\n"
    proto = head + b"content-type: application/x-protobuf\r\ncontent-length: %d\r\n\r\n" % len(spans) + spans
    chunked = head + b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    chunked += b"5\r\n[{},{\r\n3\r\n}]\n\r\n0\r\n\r\n"
    stream = proto + chunked
    for i in range(0, len(stream), 7):  # in pieces, as TCP may deliver them
        protocol.data_received(stream[i : i + 7])
    assert transport.written.count(b"HTTP/1.1 202 Accepted") == 2
    counter.write()
    assert read_counts(tmp_path / "count") == (5, 2)
