"""The official `kubernetes` package's credential loader, as a short-lived child process.

The facade finds its apiserver and credentials with that package's loader, so that whatever
kubeconfig kubectl accepts, the facade accepts. Importing the package costs ~19 MB of resident
memory, which a Python process never gives back, and a facade replica needs the loader only at
start, after a 401 and as an exec plugin's token nears its expiry. So ``config.py`` runs this
file (``python -I loader.py``, no package around it) for each load: it reads one request as JSON on
stdin, loads, and prints one answer as JSON on stdout:

  request  {"kubeconfig": PATH, "context": NAME|null}
           or {"in_cluster": {"token_file": PATH, "ca_file": PATH}}
  answer   {"server", "insecure", "authorization", "expires_at", "token_file",
            "ca_file" or "ca_pem", "cert_file" or "cert_pem", "key_file" or "key_pem"} (absent
           or null where the credentials have none), or {"error": ONE LINE}

Files the kubeconfig names come back as paths; inline data (``*-data``, an exec plugin's
certificate) as PEM text, since the loader writes it to temporary files that go with it.
``expires_at`` (Unix seconds) is an exec plugin's or auth provider's expiry. In-cluster, the
answer names the token and CA files, which the kubelet rotates in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load", "main"]


class LoadError(Exception):
    """The credentials cannot be loaded; the message is one line."""


def load(request: dict[str, Any]) -> dict[str, Any]:
    """The answer for one request (see the module's docstring); raises LoadError."""
    from kubernetes import client

    configuration = client.Configuration()
    answer: dict[str, Any] = {}
    in_cluster = request.get("in_cluster")
    if in_cluster is not None:
        from kubernetes.config.incluster_config import InClusterConfigLoader

        with _loader_errors("in-cluster config"):
            InClusterConfigLoader(token_filename=in_cluster["token_file"],
                                  cert_filename=in_cluster["ca_file"],
                                  ).load_and_set(configuration)  # type: ignore[no-untyped-call]
        answer["token_file"] = in_cluster["token_file"]
        answer["ca_file"] = configuration.ssl_ca_cert
    else:
        from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

        where = str(request["kubeconfig"])
        files = [os.path.expanduser(p) for p in where.split(os.pathsep) if p]
        inline = tempfile.mkdtemp(prefix="vmlet-kubeconfig-load-")
        try:
            with _loader_errors(f"kubeconfig {where}"):
                merged = KubeConfigMerger(where)  # type: ignore[no-untyped-call]
                if merged.config is None:
                    raise LoadError("Invalid kube-config file. No configuration found.")
                loader = KubeConfigLoader(  # type: ignore[no-untyped-call]
                    config_dict=merged.config, config_base_path=None, temp_file_path=inline,
                    active_context=request.get("context") or _first_current_context(files))
                loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
            expiry = getattr(loader, "expiry", None)
            answer["expires_at"] = expiry.timestamp() if expiry is not None else None
            # As loaded: asking the Configuration would run its refresh hook, a plugin's
            # second run.
            answer["authorization"] = (configuration.api_key.get("BearerToken")
                                       or configuration.api_key.get("authorization"))
            for name, path in (("ca", configuration.ssl_ca_cert),
                               ("cert", configuration.cert_file),
                               ("key", configuration.key_file)):
                if path and Path(path).is_relative_to(inline):  # inline data: the content
                    answer[f"{name}_pem"] = Path(path).read_text()
                elif path:  # a file the kubeconfig names: kept, as a renewed one is re-read
                    answer[f"{name}_file"] = str(path)
        finally:
            shutil.rmtree(inline, ignore_errors=True)
    answer["server"] = str(configuration.host).rstrip("/")
    answer["insecure"] = not configuration.verify_ssl
    return answer


@contextlib.contextmanager
def _loader_errors(what: str) -> Iterator[None]:
    """The loader's failures as one-line LoadErrors. It logs, rather than raises, a failing
    exec plugin and loads no credentials; that is a failure here too."""
    from kubernetes.config import ConfigException

    logged: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    catch = Catch(logging.ERROR)
    root = logging.getLogger()
    root.addHandler(catch)
    try:
        yield
    except LoadError as err:
        raise LoadError(f"{what}: {_one_line(err)}") from None
    except ConfigException as err:
        raise LoadError(f"{what}: {_one_line(err)}") from None
    except yaml.YAMLError as err:
        raise LoadError(f"{what}: not valid YAML: {_one_line(err)}") from None
    except (OSError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise LoadError(f"{what}: {type(err).__name__}: {_one_line(err)}") from None
    finally:
        root.removeHandler(catch)
    if logged:
        raise LoadError(f"{what}: {_one_line(logged[-1])}")


def _first_current_context(files: list[str]) -> str | None:
    """The current context of a list of kubeconfigs as kubectl takes it: the first file's that
    sets one (the loader would take the last)."""
    if len(files) < 2:
        return None
    for path in files:
        if os.path.isfile(path):
            doc = yaml.safe_load(Path(path).read_text())
            if isinstance(doc, dict) and doc.get("current-context"):
                return str(doc["current-context"])
    return None


def _one_line(err: object) -> str:
    return " ".join(str(err).split())


def main() -> int:
    """One request on stdin, one answer on stdout; exit 0 either way once the answer is out."""
    try:
        answer = load(json.loads(sys.stdin.read()))
    except LoadError as err:
        answer = {"error": str(err)}
    except (ValueError, KeyError, TypeError) as err:
        answer = {"error": f"bad request to the loader: {_one_line(err)}"}
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
