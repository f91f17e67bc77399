"""Node shards: replicas share the nodes through one Lease per node, held while its replica's
membership Lease is renewed (issue 19 items 1 and 2)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest
from fakes import FakeKube

from vmlet_facade import shards
from vmlet_facade.kube import ApiError
from vmlet_facade.shards import NODE_ANNOTATION, ShardKeeper, shard_lease_name

NODES = ["esx-1", "esx-2", "esx-3", "esx-4", "esx-5"]
LEASES = "/apis/coordination.k8s.io/v1/namespaces/vmlet/leases"


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(shards, "_now", c)
    yield c


class Replica:
    """A ShardKeeper and what it serves, as the wiring would (NodeController.serve/release)."""

    def __init__(self, kube: FakeKube, identity: str, nodes: list[str] | None = None,
                 failing: frozenset[str] = frozenset()) -> None:
        self.serving: set[str] = set()
        self.history: list[str] = []
        self.failing = failing

        async def serve(node: str) -> None:
            if node in self.failing:
                raise RuntimeError("the apiserver refused the Node")
            assert node not in self.serving
            self.serving.add(node)
            self.history.append(f"+{node}")

        async def release(node: str) -> None:
            self.serving.discard(node)
            self.history.append(f"-{node}")

        self.keeper = ShardKeeper(kube.client, "vmlet", identity,
                                  lambda: list(nodes if nodes is not None else NODES),
                                  serve, release, duration=10)


async def holders(kube: FakeKube) -> dict[str, str]:
    """Node -> holder of its shard Lease, as the apiserver has them."""
    items = (await kube.client.get(LEASES)).get("items") or []
    return {str(o["metadata"]["annotations"][NODE_ANNOTATION]): o["spec"]["holderIdentity"]
            for o in items if NODE_ANNOTATION in (o["metadata"].get("annotations") or {})}


def assert_exclusive(*replicas: Replica) -> None:
    served = [n for r in replicas for n in r.serving]
    assert len(served) == len(set(served)), [r.serving for r in replicas]


async def test_one_replica_serves_every_node_and_holds_each_lease(
        kube: FakeKube, clock: Clock) -> None:
    a = Replica(kube, "a")
    await a.keeper.round()
    assert a.serving == set(NODES)
    assert (await holders(kube)) == dict.fromkeys(NODES, "a")
    clock.advance(2)
    await a.keeper.round()  # renews, serves nothing twice
    assert sorted(a.history) == sorted(f"+{n}" for n in NODES)


async def test_two_replicas_share_the_nodes_and_never_serve_one_twice(
        kube: FakeKube, clock: Clock) -> None:
    a, b = Replica(kube, "a"), Replica(kube, "b")
    await a.keeper.round()  # alone so far: takes all five
    assert a.serving == set(NODES)
    for second in range(2, 26, 2):
        clock.advance(2)
        await b.keeper.round()
        assert_exclusive(a, b)
        await a.keeper.round()  # gives back one a round while above its share...
        assert_exclusive(a, b)
        if second < 12:  # ...once the replicas have stayed the same for the duration
            assert a.serving == set(NODES), second
    assert sorted([len(a.serving), len(b.serving)]) == [2, 3]
    assert a.serving | b.serving == set(NODES)
    assert (await holders(kube)) == {
        **dict.fromkeys(a.serving, "a"), **dict.fromkeys(b.serving, "b")}


async def test_the_nodes_of_a_replica_that_died_are_taken_after_the_lease_duration(
        kube: FakeKube, clock: Clock) -> None:
    """The fault: replica a stops renewing (SIGKILL). Its nodes stay its own for the Lease's
    duration, then b takes every one of them: no node is left unserved, none served twice."""
    a, b = Replica(kube, "a"), Replica(kube, "b")
    await a.keeper.round()
    await b.keeper.round()
    for _ in range(5):
        clock.advance(2)
        await a.keeper.round()
        await b.keeper.round()
    before = set(a.serving)
    assert before and b.serving == set(NODES) - before
    clock.advance(5)  # a is dead: within the duration b takes nothing of it
    await b.keeper.round()
    assert b.serving == set(NODES) - before
    clock.advance(6)  # 11 s since a's last renewal: its Leases (10 s) are free
    await b.keeper.round()
    assert b.serving == set(NODES)
    assert (await holders(kube)) == dict.fromkeys(NODES, "b")


async def test_a_stopping_replica_gives_its_nodes_back_at_once(
        kube: FakeKube, clock: Clock) -> None:
    a, b = Replica(kube, "a"), Replica(kube, "b")
    await a.keeper.round()
    await b.keeper.round()
    await a.keeper.give_back_all()  # SIGTERM: a rolling update
    assert a.serving == set() and set((await holders(kube)).values()) <= {"", "b"}
    clock.advance(1)  # no wait for the Lease duration: a left, b takes everything at once
    await b.keeper.round()
    assert b.serving == set(NODES)


async def test_a_restarted_replica_of_the_same_identity_serves_its_nodes_again(
        kube: FakeKube, clock: Clock) -> None:
    a = Replica(kube, "a")
    await a.keeper.round()
    again = Replica(kube, "a")  # the process restarted: it remembers nothing
    clock.advance(3)
    await again.keeper.round()
    assert again.serving == set(NODES)


async def test_a_node_that_cannot_be_served_is_given_back_for_another(
        kube: FakeKube, clock: Clock) -> None:
    a = Replica(kube, "a", failing=frozenset({"esx-3"}))
    await a.keeper.round()
    assert "esx-3" not in a.serving and (await holders(kube))["esx-3"] == ""
    b = Replica(kube, "b")
    clock.advance(2)
    await b.keeper.round()
    assert "esx-3" in b.serving


async def test_a_lease_another_replica_wrote_first_is_not_served(
        kube: FakeKube, clock: Clock) -> None:
    """The race: a renews after b took one of its nodes (its Lease written under a). The
    renewal meets a conflict or another holder: a stops serving that node."""
    a = Replica(kube, "a")
    await a.keeper.round()
    path = f"{LEASES}/{shard_lease_name('esx-2')}"
    lease = await kube.client.get(path)
    lease["spec"]["holderIdentity"] = "b"
    await kube.client.replace(path, lease)
    clock.advance(2)
    await a.keeper.round()
    assert "esx-2" not in a.serving and "-esx-2" in a.history


def test_lease_names_stay_valid_for_any_node_name() -> None:
    assert shard_lease_name("esx-1.lab") == "vmlet-node-esx-1.lab"
    long = shard_lease_name("h" * 250)
    assert len(long) <= 253 and long.startswith("vmlet-node-")
    assert shard_lease_name("Host_1") != shard_lease_name("host_1")


async def test_replicas_of_other_providers_do_not_count_toward_the_share(
        kube: FakeKube, clock: Clock) -> None:
    """A facade of other providers in the same namespace is no replica of this one: counting
    it would leave half of each one's nodes unserved."""
    a = Replica(kube, "a")
    other = Replica(kube, "other", nodes=["kvm-1", "kvm-2"])
    other.keeper._group = "other-providers"
    await other.keeper.round()
    await a.keeper.round()
    assert a.serving == set(NODES) and other.serving == {"kvm-1", "kvm-2"}


async def test_a_replica_cut_off_from_the_apiserver_stops_serving_after_the_duration(
        kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault: every apiserver call of replica a fails. It keeps its nodes for the
    membership's duration (a short outage changes nothing), then stops serving them, since
    another replica may have taken them; nothing is written meanwhile."""
    a = Replica(kube, "a", nodes=["esx-1"])
    loop_time = fake_loop_time(monkeypatch)
    await a.keeper.round()

    async def refused(*args: object, **kwargs: object) -> None:
        raise ApiError(503, "Unreachable", "the apiserver could not be reached")

    async def no_sleep(seconds: float) -> None:
        loop_time[0] += seconds
        clock.advance(seconds)
        if loop_time[0] > 30:
            raise asyncio.CancelledError

    monkeypatch.setattr(a.keeper, "_renew_membership", refused)
    monkeypatch.setattr(shards.asyncio, "sleep", no_sleep)
    seen: list[tuple[float, set[str]]] = []
    original = a.keeper.drop_all

    async def drop_all() -> None:
        seen.append((loop_time[0], set(a.serving)))
        await original()

    monkeypatch.setattr(a.keeper, "drop_all", drop_all)
    writes = len(kube.writes())
    with pytest.raises(asyncio.CancelledError):
        await a.keeper.heartbeat()
    assert seen and seen[0] == (11.0, {"esx-1"})  # the first renewal tried past 10 s
    assert a.serving == set() and len(kube.writes()) == writes


def fake_loop_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The running loop's clock, set by hand: [seconds]."""
    now = [0.0]
    monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: now[0])
    return now


async def test_a_round_writes_one_lease_however_many_nodes_it_serves(
        kube: FakeKube, clock: Clock) -> None:
    """Shards are written when they change hands, never renewed: at 50 nodes and two
    replicas, a settled round writes only the replica's membership Lease."""
    nodes = [f"esx-{i}" for i in range(50)]
    a, b = Replica(kube, "a", nodes), Replica(kube, "b", nodes)
    for _ in range(40):
        clock.advance(2)
        await a.keeper.round()
        await b.keeper.round()
        assert_exclusive(a, b)
    assert len(a.serving) == len(b.serving) == 25
    before = len(kube.writes(path_part="/leases"))
    clock.advance(2)
    await a.keeper.round()
    await b.keeper.round()
    written = kube.writes(path_part="/leases")[before:]
    assert [c.path.rsplit("/", 1)[1] for c in written] == ["vmlet-facade-a", "vmlet-facade-b"]


async def test_a_replica_whose_rounds_lag_keeps_its_nodes_while_its_membership_is_renewed(
        kube: FakeKube, clock: Clock) -> None:
    """The fault behind the churn at 10,000 pods: a replica's rounds stall (busy starting
    nodes, or starved of CPU) for longer than the duration. Its membership is still renewed
    (``heartbeat``), so the other replica takes none of its nodes."""
    a, b = Replica(kube, "a"), Replica(kube, "b")
    for _ in range(12):
        clock.advance(2)
        await a.keeper.round()
        await b.keeper.round()
    mine, theirs = set(a.serving), set(b.serving)
    assert mine and theirs
    for _ in range(15):  # 30 s of a's rounds not running
        clock.advance(2)
        await a.keeper._renew_membership()
        await b.keeper.round()
        assert b.serving == theirs
    assert (await holders(kube)) == {**dict.fromkeys(mine, "a"), **dict.fromkeys(theirs, "b")}


async def test_a_replica_paused_past_the_duration_drops_its_nodes_before_it_renews(
        kube: FakeKube, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault: replica a is paused (SIGSTOP, a stalled host) longer than the duration, and
    b takes its nodes meanwhile. Whatever a does first when it resumes, renewing its
    membership drops every node it served, before the renewal makes it live again."""
    loop_time = fake_loop_time(monkeypatch)
    a, b = Replica(kube, "a"), Replica(kube, "b")
    await a.keeper.round()
    loop_time[0] += 12
    clock.advance(12)
    await b.keeper.round()
    assert b.serving == set(NODES)
    await a.keeper._renew_membership()
    assert a.serving == set()
    assert_exclusive(a, b)
