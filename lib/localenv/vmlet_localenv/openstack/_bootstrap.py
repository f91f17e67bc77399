"""Registers what a fresh OpenStack env needs, through its real APIs, with openstacksdk.

Runs as a script under the OpenStack virtualenv's Python (``python _bootstrap.py PHASE``), never
imported by vmlet: the env's facts arrive as JSON on stdin, and progress goes to stderr.

- ``identity``, once Keystone answers (after ``keystone-manage bootstrap`` made the admin): the
  service project, a user per service, the catalog, and the ``vmlet`` project and user.
- ``compute``, once Nova and Glance answer: flavors, the test image and roomy quotas.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

# name, vCPUs, RAM MiB, root disk GiB
FLAVORS = [
    ("m1.tiny", 1, 512, 1),
    ("m1.small", 1, 2048, 10),
    ("m1.medium", 2, 4096, 20),
    ("m1.large", 4, 8192, 40),
    ("m1.xlarge", 8, 16384, 80),
]
IMAGE_NAME = "vmlet-test-image"


def _log(msg: str) -> None:
    print(f"[bootstrap] {msg}", file=sys.stderr, flush=True)


def _admin(facts: dict[str, Any]) -> Any:
    import openstack  # the OpenStack virtualenv's own openstacksdk; vmlet imports only FLAVORS

    a = facts["admin"]
    return openstack.connect(
        auth_url=a["auth_url"], username=a["username"], password=a["password"],
        project_name=a["project_name"], user_domain_name="Default", project_domain_name="Default",
        region_name=a["region_name"], identity_api_version="3",
    )


def identity(facts: dict[str, Any]) -> None:
    """Runs once, on the fresh database keystone-manage bootstrap left: creates without looking."""
    conn = _admin(facts)
    ident = conn.identity
    region = facts["admin"]["region_name"]
    # keystone-manage bootstrap made admin, manager, member, reader and service.
    roles = {r.name: r for r in ident.roles()}
    roles["vmlet-operator"] = ident.create_role(name="vmlet-operator")

    service_project = ident.create_project(
        name="service", domain_id="default", description="OpenStack service users")
    for user, password in facts["service_users"].items():
        u = ident.create_user(name=user, password=password, domain_id="default")
        for role in ("admin", "service"):
            ident.assign_project_role_to_user(service_project, u, roles[role])
    _log(f"service users: {', '.join(facts['service_users'])}")

    names = {"placement": "placement", "image": "glance", "network": "neutron", "compute": "nova",
             "block-storage": "cinder", "volumev3": "cinderv3"}
    for stype, url in facts["endpoints"].items():
        if stype == "identity":
            continue  # keystone-manage bootstrap registered it
        svc = ident.create_service(name=names[stype], type=stype, enabled=True)
        for interface in ("public", "internal"):
            ident.create_endpoint(service_id=svc.id, interface=interface, url=url,
                                  region_id=region)
    _log("catalog: " + ", ".join(sorted(facts["endpoints"])))

    v = facts["vmlet"]
    project = ident.create_project(
        name=v["project_name"], domain_id="default", description="vmlet's provider")
    user = ident.create_user(name=v["username"], password=v["password"], domain_id="default",
                             default_project_id=project.id)
    for role in ("member", "vmlet-operator"):
        ident.assign_project_role_to_user(project, user, roles[role])
    _log(f"project and user {v['username']} (roles member, vmlet-operator)")


def compute(facts: dict[str, Any]) -> None:
    conn = _admin(facts)
    have = {f.name for f in conn.compute.flavors()}
    for name, vcpus, ram, disk in FLAVORS:
        if name not in have:
            conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk, is_public=True)
    _log("flavors: " + ", ".join(f[0] for f in FLAVORS))

    if conn.image.find_image(IMAGE_NAME) is None:
        # A tiny raw disk: the fake hypervisor never reads it, but Glance stores and checksums it.
        data = b"vmlet test image\n" + bytes(64 * 1024 - 17)
        conn.image.create_image(
            name=IMAGE_NAME, data=data, disk_format="raw", container_format="bare",
            visibility="public", allow_duplicates=True, validate_checksum=False,
        )
    deadline = time.monotonic() + 120
    while (img := conn.image.find_image(IMAGE_NAME)) is None or img.status != "active":
        if time.monotonic() > deadline:
            raise SystemExit(f"image {IMAGE_NAME} not active: {img and img.status}")
        time.sleep(0.5)
    _log(f"image {IMAGE_NAME} ({img.id}) active")

    project = conn.identity.find_project(facts["vmlet"]["project_name"], domain_id="default")
    conn.compute.update_quota_set(
        project.id, instances=1000, cores=8000, ram=64 * 1024 * 1024, key_pairs=1000,
        server_groups=1000, server_group_members=1000, metadata_items=1024,
    )
    conn.block_storage.update_quota_set(project.id, volumes=1000, gigabytes=100000,
                                        snapshots=1000)
    _log("quotas of the vmlet project raised")
    print(json.dumps({"image_id": img.id, "flavors": [f[0] for f in FLAVORS]}))


if __name__ == "__main__":
    phase = sys.argv[1]
    facts = json.load(sys.stdin)
    {"identity": identity, "compute": compute}[phase](facts)
