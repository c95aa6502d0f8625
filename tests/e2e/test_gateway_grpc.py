"""A Kong Service with ``protocol: grpc`` behind the gateway: a real gRPC server (HTTP/2 upstream) reached by a
real gRPC client through a real gateway Envoy."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.harness import ControlPlane, wait_for
from tests.e2e.test_gateway_proxy import MESH, Gateway, _created

pytestmark = pytest.mark.e2e

METHOD = "/isthmus.test.Echo/Say"


def _identity(data: bytes) -> bytes:
    return data


class EchoServer:
    """A gRPC server answering ``METHOD`` with ``echo:`` + the request bytes, on its own event loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _say(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"echo:" + request

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            self._say, request_deserializer=_identity, response_serializer=_identity
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("isthmus.test.Echo", {"Say": handler}),))  # fmt: skip
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self.stopping = asyncio.Event()
        self.ready.set()
        await self.stopping.wait()
        await server.stop(None)

    def start(self) -> EchoServer:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, EchoServer]]:
    tmp: Path = tmp_path_factory.mktemp("gateway-grpc")
    cp = ControlPlane(tmp).start()
    echo = EchoServer().start()
    kong = httpx.Client(base_url=f"http://127.0.0.1:{cp.gateway_admin_port}", timeout=10)
    gw: Gateway | None = None
    try:
        cp.apply(MESH)
        _created(kong.put("/services/echo", json={"url": f"grpc://127.0.0.1:{echo.port}"}))
        _created(kong.put("/services/echo/routes/echo", json={"protocols": ["grpc"], "paths": ["/isthmus.test.Echo/"], "strip_path": False}))  # fmt: skip
        gw = Gateway(tmp, cp, "edge-grpc").start()
        yield gw, echo
    finally:
        if gw is not None:
            gw.stop()
        kong.close()
        echo.stop()
        cp.stop()


def test_grpc_service_through_the_gateway(setup: tuple[Gateway, EchoServer]) -> None:
    gw, _echo = setup
    with grpc.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
        say = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)

        def answered() -> bytes | None:
            try:
                return bytes(say(b"hello", timeout=2))
            except grpc.RpcError:
                return None

        assert wait_for(answered, timeout=60, what="a gRPC answer through the gateway") == b"echo:hello"
