"""Simulated data planes: N real gRPC ADS clients in one process (run as a child of ``bench/controlplane``).

Each client behaves like Envoy on a state-of-the-world ADS stream: wildcard CDS and LDS, then EDS for the EDS
clusters it was given, RDS for its HTTP outbound listeners and SDS for the mesh secrets, ACKing every response.

A client whose stream ends (the control plane stopped) reconnects with a jittered exponential back-off (up to
1 s), and asks for everything again without naming the versions it holds (as a restarted Envoy does: the worst case for the
control plane, which must send every type again); it has synced on the new stream once it has ACKed every type.

Protocol with the parent, one JSON object per line:
  stdin  "go"                                        connect every client (the Dataplanes are registered)
  stdout {"event": "synced", "count": N}            every client ACKed CDS, EDS, LDS and SDS at least once
  stdin  "mark"                                      start watching for the next LDS version per client
  stdout {"event": "marked"}
  stdout {"event": "updated", "times": [...]}       wall-clock time each client ACKed its next LDS version
  stdin  "restart"                                   start watching for every client to sync on a new stream
  stdout {"event": "restart-marked"}
  stdout {"event": "resynced", "time": T}            wall-clock time the last client synced on a new stream
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


class Client:
    def __init__(
        self, node_id: str, mesh: str, outbound_listeners: list[str], token: str, shared: Shared
    ) -> None:
        self.node_id = node_id
        self.token = token
        self.mesh = mesh
        self.rds_names = outbound_listeners
        self.shared = shared
        self.acked: dict[str, str] = {}
        self.synced = False
        self.resynced = 0  # the restart number of the last restart after which this client synced again
        self.names: dict[str, list[str]] = {}
        self.queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

    def request(self, type_url: str, names: list[str], version: str = "", nonce: str = "") -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
        )
        self.queue.put_nowait(req)

    async def requests(self):  # type: ignore[no-untyped-def]
        first = True
        while True:
            req = await self.queue.get()
            if first:
                req.node.CopyFrom(base_pb2.Node(id=self.node_id, cluster="bench"))
                first = False
            yield req

    async def run(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await self.stream(stub)
            except grpc.aio.AioRpcError:
                pass
            self.queue = asyncio.Queue()
            failures = failures + 1 if time.monotonic() - started < 5 else 1
            # jittered exponential back-off as Envoy's (0.5 s doubling up to 30 s there; 0.1 s up to 1 s here,
            # so that the restart figure measures the control plane rather than the clients' waiting)
            await asyncio.sleep(random.uniform(0, min(1.0, 0.1 * 2**failures)))

    async def stream(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
        stream_no = self.shared.stream_no
        seen: set[str] = set()
        secrets = [f"identity_cert:secret:{self.mesh}", f"mesh_ca:secret:{self.mesh}"]
        names: dict[str, list[str]] = {CDS: [], LDS: [], SDS: secrets}
        if EDS in self.names:
            names[EDS] = self.names[EDS]
        if RDS in self.names:
            names[RDS] = self.names[RDS]
        for t in (CDS, EDS, LDS, RDS, SDS):
            if t in names:
                self.request(t, names[t])
        self.names = names
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else None
        call = stub.StreamAggregatedResources(self.requests(), metadata=metadata)
        async for resp in call:
            t = resp.type_url
            if t == CDS:
                eds = []
                for res in resp.resources:
                    c = cluster_pb2.Cluster.FromString(res.value)
                    if c.type == cluster_pb2.Cluster.EDS:
                        eds.append(c.name)
                if sorted(eds) != names.get(EDS):
                    names[EDS] = sorted(eds)
                    self.request(EDS, names[EDS])
            elif t == LDS and self.rds_names and RDS not in names:
                names[RDS] = self.rds_names
                self.request(RDS, names[RDS])
            self.request(t, names.get(t, []), resp.version_info, resp.nonce)
            previous = self.acked.get(t)
            self.acked[t] = resp.version_info
            seen.add(t)
            if t == LDS and previous is not None and previous != resp.version_info:
                self.shared.lds_changed(self)
            if not self.synced and all(k in self.acked for k in (CDS, EDS, LDS, SDS)):
                self.synced = True
                self.shared.client_synced()
            if stream_no and self.resynced < stream_no and all(k in seen for k in (CDS, EDS, LDS, SDS)):
                self.resynced = stream_no
                self.shared.client_resynced()


class Shared:
    def __init__(self, total: int) -> None:
        self.total = total
        self.synced = 0
        self.watching = False
        self.updated: dict[str, float] = {}
        self.stream_no = 0  # restarts announced by the parent
        self.resynced = 0

    def client_resynced(self) -> None:
        self.resynced += 1
        if self.resynced == self.total:
            emit({"event": "resynced", "time": time.time()})

    def client_synced(self) -> None:
        self.synced += 1
        if self.synced == self.total:
            emit({"event": "synced", "count": self.total})

    def lds_changed(self, client: Client) -> None:
        if self.watching and client.node_id not in self.updated:
            self.updated[client.node_id] = time.time()
            if len(self.updated) == self.total:
                emit({"event": "updated", "times": list(self.updated.values())})
                self.watching = False


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--xds", required=True)
    ap.add_argument(
        "--plan",
        required=True,
        help="JSON file: [[node_id, mesh, [outbound listener names], data-plane token or ''], ...]",
    )
    ap.add_argument("--ca-file", help="CA certificate (PEM) of the control plane's xDS server: use TLS")
    ap.add_argument("--channels", type=int, default=8)
    args = ap.parse_args()
    plan = json.loads(await asyncio.to_thread(Path(args.plan).read_text))
    shared = Shared(len(plan))
    options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # the channel's own reconnection back-off (1 s, growing to 120 s by default) follows the streams' one
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if args.ca_file:
        root = await asyncio.to_thread(Path(args.ca_file).read_bytes)
        creds = grpc.ssl_channel_credentials(root_certificates=root)
        channels = [grpc.aio.secure_channel(args.xds, creds, options=options) for _ in range(args.channels)]
    else:
        channels = [grpc.aio.insecure_channel(args.xds, options=options) for _ in range(args.channels)]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch) for ch in channels]
    clients = [Client(n, m, rds, token, shared) for n, m, rds, token in plan]
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, _context: None)  # streams cut by a restart leave noise only
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    go = asyncio.Event()

    async def control() -> None:
        while line := await reader.readline():
            if line.strip() == b"go":
                go.set()
            elif line.strip() == b"mark":
                shared.updated.clear()
                shared.watching = True
                emit({"event": "marked"})
            elif line.strip() == b"restart":
                shared.stream_no += 1
                shared.resynced = 0
                emit({"event": "restart-marked"})
        raise SystemExit(0)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(control())
        await go.wait()
        for i, c in enumerate(clients):
            tg.create_task(c.run(stubs[i % len(stubs)]))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (SystemExit, KeyboardInterrupt):
        pass
