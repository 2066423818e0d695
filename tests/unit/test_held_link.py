"""The agents' userspace link: hold for delay +- jitter, release in order, change mid-run, drain."""

import pytest

from agents.shaper import HeldLink


def test_messages_are_held_their_delay_and_leave_in_order():
    link = HeldLink("x", delay_ms=10)
    assert link.active and link.next_due() is None
    assert link.hold("a", 1.000) == pytest.approx(1.010)
    assert link.hold("b", 1.002) == pytest.approx(1.012)
    assert link.pop_due(1.0099) == []
    assert link.pop_due(1.010) == ["a"] and link.next_due() == pytest.approx(1.012)
    assert link.pop_due(5.0) == ["b"] and len(link) == 0


def test_jitter_spreads_the_holds_within_its_band_but_never_reorders():
    link = HeldLink("seeded", delay_ms=10, jitter_ms=4)
    dues = [link.hold(i, 1.0 + i * 1e-4) for i in range(200)]
    assert dues == sorted(dues)  # a short draw waits for the message before it, as on one TCP stream
    holds = [d - (1.0 + i * 1e-4) for i, d in enumerate(dues)]
    assert min(holds) >= 0.006 - 1e-9 and max(holds) <= 0.014 + 2e-2  # the band, or the wait behind another
    firsts = [HeldLink(f"s{k}", 10, 4).hold(0, 0.0) for k in range(50)]
    assert all(0.006 <= f <= 0.014 for f in firsts) and max(firsts) - min(firsts) > 0.004
    assert link.pop_due(10.0) == list(range(200))
    # the same seed draws the same holds: a run's shaping can be repeated
    again = HeldLink("seeded", delay_ms=10, jitter_ms=4)
    assert [again.hold(i, 1.0 + i * 1e-4) for i in range(200)] == dues


def test_a_new_delay_applies_to_what_is_held_from_then_on():
    link = HeldLink("x", delay_ms=40)
    link.hold("old", 0.0)
    link.set(5.0, 0.0)
    assert link.hold("new", 0.001) == pytest.approx(0.040)  # it may not overtake the message before it
    assert link.hold("later", 0.100) == pytest.approx(0.105)
    link.set(0.0, 0.0)
    assert not link.active and len(link) == 3
    assert link.drain() == ["old", "new", "later"] and link.next_due() is None
    with pytest.raises(ValueError, match="must not be negative"):
        link.set(-1.0, 0.0)


def test_the_agents_wait_never_returns_before_the_due_time():
    import time

    from agents.agent import _wait_until

    for ahead in (0.0, 0.0002, 0.003):
        due = time.monotonic() + ahead
        _wait_until(due)
        assert time.monotonic() >= due


@pytest.mark.parametrize("tier, first", [("mobile", True), ("edge", False), ("cloud", False), ("device", True)])
def test_a_controller_link_delay_holds_the_answers_and_only_the_first_tier_holds_arrivals(tmp_path, tiny_bundle,
                                                                                          tier, first):
    """A Shape on the controller link: every tier holds its Results; only the first tier, which the
    controller issues Work to (Configure.first), holds what arrives on its data socket (the others'
    arrivals are offloads). The tier's name does not decide it."""
    from agents import protocol as p
    from agents.agent import Agent

    spec = tiny_bundle.tier("cloud")  # a partition with no next tier: nothing to connect to
    agent = Agent(f"{tier}-1", tier, "tcp://127.0.0.1:1", tmp_path, models=tiny_bundle.root)
    try:
        links = agent.links
        agent.on_control(p.encode(p.Configure(1, str(tiny_bundle.root / spec.file), spec.sha256, "logits", {}, "", 1,
                                              idle_s=60.0, first=first)))  # Ready would wait on the idle baseline
        assert agent.on_control(p.encode(p.Shape(0, 12.0, 2.0, "controller"))) is False
        out, arrivals = links["controller-out"], links["controller-in"]
        assert out.active and out.delay_ms == 12.0 and out.jitter_ms == 2.0
        assert arrivals.active is first
        assert not links["data-out"].active  # the data link is another link
        agent.on_control(p.encode(p.Shape(1, 0.0, 0.0, "controller")))
        assert not out.active and not arrivals.active
    finally:
        agent.close()
