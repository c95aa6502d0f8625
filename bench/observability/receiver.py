"""The trace backend of the observability benchmark, in its own process (so its CPU time is measured apart):
a Zipkin v2 receiver (``POST /api/v2/spans``, JSON or protobuf ``ListOfSpans``, answered 202 as Zipkin does) or
an OTLP/gRPC trace receiver (``TraceService/Export``). Each decodes what it gets and counts the spans; the
counts go to a file after each batch.

    python -m bench.observability.receiver zipkin|otel PORT COUNT_FILE
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

OTLP_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class Counter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.spans = 0
        self.batches = 0

    def add(self, spans: int) -> None:
        with self.lock:
            self.spans += spans
            self.batches += 1

    def write(self) -> None:
        with self.lock:
            self.path.write_text(f"{self.spans} {self.batches}\n")


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def proto_spans(body: bytes) -> int:
    """The spans of a protobuf zipkin.proto3.ListOfSpans (field 1, repeated Span), read from the wire format."""
    count = i = 0
    while i < len(body):
        key, i = _varint(body, i)
        if key & 7 != 2:
            raise ValueError(f"unexpected wire type {key & 7}")
        size, i = _varint(body, i)
        i += size
        count += key >> 3 == 1
    return count


class ZipkinProtocol(asyncio.Protocol):
    """HTTP/1.1 ``POST /api/v2/spans`` (content-length or chunked bodies, keep-alive), answered 202 as Zipkin
    does. Written on asyncio's bare protocol, not http.server: this process shares the benchmark's two cores,
    and a thread and a parser object per POST cost it ~10x the CPU."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (request := self._next_request()) is not None:
            headers, body = request
            proto = b"protobuf" in headers.get(b"content-type", b"")
            self.counter.add(proto_spans(body) if proto else len(json.loads(body)))
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")

    def _next_request(self) -> tuple[dict[bytes, bytes], bytes] | None:
        """The first complete request of the buffer (removed from it), or None while it is incomplete."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        lines = self.buffer[:head_end].split(b"\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
        at = head_end + 4
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            chunks = []
            while True:
                line_end = self.buffer.find(b"\r\n", at)
                if line_end < 0:
                    return None
                size = int(self.buffer[at:line_end].split(b";")[0], 16)
                if len(self.buffer) < line_end + 2 + size + 2:
                    return None
                chunks.append(self.buffer[line_end + 2 : line_end + 2 + size])
                at = line_end + 2 + size + 2  # no trailers: the last chunk ends in an empty line
                if size == 0:
                    break
            body = b"".join(chunks)
        else:
            size = int(headers.get(b"content-length", b"0"))
            if len(self.buffer) < at + size:
                return None
            body, at = self.buffer[at : at + size], at + size
        self.buffer = self.buffer[at:]
        return headers, body


def zipkin(port: int, counter: Counter) -> Callable[[], None]:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(lambda: ZipkinProtocol(counter), "127.0.0.1", port))

    def run() -> None:
        loop.run_forever()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stop() -> None:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return stop


def otel(port: int, counter: Counter) -> Callable[[], None]:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        message = trace_service_pb2.ExportTraceServiceRequest()  # type: ignore[attr-defined]
        message.ParseFromString(request)
        spans = 0
        for resource_spans in message.resource_spans:
            # OTLP's ScopeSpans; older bundled protos name the same field InstrumentationLibrarySpans
            scopes = (
                getattr(resource_spans, "scope_spans", None) or resource_spans.instrumentation_library_spans
            )
            spans += sum(len(scope.spans) for scope in scopes)
        counter.add(spans)
        return b""  # an empty ExportTraceServiceResponse: everything accepted

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(export)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(OTLP_SERVICE, {"Export": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return lambda: server.stop(1).wait()


def read_counts(path: Path) -> tuple[int, int]:
    """(spans, batches) a stopped receiver took."""
    try:
        spans, batches = path.read_text().split()
    except (OSError, ValueError):
        return 0, 0
    return int(spans), int(batches)


def main(argv: list[str]) -> None:
    kind, port, path = argv[0], int(argv[1]), Path(argv[2])
    counter = Counter(path)
    stop = {"zipkin": zipkin, "otel": otel}[kind](port, counter)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    stop()
    counter.write()


if __name__ == "__main__":
    main(sys.argv[1:])
