"""The kubelet port's authentication and authorization, node endpoints, TLS policy and request
limits (the real reviews are proven against the apiserver in tests/kubelet_api/)."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

from kubeletapi_server.server_env import (
    Env,
    get,
)
from vmlet_localenv.pki import CertificateAuthority


async def test_who_may_call(env: Env, pki: tuple[CertificateAuthority, Path]) -> None:
    assert (await get(env, "/pods"))[0] == 401
    foreign = CertificateAuthority(pki[1] / "foreign", "foreign-ca")
    stranger = foreign.issue("stranger", common_name="kube-apiserver-kubelet-client",
                             client=True)
    assert (await get(env, "/pods", client=stranger))[0] == 401  # a 401, not a TLS failure
    server_only = env.ca.issue("server-only", common_name="kube-apiserver-kubelet-client",
                               server=True)
    assert (await get(env, "/pods", client=server_only))[0] == 401  # not for client auth
    status, body = await get(env, "/pods", client=env.apiserver)
    assert status == 200 and json.loads(body)["items"][0]["metadata"]["name"] == "vm"
    assert (await get(env, "/pods", token="nonsense"))[0] == 401
    status, body = await get(env, "/pods", token="bob-token")
    assert status == 403
    assert body == "Forbidden (user=bob, verb=get, resource=nodes, subresource(s)=[pods proxy])\n"
    assert (await get(env, "/healthz", token="alice-token")) == (200, "ok")
    assert (await get(env, "/nowhere", token="alice-token"))[0] == 404
    assert (await get(env, "/containerLogs/ns/other/vm", token="alice-token"))[0] == 404
    assert (await get(env, "/containerLogs/ns/vm/nope", token="alice-token"))[0] == 404


async def test_node_endpoints(env: Env) -> None:
    status, body = await get(env, "/stats/summary", token="alice-token")
    assert status == 200 and json.loads(body)["node"]["nodeName"] == "n1"
    status, body = await get(env, "/metrics/resource", token="alice-token")
    assert status == 200 and "resource_scrape_error 0" in body
    status, body = await get(env, "/runningpods/", token="alice-token")
    assert json.loads(body)["items"][0]["spec"]["containers"][0]["image"] == "debian"


async def _handshake(env: Env, ctx: ssl.SSLContext) -> str | None:
    """The cipher the kubelet port agreed to with ``ctx``; None when it refused the handshake."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", env.port, ssl=ctx, server_hostname="127.0.0.1"), 10)
    except (ssl.SSLError, ConnectionError):
        return None
    cipher = writer.get_extra_info("cipher")
    writer.close()
    return str(cipher[0]) if cipher else ""


async def test_tls_is_1_3_or_1_2_with_aead_suites_only(env: Env) -> None:
    cbc = env.context()
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:"
                    "AES128-SHA:AES256-SHA:@SECLEVEL=0")  # CBC with SHA-1 MACs, nothing else
    cbc.minimum_version = cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(env, cbc) is None
    non_pfs = env.context()
    non_pfs.set_ciphers("AES128-GCM-SHA256:AES256-GCM-SHA384")  # AEAD without ECDHE
    non_pfs.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(env, non_pfs) is None
    aead = env.context()
    aead.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(env, aead) in ("ECDHE-ECDSA-AES128-GCM-SHA256",
                                           "ECDHE-ECDSA-AES256-GCM-SHA384",
                                           "ECDHE-ECDSA-CHACHA20-POLY1305")
    modern = env.context()
    modern.minimum_version = ssl.TLSVersion.TLSv1_3
    assert await _handshake(env, modern) in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
                                             "TLS_CHACHA20_POLY1305_SHA256")
    old = env.context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    assert await _handshake(env, old) is None


async def test_a_request_head_over_the_limit_is_answered_431(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port, ssl=env.context(),
                                                   server_hostname="127.0.0.1")
    try:
        writer.write(b"GET /pods HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 * 1024)
                     + b"\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # then the server closes
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:80]
