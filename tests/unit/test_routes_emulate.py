"""Network safety checks and the emulation's pure parts: golden command lists, its inventory, sshd config."""

import pytest
import yaml

from testbed.core.config import Inventory, load_inventory
from testbed.core.errors import EmulationError, RouteError
from testbed.devices import emulate
from testbed.devices.routes import check_routes, parse_route_dev


def inv(route_via=("to-mobile",)):
    return Inventory.model_validate({"controller": {"bind": "0.0.0.0", "route_via": list(route_via)},
                                     "devices": [{"id": "m", "tier": "mobile", "host": "198.18.0.2"}]})


def test_route_parsing():
    assert parse_route_dev("198.18.0.2 dev to-mobile src 198.18.0.1 uid 0\n    cache") == ("to-mobile", None)
    assert parse_route_dev("198.18.0.2 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0") == ("eth0", "192.0.2.1")


def test_an_address_that_would_leave_the_machine_is_refused_before_any_connection():
    leaving = lambda addr: f"{addr} via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0\n"  # noqa: E731
    with pytest.raises(RouteError, match=r"device m: 198\.18\.0\.2 routes via 192\.0\.2\.1 through 'eth0'.*leave"):
        check_routes(inv(), {"m": ["198.18.0.2"]}, leaving)
    inside = lambda addr: f"{addr} dev to-mobile src 198.18.0.1 uid 0\n"  # noqa: E731
    assert check_routes(inv(), {"m": ["198.18.0.2"]}, inside) == {"198.18.0.2": "to-mobile"}
    # a lab inventory names no emulation links: its routes are its own
    assert check_routes(Inventory.model_validate({"devices": [{"id": "m", "tier": "mobile"}]}),
                        {"m": ["10.1.1.1"]}, leaving) == {}


def test_link_plan_is_golden():
    cmds = emulate.link_plan("tb", "198.18.0")
    assert cmds[:4] == [["ip", "netns", "add", f"tb-{n}"] for n in ("ctl", "mobile", "edge", "cloud")]
    assert ["ip", "link", "add", "to-edge", "netns", "tb-mobile", "type", "veth", "peer", "name", "to-mobile",
            "netns", "tb-edge"] in cmds
    assert ["ip", "-n", "tb-mobile", "addr", "add", "198.18.0.13/30", "dev", "to-edge"] in cmds
    assert ["ip", "-n", "tb-edge", "addr", "add", "198.18.0.14/30", "dev", "to-mobile"] in cmds
    assert ["ip", "-n", "tb-edge", "link", "set", "dev", "to-mobile", "gso_max_size", "1500", "gso_max_segs",
            "1"] in cmds  # MTU-sized packets reach the rate limiter
    assert not any("default" in c for c in cmds)  # no namespace gets a default route: nothing can leave
    assert len([c for c in cmds if c[:3] == ["ip", "link", "add"]]) == 5


def test_emulation_inventory_loads_and_routes_each_hop_over_its_own_link(tmp_path):
    data = emulate.inventory(tmp_path, "tb", "198.18.0", "/venv/bin/python", emulate.DEFAULT_CPU, True)
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = load_inventory(path)
    edge = loaded.device("edge-emu")
    assert edge.launcher == "ssh" and edge.key_file == str(tmp_path / "id_ed25519")  # from defaults
    assert edge.host == "198.18.0.6" and edge.controller_host == "198.18.0.5"
    assert edge.data_host == "198.18.0.14"  # on the mobile-edge link, where the mobile agent sends
    assert edge.interface_to("mobile") == "to-mobile" and edge.interface_to("cloud") == "to-cloud"
    assert loaded.controller.netns == "tb-ctl" and set(loaded.controller.route_via) == {"to-mobile", "to-edge",
                                                                                         "to-cloud"}
    assert loaded.device("mobile-emu").facts["cpu_quota_cores"] < loaded.device("cloud-emu").facts["cpu_quota_cores"]


def test_sshd_config_allows_only_the_emulation_key(tmp_path):
    conf = emulate.sshd_config(tmp_path, "edge", "198.18.0.6")
    assert "ListenAddress 198.18.0.6:22" in conf and "PasswordAuthentication no" in conf
    assert f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}" in conf
    assert f"HostKey {tmp_path / 'edge' / 'ssh_host_ed25519_key'}" in conf


def test_defaults_fill_devices_but_never_override_them(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"launcher": "ssh", "user": "pi", "key_file": "~/.ssh/id",
                                                 "meter": {"kind": "model", "idle_w": 2.0, "busy_w": 5.0}},
                                    "devices": [{"id": "m", "tier": "mobile", "host": "10.0.0.2", "user": "root",
                                                 "meter": {"busy_w": 6.0}}]}))
    d = load_inventory(path).device("m")
    assert d.launcher == "ssh" and d.user == "root" and d.meter.kind == "model" and d.meter.busy_w == 6.0


def test_a_two_tier_emulation_links_the_device_straight_to_the_cloud(tmp_path):
    tiers = ("mobile", "cloud")
    cmds = emulate.link_plan("tb", "198.18.0", tiers)
    assert cmds[:3] == [["ip", "netns", "add", f"tb-{n}"] for n in ("ctl", "mobile", "cloud")]
    veths = [c for c in cmds if c[:3] == ["ip", "link", "add"]]
    assert len(veths) == 3  # controller-mobile, controller-cloud, mobile-cloud
    assert ["ip", "link", "add", "to-cloud", "netns", "tb-mobile", "type", "veth", "peer", "name", "to-mobile",
            "netns", "tb-cloud"] in veths
    data = emulate.inventory(tmp_path, "tb", "198.18.0", "/venv/bin/python", emulate.DEFAULT_CPU, True, tiers)
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = load_inventory(path)
    cloud = loaded.device("cloud-emu")
    assert cloud.data_host == "198.18.0.10"  # on the mobile-cloud link, where the mobile agent sends
    assert cloud.interface_to("mobile") == "to-mobile" and [d.id for d in loaded.devices] == ["mobile-emu",
                                                                                               "cloud-emu"]


def test_three_mobiles_each_get_a_link_to_the_controller_and_the_edge_and_a_route_to_its_data_address(tmp_path):
    counts = {"mobile": 3}
    assert [n for n, _ in emulate.nodes(emulate.DEFAULT_TIERS, counts)] == ["mobile1", "mobile2", "mobile3", "edge",
                                                                          "cloud"]
    cmds = emulate.link_plan("tb", "198.18.0", emulate.DEFAULT_TIERS, counts)
    veths = [c for c in cmds if c[:3] == ["ip", "link", "add"]]
    assert len(veths) == 5 + 3 + 1  # the controller to each device, each mobile to the edge, the edge to the cloud
    addr = emulate.addresses("198.18.0", emulate.DEFAULT_TIERS, counts)
    data = addr[("edge", "mobile1")]  # the edge advertises its address on the first mobile's link ...
    routes = [c for c in cmds if "route" in c]
    assert routes == [["ip", "-n", f"tb-mobile{i}", "route", "add", f"{data}/32", "dev", "to-edge"] for i in (2, 3)]
    assert not any("default" in c for c in cmds)  # ... and the others reach it over their own links, nothing else
    inv = emulate.inventory(tmp_path, "tb", "198.18.0", "/venv/bin/python", emulate.DEFAULT_CPU, True,
                            emulate.DEFAULT_TIERS, counts)
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(inv))
    loaded = load_inventory(path)
    assert [d.id for d in loaded.devices] == ["mobile1-emu", "mobile2-emu", "mobile3-emu", "edge-emu", "cloud-emu"]
    assert loaded.device("edge-emu").data_host == data
    assert loaded.device("mobile2-emu").interface_to("edge") == "to-edge"
    assert set(loaded.controller.route_via) == {"to-mobile1", "to-mobile2", "to-mobile3", "to-edge", "to-cloud"}


def test_an_emulation_that_does_not_fit_its_subnet_is_refused():
    with pytest.raises(EmulationError, match="do not fit the /24"):
        emulate.links("198.18.0", emulate.DEFAULT_TIERS, {"mobile": 16, "edge": 4})
