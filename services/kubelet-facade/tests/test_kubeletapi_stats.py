"""CPU counters made up for providers that report only a rate (the vSphere provider's quick
stats), so metrics-server, which reads only cumulative counters, shows their nodes and pods."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import pod_pb2
from vmlet_facade.kubeletapi.stats import CpuCounters, resource_metrics, summary


def _at(seconds: float) -> Timestamp:
    return Timestamp(seconds=int(seconds), nanos=int(seconds % 1 * 1e9))


def _rate_only(at: float, node_rate: int, pod_rate: int) -> kep.GetStatsSummaryResponse:
    return kep.GetStatsSummaryResponse(
        node_cpu=kep.CpuStats(time=_at(at), usage_nano_cores=node_rate),
        node_memory=kep.MemoryStats(time=_at(at), working_set_bytes=1 << 30),
        node_start_time=_at(20),
        pods=[kep.PodStats(ref=pod_pb2.PodRef(namespace="ns", name="vm", uid="u1"),
                           start_time=_at(50),
                           cpu=kep.CpuStats(time=_at(at), usage_nano_cores=pod_rate),
                           memory=kep.MemoryStats(time=_at(at), working_set_bytes=1 << 20))])


def _sample(text: str, prefix: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(prefix))
    return float(line.split(" ")[-2])


def test_a_rate_becomes_a_counter_whose_rate_it_is() -> None:
    counters = CpuCounters()

    def scrape(at: float, rate: int) -> str:
        return resource_metrics(_rate_only(at, 2 * rate, rate), lambda ns, n: ["vm"],
                                counters, node="n1")

    first = scrape(100, 200_000_000)
    container = 'container_cpu_usage_seconds_total{container="vm",namespace="ns",pod="vm"}'
    # First seen: the rate over the uptime (0.2 cores for the 50 s since the VM started;
    # 0.4 for the node's 80 s).
    assert _sample(first, container) == 10.0
    assert _sample(first, "node_cpu_usage_seconds_total") == 32.0
    second = scrape(110, 400_000_000)
    # Then the integral: what metrics-server divides by the 10 s is the mean rate, 0.3 cores.
    assert _sample(second, container) == 13.0
    assert _sample(second, 'pod_cpu_usage_seconds_total{namespace="ns",pod="vm"}') == 13.0
    assert _sample(second, "node_cpu_usage_seconds_total") == 38.0
    assert _sample(scrape(110, 900_000_000), container) == 13.0  # the same report again
    assert _sample(scrape(105, 900_000_000), container) == 13.0  # an older one: never back


def test_the_summary_and_the_metrics_share_the_counters() -> None:
    counters = CpuCounters()
    resource_metrics(_rate_only(100, 2, 1), lambda ns, n: ["vm"], counters, node="n1")
    doc = summary("n1", _rate_only(120, 4, 3), lambda ns, n: ["vm"], counters)
    assert doc["pods"][0]["cpu"]["usageCoreNanoSeconds"] == 50 + 40
    assert doc["node"]["cpu"]["usageCoreNanoSeconds"] == 160 + 60


def test_a_providers_own_counter_is_passed_through() -> None:
    stats = _rate_only(100, 7, 5)
    stats.pods[0].cpu.usage_core_nano_seconds = 1_500_000_000
    stats.node_cpu.usage_core_nano_seconds = 3_000_000_000
    text = resource_metrics(stats, lambda ns, n: ["vm"], CpuCounters(), node="n1")
    assert _sample(text, "node_cpu_usage_seconds_total") == 3.0
    assert _sample(text, 'pod_cpu_usage_seconds_total{namespace="ns",pod="vm"}') == 1.5


def test_no_counter_is_made_up_without_a_key() -> None:
    counters = CpuCounters()
    text = resource_metrics(_rate_only(100, 7, 5), lambda ns, n: ["vm"], counters)
    assert _sample(text, "node_cpu_usage_seconds_total") == 0.0  # no node name: not keyed
    stats = _rate_only(100, 7, 5)
    stats.pods[0].ref.uid = ""
    assert _sample(resource_metrics(stats, lambda ns, n: ["vm"], counters, node="n1"),
                   'pod_cpu_usage_seconds_total{namespace="ns",pod="vm"}') == 0.0


def test_counters_not_reported_for_long_are_forgotten() -> None:
    counters = CpuCounters()
    counters.total("pod/old", kep.CpuStats(time=_at(100), usage_nano_cores=1), _at(0))
    counters.total("pod/new", kep.CpuStats(time=_at(800), usage_nano_cores=1), _at(0))
    assert set(counters._seen) == {"pod/new"}
