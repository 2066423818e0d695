"""The agent session's liveness rules on a fake clock and transport: no processes, no sockets, no sleeping."""

import pytest

from agents import protocol as p
from testbed.core.clock import FakeClock
from testbed.core.config import TimeoutSpec
from testbed.core.errors import AgentLostError
from testbed.run.rows import Issued
from testbed.run.session import AgentSession, AgentState


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
def ctrl():
    clock = FakeClock()
    # heartbeat_s 0.2 x liveness 10, sample_s 20 (as the tests' experiment files set them)
    c = AgentSession(Transport(), clock, TimeoutSpec(heartbeat_s=0.2, liveness=10, sample_s=20.0), "exp.yaml")
    hello = p.Hello("edge-1", "edge", p.AGENT_VERSION, p.PROTOCOL_VERSION, "tcp://127.0.0.1:1", {})
    c.agents.update({"edge-1": AgentState("edge-1", "edge", Handle("edge-1"), hello=hello, last_heard_ns=clock.now),
                     "cloud-1": AgentState("cloud-1", "cloud", Handle("cloud-1"), last_heard_ns=clock.now)})
    return c, clock


def test_silent_agent_is_lost_after_liveness_heartbeats(ctrl):
    c, clock = ctrl
    clock.advance(1.99)
    c.agents["cloud-1"].last_heard_ns = clock.now
    c.keepalive({})  # edge silent 1.99 s < 10 x 0.2 s: fine
    clock.advance(0.02)
    c.agents["cloud-1"].last_heard_ns = clock.now
    with pytest.raises(AgentLostError) as e:
        c.keepalive({})
    assert e.value.device == "edge-1" and "no heartbeat for 2.0 s" in str(e.value)
    assert e.value.log_tail == "last words of edge-1"


def test_heartbeats_go_only_to_agents_that_said_hello_and_only_when_due(ctrl):
    c, clock = ctrl
    c.keepalive({})
    c.keepalive({})
    assert c.transport.sent == [("edge-1", "heartbeat")]
    clock.advance(0.2)
    c.agents["edge-1"].last_heard_ns = c.agents["cloud-1"].last_heard_ns = clock.now
    c.keepalive({})
    assert c.transport.sent == [("edge-1", "heartbeat")] * 2


def test_dead_process_is_lost_at_once(ctrl):
    c, _ = ctrl
    c.agents["cloud-1"].handle.code = -9
    with pytest.raises(AgentLostError, match="exited with status -9"):
        c.keepalive({})


def test_stuck_sample_times_out(ctrl):
    c, clock = ctrl
    stuck = Issued(7, 33, 1, "measure", "all-cloud", clock.now, clock.now, 64)

    def heard_at(seconds):
        clock.now = stuck.issue_mono_ns + int(seconds * 1e9)
        for a in c.agents.values():  # the agents stay alive: only the sample is stuck
            a.last_heard_ns = clock.now

    heard_at(19.9)
    c.keepalive({7: stuck})
    heard_at(20.2)
    with pytest.raises(AgentLostError, match="sample 33 .seq 7. has not come back after 20.2 s"):
        c.keepalive({7: stuck})


def test_clock_pings_go_one_agent_at_a_time_and_a_silent_one_is_named(ctrl):
    """edge-1 answers all PINGS pings (3 ms apart on the fake clock); cloud-1 never does: the error names it alone."""
    from testbed.core.errors import AgentStartError
    from testbed.run.session import PING_GAP_S, PINGS
    from testbed.run.transport import Received

    c, clock = ctrl
    c.agents["cloud-1"].hello = p.Hello("cloud-1", "cloud", p.AGENT_VERSION, p.PROTOCOL_VERSION, "tcp://x:1", {})

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

    c.transport = Pinged()
    with pytest.raises(AgentStartError) as e:
        c.align_clocks()
    assert "no Pong from cloud-1 within" in str(e.value) and "edge-1" not in str(e.value).split("within")[0]
    assert "timeouts.hello_s" in str(e.value)
    pings = [(a, k) for a, k in c.transport.sent if k == "ping"]
    assert pings[:PINGS] == [("edge-1", "ping")] * PINGS and pings[PINGS:] == [("cloud-1", "ping")]
    gaps = [b - a for a, b in zip(c.transport.at, c.transport.at[1:], strict=False)]
    assert len(gaps) == PINGS - 1 and min(gaps) >= PING_GAP_S * 1e9
    # each Pong lands one 50 ms poll after its ping, stamped 500 ns later, with the agent's clock 1000 ns ahead
    edge = c.agents["edge-1"]
    assert len(edge.pings) == PINGS and edge.rtt_ns == 50_000_500 and edge.offset_ns == 25_000_750
