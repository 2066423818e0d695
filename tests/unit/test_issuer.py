"""The issuer on a fake clock with an in-process transport: pacing, the bound on samples in flight, rows, order."""

import math
import time

import numpy as np
import pandas as pd
import pytest

from agents import protocol as p
from testbed.core.clock import FakeClock
from testbed.core.config import RunSpec, TimeoutSpec
from testbed.core.errors import AgentLostError
from testbed.formats.bundle import Samples
from testbed.formats.results import RunWriter
from testbed.policies import StaticPolicy, at_tier
from testbed.run.collector import Collector
from testbed.run.issuer import Issuer
from testbed.run.session import AgentSession, AgentState
from testbed.run.transport import Received

T3 = ("mobile", "edge", "cloud")  # the default tiers

TIERS = ("mobile", "edge", "cloud")


class Handle:
    pid, log_path = 1, None

    def returncode(self):
        return None

    def log_tail(self, lines=20):
        return ""


class InProcess:
    """Each Work issued to the mobile agent is answered by it ``service_s`` later (fake time), mobile exiting."""

    def __init__(self, clock, service_s):
        self.clock, self.service_s = clock, service_s
        self.due = []  # (due ns, Work)
        self.issued_at = []  # fake ns of each issue
        self.max_in_flight = 0
        self.fail_after = None

    def send(self, agent_id, msg):
        pass  # heartbeats

    def issue(self, endpoint, work):
        assert endpoint == "tcp://mobile:1"
        self.issued_at.append(self.clock.now)
        self.due.append((self.clock.now + int(self.service_s * 1e9), work))
        self.max_in_flight = max(self.max_in_flight, len(self.due))
        return 0

    def recv(self, timeout_s, spin=False):
        if self.fail_after is not None and len(self.issued_at) >= self.fail_after:
            return Received("mobile-1", p.Failure("mobile-1", "compute", "out of memory"), self.clock.now,
                            self.clock.now)
        until = self.clock.now + int(timeout_s * 1e9)
        if not self.due or self.due[0][0] > until:
            self.clock.now = until
            return None
        at, work = self.due.pop(0)
        self.clock.now = max(self.clock.now, at)
        t = self.clock.now
        stage = p.Stage("mobile", "mobile-1", t, t, t, t, 0.9, 1, True, 12, math.nan, False, math.nan, 100, -1, -1)
        logits = np.array([[0.1, 0.9, 0.0]], np.float32)
        return Received("mobile-1", p.Result("mobile-1", work.run_seq, work.sample_id, logits, [stage]), t, t)


def setup(tmp_path, run: RunSpec, service_s: float):
    clock = FakeClock()
    transport = InProcess(clock, service_s)
    session = AgentSession(transport, clock, TimeoutSpec(heartbeat_s=0.2, liveness=10, sample_s=20.0))
    for tier in TIERS:
        hello = p.Hello(f"{tier}-1", tier, p.AGENT_VERSION, p.PROTOCOL_VERSION, f"tcp://{tier}:1", {})
        session.agents[f"{tier}-1"] = AgentState(f"{tier}-1", tier, Handle(), hello=hello, last_heard_ns=clock.now)

    def heard():  # the other agents' heartbeats, which this transport does not model
        for a in session.agents.values():
            a.last_heard_ns = clock.now

    writer = RunWriter(tmp_path / "run", T3, flush_rows=4)
    collector = Collector(writer, {"mobile": 2, "edge": 4, "cloud": 6})
    collector.context = {"run_id": "r", "experiment": "e", "split": "test",
                         "energy_sources": {f"{t}-1": "none" for t in TIERS}}
    progress = []
    issuer = Issuer(session, transport, collector, clock, run, on_tick=heard, on_progress=progress.append)
    ids = [np.array([5, 6, 7], np.int64)] * 20
    samples = Samples(np.arange(20), np.ones(20, np.int64), ids)
    return issuer, transport, writer, samples, progress


def test_paced_samples_leave_at_least_the_interval_apart_and_every_one_becomes_a_row(tmp_path):
    issuer, transport, writer, samples, progress = setup(tmp_path, RunSpec(interval_ms=10.0), service_s=0.002)
    policy = StaticPolicy("all-mobile", at_tier("mobile", T3))
    rows = issuer.issue_all(policy, np.random.default_rng(0), samples, [("measure", i) for i in range(12)], keep=True)
    gaps = np.diff(transport.issued_at)
    assert len(transport.issued_at) == 12 and gaps.min() >= 10_000_000  # never faster than the interval
    assert [r["seq"] for r in rows] == list(range(12)) and all(r["exit_tier"] == "mobile" for r in rows)
    assert [r["latency_ms"] for r in rows] == pytest.approx([2.0] * 12)  # service time, on the fake clock
    assert [pr.done for pr in progress] == list(range(1, 13))
    df = pd.read_parquet(writer.close())
    assert len(df) == 12 and (df.correct).all()


def test_no_more_than_concurrency_samples_are_in_flight_and_the_issue_order_continues(tmp_path):
    issuer, transport, _, samples, _ = setup(tmp_path, RunSpec(concurrency=3), service_s=0.05)
    policy = StaticPolicy("all-mobile", at_tier("mobile", T3))
    issuer.issue_all(policy, np.random.default_rng(0), samples, [("warmup", i) for i in range(2)])
    rows = issuer.issue_all(policy, np.random.default_rng(0), samples, [("measure", i) for i in range(9)], keep=True)
    assert transport.max_in_flight == 3
    assert [r["seq"] for r in rows] == list(range(2, 11))  # one issue order over the whole run
    assert issuer.schedule_t() > 0  # link schedules count from the first issue
    # closed loop: a sample is due when a slot frees, so the schedule adds no wait (later ones queue on none)
    assert [r["latency_scheduled_ms"] for r in rows] == pytest.approx([r["latency_ms"] for r in rows])


def test_a_failure_on_the_data_path_names_the_agent(tmp_path):
    issuer, transport, _, samples, _ = setup(tmp_path, RunSpec(), service_s=0.01)
    transport.fail_after = 1
    with pytest.raises(AgentLostError, match="mobile-1.*failed during the run .compute.: out of memory"):
        issuer.issue_all(StaticPolicy("all-mobile", at_tier("mobile", T3)), np.random.default_rng(0), samples,
                         [("measure", 0), ("measure", 1)])


class Hostile(InProcess):
    """Before every real answer, something the run must not act on: a bad frame, a stranger, forged Results."""

    def __init__(self, clock, service_s):
        super().__init__(clock, service_s)
        self.turn = 0

    def recv(self, timeout_s, spin=False):
        self.turn += 1
        t = self.clock.now
        logits = np.array([[9.0, 0.0, 0.0]], np.float32)  # a wrong answer
        forged = p.Stage("mobile", "mobile-1", t, t, t, t, 0.9, 0, True, 12, math.nan, False, math.nan, 1, -1, -1)
        kind = self.turn % 4
        if kind == 1:
            from testbed.run.transport import Rejected
            return Received("mobile-1", Rejected("undecodable message: bad 'work' message: tensors: bad"), t, t)
        if kind == 2 and self.due:  # a Failure from an identity the run did not start
            return Received("evil", p.Failure("evil", "compute", "ha"), t, t)
        if kind == 3 and self.due:  # the edge claims the mobile finished a sample in flight
            work = self.due[0][1]
            return Received("edge-1", p.Result("mobile-1", work.run_seq, work.sample_id, logits, [forged]), t, t)
        return super().recv(timeout_s, spin)


def test_hostile_messages_are_counted_and_ignored_and_never_become_rows(tmp_path):
    issuer, _, writer, samples, _ = setup(tmp_path, RunSpec(), service_s=0.002)
    hostile = Hostile(issuer.clock, 0.002)
    issuer.transport = issuer.session.transport = hostile
    rows = issuer.issue_all(StaticPolicy("all-mobile", at_tier("mobile", T3)), np.random.default_rng(0), samples,
                            [("measure", i) for i in range(8)], keep=True)
    assert len(rows) == 8 and all(r["prediction"] == 1 for r in rows)  # only the real answers
    rejected = issuer.session.rejected
    assert rejected["undecodable message"] >= 8 and rejected["failure from an identity this run did not start"] >= 1
    assert rejected["a Result its sender did not finish"] >= 1


def test_a_paced_grid_does_not_drift_when_issues_are_late(tmp_path):
    # service 15 ms, interval 10 ms, one in flight: every issue waits for the answer, so each is late; the
    # schedule stays on its grid (the k-th due at k x 10 ms) and the wait counts in latency_scheduled_ms
    issuer, transport, _, samples, _ = setup(tmp_path, RunSpec(interval_ms=10.0), service_s=0.015)
    rows = issuer.issue_all(StaticPolicy("all-mobile", at_tier("mobile", T3)), np.random.default_rng(0), samples,
                            [("measure", i) for i in range(6)], keep=True)
    start = transport.issued_at[0]
    scheduled = [r["t_scheduled_unix_ns"] - rows[0]["t_scheduled_unix_ns"] for r in rows]
    assert scheduled == [k * 10_000_000 for k in range(6)]  # a grid: last issue + gap would give 15 ms steps
    assert [t - start for t in transport.issued_at] == [k * 15_000_000 for k in range(6)]
    waited = [r["latency_scheduled_ms"] - r["latency_ms"] for r in rows]
    assert waited == pytest.approx([5.0 * k for k in range(6)])  # 0, 5, 10, ... ms behind the schedule


def test_the_server_scenario_issues_poisson_arrivals_without_waiting_for_answers(tmp_path):
    issuer, transport, _, samples, _ = setup(tmp_path, RunSpec(scenario="server", rate_per_s=200.0,
                                                                max_in_flight=100), service_s=0.05)
    rows = issuer.issue_all(StaticPolicy("all-mobile", at_tier("mobile", T3)), np.random.default_rng(0), samples,
                            [("measure", i % 20) for i in range(400)], keep=True)
    assert len(rows) == 400 and transport.max_in_flight > 1  # open loop: arrivals do not wait for answers
    gaps = np.diff(transport.issued_at) / 1e9
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.15)  # the target rate (n = 399 gaps)
    assert np.std(gaps) / gaps.mean() == pytest.approx(1.0, abs=0.2)  # exponential gaps: coefficient of variation 1
    assert all(r["latency_scheduled_ms"] >= r["latency_ms"] - 1e-9 for r in rows)


def test_server_arrivals_split_over_sources_are_each_poisson_at_the_target_rate():
    from testbed.run.issuer import schedule

    due, picks = schedule(RunSpec(scenario="server", rate_per_s=50.0), 30_000, 3, np.random.default_rng(1))
    assert picks is not None and set(picks) == {0, 1, 2}
    for k in range(3):
        mine = due[picks == k] / 1e9
        gaps = np.diff(mine)
        assert len(mine) / mine[-1] == pytest.approx(50.0, rel=0.03)  # each source at 50/s
        assert np.std(gaps) / gaps.mean() == pytest.approx(1.0, abs=0.05)  # still exponential (thinning)
    offline, _ = schedule(RunSpec(scenario="offline"), 5, 1, np.random.default_rng(0))
    assert offline is not None and list(offline) == [0] * 5
    assert schedule(RunSpec(), 5, 1, np.random.default_rng(0)) == (None, None)  # closed: due when a slot frees


def test_a_ctrl_c_whose_keyboardinterrupt_was_swallowed_still_stops_the_issuing(tmp_path):
    import os
    import signal

    from testbed.run import signals

    issuer, transport, _, samples, _ = setup(tmp_path, RunSpec(), service_s=0.002)
    with signals.interrupts_latched():
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises KeyboardInterrupt here ...
            time.sleep(0.5)
        except KeyboardInterrupt:
            pass  # ... which stands in for pyzmq printing it as "ignored" while freeing a frame
        with pytest.raises(KeyboardInterrupt):
            issuer.issue_all(StaticPolicy("all-mobile", at_tier("mobile", T3)), np.random.default_rng(0), samples,
                             [("measure", i) for i in range(5)])
    assert transport.issued_at == [] and not signals.LATCH.pending  # obeyed before any sample left


def _agents(n: int) -> list:
    from types import SimpleNamespace

    return [SimpleNamespace(device_id=f"mobile-{i}", hello=SimpleNamespace(data_endpoint=f"tcp://m{i}:1"))
            for i in range(n)]


def test_least_loaded_sends_each_sample_to_the_device_with_the_fewest_in_flight():
    from testbed.policies import Policy
    from testbed.run.issuer import Sources

    s = Sources(_agents(3), Policy("p"), mode="least-loaded")
    first = [s.pick(seq, 100 + seq)[0] for seq in range(3)]
    assert first == ["mobile-0", "mobile-1", "mobile-2"]  # all idle: in turn
    s.done("mobile-1")  # mobile-1 answered: it is the least loaded now
    assert s.pick(3, 103)[0] == "mobile-1"
    s.done("mobile-0")
    s.done("mobile-0")  # an answer too many never goes below zero
    assert s.load == {"mobile-0": 0, "mobile-1": 1, "mobile-2": 1} and s.pick(4, 104)[0] == "mobile-0"


def test_hash_sends_a_sample_to_the_same_device_every_time_and_spreads_them():
    from testbed.policies import Policy
    from testbed.run.issuer import Sources

    s = Sources(_agents(3), Policy("p"), mode="hash")
    first = {sid: s.pick(seq, sid)[0] for seq, sid in enumerate(range(300))}
    again = {sid: s.pick(1000 + seq, sid)[0] for seq, sid in enumerate(reversed(range(300)))}
    assert first == again  # by sample, whatever the issue order
    counts = np.unique(list(first.values()), return_counts=True)[1]
    assert len(counts) == 3 and counts.min() > 70  # 300 samples spread over the three, about 100 each


def test_round_robin_and_server_assignments_are_kept():
    from testbed.policies import Policy
    from testbed.run.issuer import Sources

    s = Sources(_agents(2), Policy("p"), assigned={5: 0}, mode="least-loaded")
    assert s.pick(5, 7)[0] == "mobile-0"  # the server scenario's draw wins
    assert [Sources(_agents(2), Policy("p")).pick(k, 9)[0] for k in range(3)] == ["mobile-0", "mobile-1", "mobile-0"]


def test_per_sample_routes_over_the_later_tiers():
    """hash: the same devices for a sample whatever its seq; least-loaded: the edge with fewer routed in flight."""
    import zlib

    from testbed.policies import Policy
    from testbed.run.issuer import Sources

    later = [["edge-1", "edge-2"], ["cloud-1"]]
    h = Sources(_agents(2), Policy("p"), assign="hash", later=later)
    routes = {sid: h.route(seq, sid) for seq, sid in enumerate(range(40))}
    assert all(r == [later[0][zlib.crc32(f"0:{sid}".encode()) % 2], "cloud-1"] for sid, r in routes.items())
    assert h.route(999, 7) == routes[7] and {r[0] for r in routes.values()} == {"edge-1", "edge-2"}
    ll = Sources(_agents(2), Policy("p"), assign="least-loaded", later=later)
    assert [ll.route(k, k)[0] for k in range(3)] == ["edge-1", "edge-2", "edge-1"]  # in turn while even
    ll.done("mobile-1", 1)  # seq 1 (routed over edge-2) came back: edge-2 has none in flight now
    assert ll.load["edge-2"] == 0 and ll.route(3, 3)[0] == "edge-2" and ll.route(4, 4)[0] == "edge-2"
    assert Sources(_agents(2), Policy("p"), later=later).route(0, 0) == []  # the agents' own next devices
