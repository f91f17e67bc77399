"""The boundary's issuer: what a first run makes, what later runs keep, renew and re-sign."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

from cryptography import x509

from vmlet_facade.providercerts import (
    LEAF_VALIDITY,
    Store,
    Wanted,
    main,
    read_files,
    renew,
)


def _cert(store: Store, entry: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(store[entry]["tls.crt"])


def test_first_run_makes_everything_and_a_second_changes_nothing() -> None:
    store: Store = {}
    wanted = Wanted(("vmlet-provider-memory",), "vmlet-system")
    assert renew(store, wanted) == ["ca", "provider", "facade"]
    provider, facade = _cert(store, "provider"), _cert(store, "facade")
    names = provider.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "vmlet-provider-memory.vmlet-system.svc" in names.get_values_for_type(x509.DNSName)
    client = facade.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert client.get_values_for_type(x509.DNSName) == ["vmlet-facade"]
    assert renew(store, wanted) == []


def test_due_renamed_and_re_signed_pairs_are_reissued() -> None:
    store: Store = {}
    wanted = Wanted(("a",))
    renew(store, wanted)
    ca = store["ca"]["ca.crt"]
    later = dt.datetime.now(dt.UTC) + LEAF_VALIDITY * 0.7
    assert renew(store, wanted, later) == ["provider", "facade"]  # a third of life left
    assert store["ca"]["ca.crt"] == ca
    assert renew(store, Wanted(("a", "b"))) == ["provider"]  # a new name to serve
    del store["ca"]  # a new CA re-signs both
    assert renew(store, Wanted(("a", "b"))) == ["ca", "provider", "facade"]
    assert store["provider"]["ca.crt"] == store["ca"]["ca.crt"] != ca


def test_files_store_keeps_keys_private(tmp_path: Path) -> None:
    assert main(["--service", "memory-provider", "files", str(tmp_path)]) == 0
    first = read_files(tmp_path)
    for entry in ("ca", "provider", "facade"):
        for name in first[entry]:
            mode = stat.S_IMODE((tmp_path / entry / name).stat().st_mode)
            assert mode == (0o640 if name.endswith(".key") else 0o644), (entry, name)
    assert main(["--service", "memory-provider", "files", str(tmp_path)]) == 0
    assert read_files(tmp_path) == first
