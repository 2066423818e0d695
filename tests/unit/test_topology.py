"""Several devices per tier: who offloads to whom, who takes which sample, whose policy state learns."""

from pathlib import Path

import pytest

from testbed.checks import check_experiment
from testbed.core.config import Experiment, Inventory
from testbed.policies.base import Policy
from testbed.run.issuer import Sources

T3 = ("mobile", "edge", "cloud")


def _exp(devices, **extra) -> Experiment:
    return Experiment(name="t", bundle="nowhere", devices=devices, policies=[{"name": "all-cloud"}], **extra)


def _inv(ids) -> Inventory:
    return Inventory(devices=[{"id": d, "tier": d.split("-")[0], "host": "127.0.0.1", "launcher": "local"}
                              for d in ids])


def test_round_robin_assigns_each_device_to_the_next_tier_in_turn():
    exp = _exp({"mobile": ["mobile-1", "mobile-2", "mobile-3"], "edge": ["edge-1", "edge-2"], "cloud": "cloud-1"})
    assert exp.several and exp.device_ids() == ["mobile-1", "mobile-2", "mobile-3", "edge-1", "edge-2", "cloud-1"]
    assert [exp.next_device(T3, f"mobile-{i}") for i in (1, 2, 3)] == ["edge-1", "edge-2", "edge-1"]
    assert exp.next_device(T3, "edge-2") == "cloud-1" and exp.next_device(T3, "cloud-1") is None


def test_an_explicit_map_is_followed_and_checked():
    devices = {"mobile": ["mobile-1", "mobile-2"], "edge": ["edge-1", "edge-2"], "cloud": "cloud-1"}
    ok = _exp(devices, topology={"assign": {"mobile-1": "edge-2", "mobile-2": "edge-2", "edge-1": "cloud-1",
                                            "edge-2": "cloud-1"}})
    assert ok.next_device(T3, "mobile-1") == "edge-2"
    inv = _inv(ok.device_ids())
    assert [p for p in check_experiment(ok, inv, Path(".")) if "topology" in p or "devices" in p] == []
    bad = _exp(devices, topology={"assign": {"mobile-1": "edge-3", "edge-1": "cloud-1", "edge-2": "cloud-1",
                                             "cloud-1": "edge-1"}})
    problems = check_experiment(bad, inv, Path("."))
    assert any("topology.assign.mobile-1: 'edge-3' is not a edge device" in p for p in problems)
    assert any("topology.assign: mobile-2 (mobile) has no device of edge" in p for p in problems)
    assert any("topology.assign.cloud-1: cloud-1 is on the last tier" in p for p in problems)


def test_a_device_named_twice_is_refused():
    exp = _exp({"mobile": ["mobile-1", "mobile-1"], "edge": "edge-1", "cloud": "cloud-1"},
               shaping={"backend": "userspace", "links": {"mobile-edge": {"rate_mbit": 10}}})
    problems = check_experiment(exp, _inv(["mobile-1", "edge-1", "cloud-1"]), Path("."))
    assert any("mobile-1 named more than once" in p for p in problems)
    assert not any("rate" in p for p in problems)  # kernel shaping per device pair: allowed


def test_kernel_shaping_with_three_mobiles_shapes_each_device_pair_on_its_own_interfaces(tiny_bundle, tmp_path):
    """On the emulation's inventory: each mobile's link to the edge, both ends; the controller links per device."""
    import yaml

    from testbed.core.config import load_experiment, load_inventory
    from testbed.devices import emulate
    from testbed.devices.fleet import Fleet
    from testbed.devices.owned import Ownership
    from testbed.formats.bundle import Bundle

    from conftest import write_experiment

    inv_path = tmp_path / "inv.yaml"
    inv_path.write_text(yaml.safe_dump(emulate.inventory(tmp_path, "tb", "198.18.0", "/py", emulate.DEFAULT_CPU, True,
                                                         emulate.DEFAULT_TIERS, {"mobile": 3})))
    mobiles = ["mobile1-emu", "mobile2-emu", "mobile3-emu"]
    exp_path = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "all-cloud"}],
                                devices={"mobile": mobiles, "edge": "edge-emu", "cloud": "cloud-emu"},
                                shaping={"backend": "userspace", "links": {"mobile-edge": {"rate_mbit": 10},
                                                                           "controller-mobile": {"rate_mbit": 50}}})
    fleet = Fleet(load_experiment(exp_path), load_inventory(inv_path), Bundle.load(tiny_bundle.root), tmp_path, "r",
                  Ownership(tmp_path))
    fleet.backend = "userspace"
    ends = [(hop, dev, ifname) for hop, dev, ifname, _ in fleet.kernel_plans()]
    assert ends == [("mobile-edge", "mobile1-emu", "to-edge"), ("mobile-edge", "edge-emu", "to-mobile1"),
                    ("mobile-edge", "mobile2-emu", "to-edge"), ("mobile-edge", "edge-emu", "to-mobile2"),
                    ("mobile-edge", "mobile3-emu", "to-edge"), ("mobile-edge", "edge-emu", "to-mobile3"),
                    ("controller-mobile", "controller", "to-mobile1"), ("controller-mobile", "mobile1-emu", "to-ctl"),
                    ("controller-mobile", "controller", "to-mobile2"), ("controller-mobile", "mobile2-emu", "to-ctl"),
                    ("controller-mobile", "controller", "to-mobile3"), ("controller-mobile", "mobile3-emu", "to-ctl")]


class Learner(Policy):
    def __init__(self):
        super().__init__("learner")
        self.seen = []

    def observe(self, sample_id, confidences):
        self.seen.append(sample_id)


class Agent:
    def __init__(self, device):
        self.device_id = device
        self.hello = type("Hello", (), {"data_endpoint": f"tcp://{device}"})()


def test_samples_go_to_the_first_tier_devices_in_turn_each_with_its_own_policy_state():
    agents = [Agent("mobile-1"), Agent("mobile-2"), Agent("mobile-3")]
    states = {a.device_id: Learner() for a in agents}
    sources = Sources(agents, states)
    assert [sources.at(seq)[0] for seq in range(5)] == ["mobile-1", "mobile-2", "mobile-3", "mobile-1", "mobile-2"]
    assert sources.at(4)[1] == "tcp://mobile-2" and sources.name == "learner"
    sources.policy_of("mobile-2").observe(7, {})
    assert states["mobile-2"].seen == [7] and states["mobile-1"].seen == []
    shared = Learner()
    assert Sources(agents, shared).policy_of("mobile-3") is shared


@pytest.mark.parametrize("devices", [{"mobile": [], "edge": "edge-1", "cloud": "cloud-1"}])
def test_an_empty_device_list_is_refused(devices):
    problems = check_experiment(_exp(devices), _inv(["edge-1", "cloud-1"]), Path("."))
    assert any("devices.mobile: an empty list" in p for p in problems)
