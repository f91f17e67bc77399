"""vcsim is a real vSphere API: hosts, templates, clone, and it leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pyVmomi import vim

from vmlet_localenv.vcsim import TEMPLATE_FOLDER, VcSim, _wait_task


def test_lists_cluster_hosts_datastore_network(vcsim: VcSim) -> None:
    with vcsim.connect() as si:
        dc = si.RetrieveContent().rootFolder.childEntity[0]
        cluster = dc.hostFolder.childEntity[0]
        assert isinstance(cluster, vim.ClusterComputeResource)
        assert len(cluster.host) >= 3
        assert all(h.runtime.connectionState == "connected" for h in cluster.host)
        assert dc.datastore and dc.network


def test_clones_template_onto_a_host(vcsim: VcSim) -> None:
    with vcsim.connect() as si:
        content = si.RetrieveContent()
        dc = content.rootFolder.childEntity[0]
        folder = next(f for f in dc.vmFolder.childEntity if f.name == TEMPLATE_FOLDER)
        template = next(vm for vm in folder.childEntity if vm.name == "debian-12")
        assert template.config.template is True
        host = dc.hostFolder.childEntity[0].host[1]
        spec = vim.vm.CloneSpec(
            location=vim.vm.RelocateSpec(host=host, pool=dc.hostFolder.childEntity[0].resourcePool),
            powerOn=False, template=False,
        )
        clone = _wait_task(template.CloneVM_Task(folder=dc.vmFolder, name="clone-1", spec=spec))
        try:
            assert clone.runtime.host == host
            _wait_task(clone.PowerOnVM_Task())
            assert clone.runtime.powerState == "poweredOn"
            assert clone.config.hardware.numCPU == 1
        finally:
            _wait_task(clone.PowerOffVM_Task())
            _wait_task(clone.Destroy_Task())


def test_credentials_are_checked(vcsim: VcSim) -> None:
    from pyVim.connect import SmartConnect

    try:
        SmartConnect(host="127.0.0.1", port=vcsim.port, user=vcsim.username, pwd="wrong",
                     sslContext=vcsim.ssl_context())
    except vim.fault.InvalidLogin:
        return
    raise AssertionError("vcsim accepted a wrong password")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_sigkilled_parent_leaves_no_simulator(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import time
        from vmlet_localenv.vcsim import VcSim
        sim = VcSim(state_dir={str(tmp_path)!r}).start()
        print(sim.process.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_interrupted_pytest_run_tears_down(tmp_path: Path) -> None:
    """SIGTERM to a pytest run ends it like Ctrl-C: session fixtures stop their peers."""
    root_conftest = Path(__file__).parents[1] / "conftest.py"
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        exec(open({str(root_conftest)!r}).read())
        import pytest
        from vmlet_localenv.vcsim import VcSim

        @pytest.fixture(scope="session")
        def vcsim():
            sim = VcSim().start()
            yield sim
            sim.stop()
    """))
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import time
        def test_hang(vcsim):
            print("VCSIM", vcsim.process.pid, flush=True)
            time.sleep(600)
    """))
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    assert run.stdout is not None
    line = ""
    while "VCSIM" not in line:
        line = run.stdout.readline()
        assert line, "the inner pytest run ended before starting vcsim"
    child = int(line.split()[-1])
    run.send_signal(signal.SIGTERM)
    run.wait(30)
    assert not _alive(child)
