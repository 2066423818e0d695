"""The controller's liveness rules on a fake clock: no processes, no sockets, no sleeping."""

import pytest

from agents import protocol as p
from testbed.core.clock import FakeClock
from testbed.core.config import load_experiment, load_inventory
from testbed.core.errors import AgentLostError
from testbed.run.controller import Controller, _Agent
from testbed.run.rows import Issued

from conftest import write_experiment, write_inventory


class Handle:
    def __init__(self, device_id):
        self.device_id, self.pid, self.code = device_id, 4242, None
        self.log_path = None

    def returncode(self):
        return self.code

    def log_tail(self, lines=20):
        return f"last words of {self.device_id}"


class Transport:
    def __init__(self):
        self.sent = []

    def send(self, agent_id, msg):
        self.sent.append((agent_id, msg.KIND))


@pytest.fixture
def ctrl(tiny_bundle, tmp_path):
    clock = FakeClock()
    # heartbeat_s 0.2 x liveness 10, sample_s 20
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "all-cloud"}])
    inv = write_inventory(tmp_path / "inv.yaml")
    c = Controller(load_experiment(exp), exp, load_inventory(inv), inv, tiny_bundle, tmp_path / "r", clock=clock)
    c._transport = Transport()
    hello = p.Hello("edge-1", "edge", p.AGENT_VERSION, p.PROTOCOL_VERSION, "tcp://127.0.0.1:1", {})
    c._agents = {"edge-1": _Agent("edge-1", "edge", Handle("edge-1"), hello=hello, last_heard_ns=clock.now),
                 "cloud-1": _Agent("cloud-1", "cloud", Handle("cloud-1"), last_heard_ns=clock.now)}
    return c, clock


def test_silent_agent_is_lost_after_liveness_heartbeats(ctrl):
    c, clock = ctrl
    clock.advance(1.99)
    c._agents["cloud-1"].last_heard_ns = clock.now
    c._keepalive({})  # edge silent 1.99 s < 10 x 0.2 s: fine
    clock.advance(0.02)
    c._agents["cloud-1"].last_heard_ns = clock.now
    with pytest.raises(AgentLostError) as e:
        c._keepalive({})
    assert e.value.device == "edge-1" and "no heartbeat for 2.0 s" in str(e.value)
    assert e.value.log_tail == "last words of edge-1"


def test_heartbeats_go_only_to_agents_that_said_hello_and_only_when_due(ctrl):
    c, clock = ctrl
    c._keepalive({})
    c._keepalive({})
    assert c._transport.sent == [("edge-1", "heartbeat")]
    clock.advance(0.2)
    c._agents["edge-1"].last_heard_ns = c._agents["cloud-1"].last_heard_ns = clock.now
    c._keepalive({})
    assert c._transport.sent == [("edge-1", "heartbeat")] * 2


def test_dead_process_is_lost_at_once(ctrl):
    c, _ = ctrl
    c._agents["cloud-1"].handle.code = -9
    with pytest.raises(AgentLostError, match="exited with status -9"):
        c._keepalive({})


def test_stuck_sample_times_out(ctrl):
    c, clock = ctrl
    stuck = Issued(7, 33, 1, "measure", "all-cloud", clock.now, clock.now, 64)

    def heard_at(seconds):
        clock.now = stuck.issue_mono_ns + int(seconds * 1e9)
        for a in c._agents.values():  # the agents stay alive: only the sample is stuck
            a.last_heard_ns = clock.now

    heard_at(19.9)
    c._keepalive({7: stuck})
    heard_at(20.2)
    with pytest.raises(AgentLostError, match="sample 33 .seq 7. has not come back after 20.2 s"):
        c._keepalive({7: stuck})


def test_clock_pings_go_one_agent_at_a_time_and_a_silent_one_is_named(ctrl):
    """edge-1 answers all PINGS pings (3 ms apart on the fake clock); cloud-1 never does: the error names it alone."""
    from testbed.core.errors import AgentStartError
    from testbed.run.controller import PING_GAP_S, PINGS
    from testbed.run.transport import Received

    c, clock = ctrl
    c._agents["cloud-1"].hello = p.Hello("cloud-1", "cloud", p.AGENT_VERSION, p.PROTOCOL_VERSION, "tcp://x:1", {})

    class Pinged(Transport):
        def __init__(self):
            super().__init__()
            self.due = []  # (agent, seq) pinged and not yet answered
            self.at = []  # fake time of each ping to edge-1

        def send(self, agent_id, msg):
            super().send(agent_id, msg)
            if isinstance(msg, p.Ping):
                self.due.append((agent_id, msg.seq))
                if agent_id == "edge-1":
                    self.at.append(clock.now)

        def recv(self, timeout_s, spin=False):
            clock.advance(timeout_s)
            for agent_id, seq in self.due:
                if agent_id == "edge-1":
                    self.due.remove((agent_id, seq))
                    return Received("edge-1", p.Pong("edge-1", seq, clock.now + 1000), clock.now, clock.now + 500)
            return None

    c._transport = Pinged()
    with pytest.raises(AgentStartError) as e:
        c._align_clocks()
    assert "no Pong from cloud-1 within" in str(e.value) and "edge-1" not in str(e.value).split("within")[0]
    assert "timeouts.hello_s" in str(e.value)
    pings = [(a, k) for a, k in c._transport.sent if k == "ping"]
    assert pings[:PINGS] == [("edge-1", "ping")] * PINGS and pings[PINGS:] == [("cloud-1", "ping")]
    gaps = [b - a for a, b in zip(c._transport.at, c._transport.at[1:], strict=False)]
    assert len(gaps) == PINGS - 1 and min(gaps) >= PING_GAP_S * 1e9
    # each Pong lands one 50 ms poll after its ping, stamped 500 ns later, with the agent's clock 1000 ns ahead
    edge = c._agents["edge-1"]
    assert len(edge.pings) == PINGS and edge.rtt_ns == 50_000_500 and edge.offset_ns == 25_000_750
