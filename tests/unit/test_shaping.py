"""tc argv generation for every kind of profile (golden lists), schedules, config checks, plan output."""

import pytest

from testbed.cli import main
from testbed.cli.common import load_all
from testbed.core.config import LinkProfile
from testbed.core.errors import ConfigError
from testbed.devices import shaping

from conftest import write_experiment, write_inventory


def argv(steps):
    return [s.argv for s in steps]


def test_netem_under_an_htb_rate():
    p = LinkProfile(delay_ms=20, jitter_ms=2.5, loss_pct=0.5, rate_mbit=10)
    assert argv(shaping.plan("veth-m", p, "netem")) == [
        ["tc", "qdisc", "replace", "dev", "veth-m", "root", "handle", "1:", "htb", "default", "1"],
        ["tc", "class", "replace", "dev", "veth-m", "parent", "1:", "classid", "1:1", "htb", "rate", "10mbit",
         "ceil", "10mbit"],
        ["tc", "qdisc", "replace", "dev", "veth-m", "parent", "1:1", "handle", "10:", "netem", "delay", "20ms",
         "2.5ms", "loss", "0.5%", "rate", "10mbit"],
    ]


def test_jitter_always_comes_with_a_netem_rate_that_keeps_the_order():
    assert argv(shaping.plan("eth0", LinkProfile(delay_ms=5, jitter_ms=1), "netem")) == [
        ["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "netem", "delay", "5ms", "1ms", "rate",
         "100000mbit"]]
    assert "rate" not in argv(shaping.plan("eth0", LinkProfile(delay_ms=5), "netem"))[0]  # no jitter: no reordering


def test_netem_alone_rate_alone_and_nothing():
    assert argv(shaping.plan("eth0", LinkProfile(delay_ms=5), "netem")) == [
        ["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "netem", "delay", "5ms"]]
    assert argv(shaping.plan("eth0", LinkProfile(loss_pct=1), "netem")) == [
        ["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "netem", "loss", "1%"]]
    assert argv(shaping.plan("eth0", LinkProfile(rate_mbit=0.5), "netem"))[1][-4:] == [
        "rate", "0.5mbit", "ceil", "0.5mbit"]
    assert shaping.plan("eth0", LinkProfile(), "netem") == []


def test_userspace_backend_keeps_rate_in_the_kernel_and_delay_in_the_agent():
    p = LinkProfile(delay_ms=20, jitter_ms=2, loss_pct=1, rate_mbit=10)
    cmds = argv(shaping.plan("veth-e", p, "userspace"))
    assert len(cmds) == 2 and not any("netem" in c for c in cmds)
    assert shaping.userspace_params(p, "userspace") == {"delay_ms": 20, "jitter_ms": 2, "loss_pct": 1}
    assert shaping.userspace_params(p, "netem") == {}
    assert shaping.plan("veth-e", LinkProfile(delay_ms=3), "userspace") == []
    assert shaping.teardown("veth-e").argv == ["tc", "qdisc", "del", "dev", "veth-e", "root"]
    assert shaping.show("veth-e").argv == ["tc", "-s", "qdisc", "show", "dev", "veth-e"]
    # a schedule step on an interface already shaped: the htb root stays, its class changes
    assert [s.argv for s in shaping.plan("veth-e", LinkProfile(rate_mbit=5), "userspace", change=True)] == [
        ["tc", "class", "replace", "dev", "veth-e", "parent", "1:", "classid", "1:1", "htb", "rate", "5mbit", "ceil",
         "5mbit"]]
    assert shaping.show_class("veth-e").argv == ["tc", "-s", "class", "show", "dev", "veth-e"]
    with pytest.raises(ValueError, match="backend"):
        shaping.plan("x", p, "fq")


def test_schedule_steps_replace_values_from_their_time_on():
    p = LinkProfile(delay_ms=5, rate_mbit=10, schedule=[{"at_s": 10, "delay_ms": 50}, {"at_s": 20, "rate_mbit": 1}])
    assert shaping.at(p, 0).delay_ms == 5 and shaping.at(p, 0).rate_mbit == 10
    assert shaping.at(p, 10).delay_ms == 50 and shaping.at(p, 15).rate_mbit == 10
    assert shaping.at(p, 25).delay_ms == 50 and shaping.at(p, 25).rate_mbit == 1


def test_bad_profiles_are_refused_with_their_yaml_paths(tiny_bundle, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml")
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "all-cloud"}], shaping={
        "backend": "netem", "links": {
            "mobile-egde": {"delay_ms": 5},
            "edge-cloud": {"delay_ms": 2, "jitter_ms": 5, "schedule": [{"at_s": 5}, {"at_s": 3}]}}})
    with pytest.raises(ConfigError) as e:
        load_all(exp, inv)
    text = " ".join(str(e.value).split())
    assert "shaping.links.mobile-egde: not a link" in text and "did you mean 'mobile-edge'?" in text
    assert "shaping.links.edge-cloud.jitter_ms: 5.0 is larger than delay_ms 2.0" in text
    assert "shaping.links.edge-cloud.schedule[1].at_s: 3.0 does not come after 5.0" in text
    bad = write_experiment(tmp_path / "bad.yaml", tiny_bundle.root, [{"name": "all-cloud"}],
                           shaping={"backend": "cake", "links": {"mobile-edge": {"loss_pct": 120}}})
    with pytest.raises(ConfigError) as e:
        load_all(bad, inv)
    text = " ".join(str(e.value).split())
    assert "shaping.backend" in text and "shaping.links.mobile-edge.loss_pct" in text


def test_plan_prints_the_commands_and_run_refuses_to_pretend(tiny_bundle, tmp_path, capsys):
    inv = write_inventory(tmp_path / "inv.yaml", **{"edge-1": {"interface": "veth-e"}})
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "all-cloud"}], shaping={
        "backend": "userspace", "links": {"mobile-edge": {"delay_ms": 20, "rate_mbit": 10}}})
    assert main(["plan", str(exp), "--inventory", str(inv)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "tc class replace dev veth-e parent 1: classid 1:1 htb rate 10mbit ceil 10mbit" in text
    assert "agent delays its outgoing messages {'delay_ms': 20.0}" in text
    assert "tc qdisc del dev veth-e root" in text and "loopback, not applied" in text
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "r"), "-q"]) == 2
    assert "rate_mbit and loss_pct need the kernel" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "r").exists()


def test_due_steps_come_once_each_and_the_latest_wins_when_several_fell_due():
    links = {"mobile-edge": LinkProfile(delay_ms=5, schedule=[{"at_s": 1, "delay_ms": 10},
                                                              {"at_s": 2, "jitter_ms": 1}, {"at_s": 9, "delay_ms": 0}]),
             "edge-cloud": LinkProfile(delay_ms=1)}
    applied: set = set()
    assert shaping.due_steps(links, 0.5, applied) == []
    (hop, i, prof), = shaping.due_steps(links, 2.5, applied)  # steps 0 and 1 both due: one change, step 1's
    assert (hop, i, prof.delay_ms, prof.jitter_ms) == ("mobile-edge", 1, 10, 1)
    applied |= {(hop, j) for j in range(i + 1)}
    assert shaping.due_steps(links, 3.0, applied) == []
    (_, i, prof), = shaping.due_steps(links, 9.0, applied)
    assert i == 2 and prof.delay_ms == 0 and prof.jitter_ms == 1


def test_schedules_are_applicable_except_what_the_backend_cannot_do():
    sched = LinkProfile(delay_ms=5, schedule=[{"at_s": 1, "delay_ms": 30}])
    assert shaping.applicable({"mobile-edge": sched}, "userspace", remote=False) == ("userspace", [])
    rate = LinkProfile(delay_ms=5, schedule=[{"at_s": 1, "rate_mbit": 1}])
    _, problems = shaping.applicable({"mobile-edge": rate}, "userspace", remote=False)
    assert problems and "schedule[0]: rate_mbit and loss_pct need the kernel" in problems[0]
    assert shaping.applicable({"mobile-edge": rate}, "userspace", remote=True) == ("userspace", [])
    loss = LinkProfile(schedule=[{"at_s": 1, "loss_pct": 1}])
    _, problems = shaping.applicable({"mobile-edge": loss}, "userspace", remote=True)
    assert problems == ["shaping.links.mobile-edge.schedule[0].loss_pct: loss needs netem; use backend: netem, "
                        "or drop loss_pct"]


def _controller_link_fleet(tiny_bundle, tmp_path, controller_ifaces, links=None, launcher="local", backend="userspace"):
    import yaml

    from testbed.devices.fleet import Fleet
    from testbed.devices.owned import Ownership
    from testbed.formats.bundle import Bundle

    ssh = {"key_file": str(tmp_path / "id_ed25519"), "user": "root"} if launcher == "ssh" else {}
    devices = [{"id": f"{t}-1", "tier": t, "host": "127.0.0.1", "launcher": launcher, **ssh,
                "interfaces": {"controller": f"{t}-c"}} for t in ("mobile", "edge", "cloud")]
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump({"controller": {"interfaces": controller_ifaces}, "devices": devices}))
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "all-mobile"}], shaping={
        "backend": backend, "links": links or {"controller-mobile": {"delay_ms": 5, "rate_mbit": 20}}})
    e, i = load_all(exp, inv)
    fleet = Fleet(e, i, Bundle.load(tiny_bundle.root), tmp_path, "r1", Ownership(tmp_path))
    fleet.backend = "userspace"
    return fleet


def test_the_controller_link_is_shaped_at_both_ends_the_controller_end_on_its_own_interface(tiny_bundle, tmp_path):
    fleet = _controller_link_fleet(tiny_bundle, tmp_path, {"mobile-1": "veth-cm"})
    plans = [(hop, dev, ifname, argv(steps)) for hop, dev, ifname, steps in fleet.kernel_plans()]
    rate = ["htb", "rate", "20mbit", "ceil", "20mbit"]
    assert plans == [
        ("controller-mobile", "controller", "veth-cm",
         [["tc", "qdisc", "replace", "dev", "veth-cm", "root", "handle", "1:", "htb", "default", "1"],
          ["tc", "class", "replace", "dev", "veth-cm", "parent", "1:", "classid", "1:1", *rate]]),
        ("controller-mobile", "mobile-1", "mobile-c",
         [["tc", "qdisc", "replace", "dev", "mobile-c", "root", "handle", "1:", "htb", "default", "1"],
          ["tc", "class", "replace", "dev", "mobile-c", "parent", "1:", "classid", "1:1", *rate]])]
    # the controller's end is probed and shaped here, not over SSH; the mobile agent holds both directions itself
    assert fleet.userspace_link("controller-mobile").delay_ms == 5.0
    assert shaping.applicable(fleet.exp.shaping.links, "userspace", remote=True) == ("userspace", [])


def test_the_controller_links_of_edge_and_cloud_are_shaped_at_both_ends_too(tiny_bundle, tmp_path):
    fleet = _controller_link_fleet(tiny_bundle, tmp_path, {"edge-1": "veth-ce", "cloud-1": "veth-cc"}, links={
        "controller-edge": {"delay_ms": 8, "rate_mbit": 50}, "controller-cloud": {"delay_ms": 30}})
    plans = [(hop, dev, ifname, argv(steps)[-1]) for hop, dev, ifname, steps in fleet.kernel_plans()]
    rate = ["htb", "rate", "50mbit", "ceil", "50mbit"]
    assert plans == [
        ("controller-edge", "controller", "veth-ce",
         ["tc", "class", "replace", "dev", "veth-ce", "parent", "1:", "classid", "1:1", *rate]),
        ("controller-edge", "edge-1", "edge-c",
         ["tc", "class", "replace", "dev", "edge-c", "parent", "1:", "classid", "1:1", *rate])]
    # delay alone (controller-cloud) is the agents' part: nothing for the kernel under userspace
    assert fleet.userspace_link("controller-cloud").delay_ms == 30.0
    assert fleet.userspace_link("controller-edge").delay_ms == 8.0
    fleet.backend = "netem"  # under netem the kernel delays it on both ends
    netem = [(dev, argv(steps)[-1][-3:]) for hop, dev, _, steps in fleet.kernel_plans() if hop == "controller-cloud"]
    assert netem == [("controller", ["netem", "delay", "30ms"]), ("cloud-1", ["netem", "delay", "30ms"])]


def test_what_the_controllers_own_kernel_needs_for_its_end_of_the_links():
    links = {"controller-edge": LinkProfile(delay_ms=8, schedule=[{"at_s": 5, "rate_mbit": 2}]),
             "controller-cloud": LinkProfile(delay_ms=30), "mobile-edge": LinkProfile(delay_ms=5, rate_mbit=10)}
    # userspace: the agents delay; the kernel here only rates (a schedule step brings one in)
    assert shaping.controller_needs(links, "userspace") == {"tc": ["controller-edge"], "htb": ["controller-edge"]}
    assert shaping.controller_needs(links, "netem") == {"tc": ["controller-edge", "controller-cloud"],
                                                         "htb": ["controller-edge"],
                                                         "netem": ["controller-edge", "controller-cloud"]}
    assert shaping.controller_needs({"mobile-edge": LinkProfile(delay_ms=5)}, "netem") == {}


@pytest.mark.parametrize("controller_netem, chosen", [(True, "netem"), (False, "userspace")])
def test_auto_picks_netem_only_where_the_controllers_kernel_has_it_too(tiny_bundle, tmp_path, controller_netem,
                                                                        chosen):
    from types import SimpleNamespace

    fleet = _controller_link_fleet(tiny_bundle, tmp_path, {"edge-1": "veth-ce"}, launcher="ssh", backend="auto",
                                   links={"controller-edge": {"delay_ms": 8}})
    fleet.deploys = {d: SimpleNamespace(facts={"netem": True}, to_dict=dict) for d in ("mobile-1", "edge-1", "cloud-1")}
    fleet.controller_facts = {"kernel": "6.1", "tc": "/sbin/tc", "netem": controller_netem, "htb": True}
    assert fleet.choose_backend() == chosen
    assert fleet.record()["controller_kernel"]["netem"] is controller_netem  # the manifest says why


def test_backend_netem_refuses_a_controller_without_netem_naming_the_link(tiny_bundle, tmp_path):
    fleet = _controller_link_fleet(tiny_bundle, tmp_path, {"cloud-1": "veth-cc"}, launcher="ssh", backend="netem",
                                   links={"controller-cloud": {"delay_ms": 30}, "mobile-edge": {"delay_ms": 5}})
    fleet.controller_facts = {"kernel": "6.18-fc", "tc": "/sbin/tc", "netem": False, "htb": True}
    with pytest.raises(ConfigError) as e:
        fleet.choose_backend()
    text = " ".join(str(e.value).split())
    assert ("controller (this machine, kernel 6.18-fc): no sch_netem, which shaping.links.controller-cloud needs at "
            "the controller's end under backend netem; load it (modprobe sch_netem) or use shaping.backend: "
            "userspace") in text
    assert "mobile-edge" not in text  # the devices' kernels are the preflight's business
    fleet.controller_facts["tc"] = None
    # a delay alone is the agents' part under userspace: the controller's kernel needs nothing
    fleet.exp = fleet.exp.model_copy(update={"shaping": fleet.exp.shaping.model_copy(update={"backend": "userspace"})})
    assert fleet.choose_backend() == "userspace"


def test_a_rate_on_the_controller_link_needs_the_controllers_interface_named(tiny_bundle, tmp_path):
    fleet = _controller_link_fleet(tiny_bundle, tmp_path, {"edge-1": "veth-ce"})
    with pytest.raises(ConfigError) as e:
        fleet.kernel_plans()
    text = " ".join(str(e.value).split())
    assert "controller.interfaces.mobile-1: shaping controller-mobile needs the controller's own interface" in text
    # delay and jitter alone need no interface: the mobile agent applies them (and loopback takes them)
    delay_only = {"controller-mobile": LinkProfile(delay_ms=5)}
    assert fleet.kernel_plans(delay_only) == []
    assert shaping.applicable(delay_only, "userspace", remote=False) == ("userspace", [])


def test_plan_shows_the_controllers_own_commands(tiny_bundle, tmp_path, capsys):
    import yaml

    inv = write_inventory(tmp_path / "inv.yaml", **{"mobile-1": {"interfaces": {"controller": "m-c"}}})
    doc = yaml.safe_load(inv.read_text()) | {"controller": {"interfaces": {"mobile-1": "veth-cm"}}}
    inv.write_text(yaml.safe_dump(doc))
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "all-mobile"}], shaping={
        "backend": "userspace", "links": {"controller-mobile": {"delay_ms": 5, "rate_mbit": 20}}})
    assert main(["plan", str(exp), "--inventory", str(inv)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "controller (here): tc class replace dev veth-cm parent 1: classid 1:1 htb rate 20mbit" in text
    assert "controller at the end: tc qdisc del dev veth-cm root" in text
    assert "mobile-1: agent holds the Work it receives and the Results it sends {'delay_ms': 5.0}" in text
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "all-mobile"}], shaping={
        "backend": "userspace", "links": {"controller-cloud": {"delay_ms": 30}}})
    assert main(["plan", str(exp), "--inventory", str(inv)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "cloud-1: agent holds the Results it sends (the controller issues Work to the first tier only)" in text


def test_a_schedule_step_runs_tc_only_where_the_kernels_part_changes(tiny_bundle, tmp_path):
    """Under userspace a delay-only step is the agents' business: no SSH round trip, no tc."""
    fleet = _controller_link_fleet(tiny_bundle, tmp_path, {}, launcher="ssh", links={
        "mobile-edge": {"delay_ms": 5, "rate_mbit": 10}})
    for tier, ifname in (("mobile", "m-e"), ("edge", "e-m")):
        fleet.devices[tier] = fleet.devices[tier].model_copy(update={"interface": ifname})
        fleet.devices_by_id[f"{tier}-1"] = fleet.devices[tier]
    ran = []
    fleet.apply_kernel = lambda hop, dev, ifname, steps: ran.append((dev, ifname)) or {"interface": ifname}
    fleet.shape()
    assert ran == [("mobile-1", "m-e"), ("edge-1", "e-m")]
    ran.clear()
    assert fleet.reshape("mobile-edge", LinkProfile(delay_ms=0, rate_mbit=10)) == {}  # delay only: the agents'
    assert ran == []
    assert set(fleet.reshape("mobile-edge", LinkProfile(delay_ms=0, rate_mbit=5))) == {"mobile-1", "edge-1"}
    assert ran == [("mobile-1", "m-e"), ("edge-1", "e-m")]
    assert shaping.kernel_part(LinkProfile(delay_ms=5, rate_mbit=5), "netem") != shaping.kernel_part(
        LinkProfile(delay_ms=0, rate_mbit=5), "netem")  # under netem the delay is the kernel's too


def test_a_probe_short_of_the_rate_is_repeated_and_the_best_attempt_kept(tiny_bundle, tmp_path, monkeypatch):
    """controller->mobile reads 14, then 19.9 (kept, within 5% of 20: no third try); mobile->controller 19.8 at once."""
    import testbed.devices.fleet as fleet_mod

    fleet = _controller_link_fleet(tiny_bundle, tmp_path, {"mobile-1": "veth-cm"}, launcher="ssh")
    mobile = object()
    fleet.remotes = {"mobile-1": mobile}
    reads = [14.0, 19.9, 30.0]  # received by the mobile; 30 would be a third try

    def fake_probe(sender, s_py, receiver, r_py, addr, nbytes):
        capacity = reads.pop(0) if receiver is mobile else 19.8
        return {"bytes": nbytes, "throughput_mbit": capacity * 0.95, "link_mbit": capacity - 0.1,
                "link_capacity_mbit": capacity, "tcp_connect_ms": 0.1}

    monkeypatch.setattr(fleet_mod, "probe_link", fake_probe)
    got = fleet.probe()["controller-mobile"]
    down, up = got["controller->mobile"], got["mobile->controller"]
    assert down["attempts_capacity_mbit"] == [14.0, 19.9] and down["link_capacity_mbit"] == 19.9
    assert down["rate_error_pct"] == -0.5 and down["mean_rate_error_pct"] == -1.0
    assert reads == [30.0]
    assert up["attempts_capacity_mbit"] == [19.8] and up["rate_error_pct"] == -1.0
