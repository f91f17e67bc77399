"""A minimal cluster DNS for the worker node of hack/worker-e2e.sh (no CoreDNS is built here).

Usage: python hack/worker/clusterdns.py LISTEN_IP KUBECONFIG [DOMAIN]

Answers A queries for SERVICE.NAMESPACE.svc.DOMAIN with the Service's ClusterIP (the names pods
resolve through the search path the kubelet writes), from a list of the Services refreshed every
two seconds with kubectl. A known name asked for another type gets an empty answer (so a
resolver asking A and AAAA does not wait); anything else NXDOMAIN. UDP on LISTEN_IP:53 only: no
recursion, nothing leaves this machine.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time

_TYPE_A, _CLASS_IN = 1, 1


def _services(kubeconfig: str, domain: str) -> dict[str, str]:
    out = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", "get", "services", "-A", "-o", "json"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    names: dict[str, str] = {}
    for svc in json.loads(out)["items"]:
        ip = svc["spec"].get("clusterIP")
        if ip and ip != "None":
            meta = svc["metadata"]
            names[f"{meta['name']}.{meta['namespace']}.svc.{domain}"] = ip
    return names


def _question(packet: bytes) -> tuple[str, int, int, int]:
    """The first question's name, type, class, and the offset past it."""
    labels, pos = [], 12
    while True:
        length = packet[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(packet[pos + 1:pos + 1 + length].decode("ascii").lower())
        pos += 1 + length
    qtype, qclass = struct.unpack("!HH", packet[pos:pos + 4])
    return ".".join(labels), qtype, qclass, pos + 4


def _answer(packet: bytes, names: dict[str, str]) -> bytes:
    (ident, flags, qdcount) = struct.unpack("!HHH", packet[:6])
    name, qtype, qclass, end = _question(packet)
    rd = flags & 0x0100
    ip = names.get(name.rstrip("."))
    rcode = 0 if ip is not None else 3
    answers = b""
    if ip is not None and qtype == _TYPE_A and qclass == _CLASS_IN:
        # The name by pointer to the question (offset 12), TTL 5 s, four address bytes.
        answers = struct.pack("!HHHIH", 0xC00C, _TYPE_A, _CLASS_IN, 5, 4) + socket.inet_aton(ip)
    header = struct.pack("!HHHHHH", ident, 0x8000 | 0x0400 | rd | rcode, 1,
                         1 if answers else 0, 0, 0)
    del qdcount
    return header + packet[12:end] + answers


def main() -> None:
    listen, kubeconfig = sys.argv[1], sys.argv[2]
    domain = sys.argv[3] if len(sys.argv) > 3 else "cluster.local"
    names: dict[str, str] = {}

    def refresh() -> None:
        nonlocal names
        while True:
            try:
                names = _services(kubeconfig, domain)
            except Exception as exc:  # the next round retries; the last list keeps serving
                print(f"clusterdns: listing Services failed: {exc}", file=sys.stderr, flush=True)
            time.sleep(2)

    threading.Thread(target=refresh, daemon=True).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, 53))
    print(f"clusterdns: serving {domain} on {listen}:53", flush=True)
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            sock.sendto(_answer(packet, names), peer)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            continue  # not a query this server understands: no answer


if __name__ == "__main__":
    main()
