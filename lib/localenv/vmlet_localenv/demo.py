"""`make demo`: vmlet's main job on an embedded default, printed step by step.

Starts the local environment in a temporary directory, shows what runs, and tears it all down.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from vmlet_localenv.environment import IAAS_CHOICES, Environment

__all__ = ["main"]


def step(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmlet-demo", description=__doc__)
    parser.add_argument("--iaas", choices=IAAS_CHOICES, default="memory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vmlet-demo-") as tmp:
        step("starting a local Kubernetes control plane (etcd, apiserver, scheduler, "
             "controller-manager) and vcsim")
        started = time.monotonic()
        env = Environment(directory=Path(tmp), iaas=args.iaas).start()
        try:
            step(f"ready in {time.monotonic() - started:.1f}s")
            cp = env.control_plane
            assert cp is not None and env.vcsim is not None
            version = json.loads(cp.kubectl("version", "-o", "json").stdout)["serverVersion"]
            step(f"kubectl version: server {version['gitVersion']}")
            print(cp.kubectl("get", "--raw", "/readyz?verbose").stdout.strip().splitlines()[-1])
            with env.vcsim.connect() as si:
                dc = si.RetrieveContent().rootFolder.childEntity[0]
                hosts = [h.name for h in dc.hostFolder.childEntity[0].host]
            step(f"vcsim at {env.vcsim.url}: hosts {', '.join(hosts)}")
            step("the facade and providers are not built yet: the demo stops here "
                 "(control plane and vcsim were up)")
        finally:
            env.stop()
            step("everything stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
