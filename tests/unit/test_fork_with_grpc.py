"""A process of the ``isthmus`` command that runs gRPC can start children reliably (the gateway agent starts its
Envoy beside a gRPC rate-limit service): gRPC's fork handlers must not abort the child before exec."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import asyncio
import isthmus.cli  # what the isthmus command imports first
import grpc

async def main() -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    busy = True

    async def call() -> None:
        while busy:
            try:
                await channel.unary_unary("/x.Y/Z")(b"", timeout=1)
            except grpc.RpcError:
                pass

    callers = [asyncio.create_task(call()) for _ in range(4)]
    failed = 0
    for _ in range(120):
        child = await asyncio.create_subprocess_exec(
            "/bin/true", preexec_fn=lambda: None, start_new_session=True,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        failed += await child.wait() != 0
    busy = False
    for task in callers:
        task.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    await channel.close()
    await server.stop(None)
    print("failed", failed)

asyncio.run(main())
"""


def test_children_started_beside_grpc_reach_exec() -> None:
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "failed 0" in run.stdout, run.stdout + run.stderr[-2000:]
