from pathlib import Path

import pytest

from testbed import policies
from testbed.checks import check_experiment
from testbed.cli.common import load_all
from testbed.core.config import load_experiment, load_inventory
from testbed.core.errors import ConfigError

from conftest import ROOT, write_experiment, write_inventory


def test_shipped_experiment_and_inventory_are_valid():
    exp = load_experiment(ROOT / "experiments/loopback.yaml")
    inv = load_inventory(ROOT / "inventory.yaml")
    problems = check_experiment(exp, inv, ROOT)
    assert [p for p in problems if not p.startswith("bundle")] == []


BAD = """\
name: bad
bundle: /nonexistent/bundle
devices: {mobile: mobile-1, edge: edge-1, cloud: cloud-1}
samples:
  split: test
  cuont: 10
  warmup: -1
policies:
  - name: early-exit
    treshold: {mobile: 0.9}
run:
  concurrency: "many"
"""


def test_structural_errors_all_at_once_with_paths_lines_and_suggestions(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as e:
        load_experiment(path, policies.keys_of)  # the policy registry says which keys a policy entry takes
    text = str(e.value)
    assert str(path) in text
    assert "samples.cuont (line 6): unknown key 'cuont'; did you mean 'count'?" in text
    assert "samples.warmup (line 7)" in text and "-1" in text
    assert "policies[0].treshold (line 10): unknown key 'treshold'; did you mean 'thresholds'?" in text
    assert "run.concurrency (line 12)" in text and "'many'" in text
    assert len(e.value.problems) == 4


def test_semantic_errors_name_value_and_fix(tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", **{"edge-1": {"tier": "cloud", "id": "edge-1"}})
    exp = tmp_path / "exp.yaml"
    exp.write_text(BAD.replace("  cuont: 10\n  warmup: -1\n", "").replace("treshold", "thresholds")
                   .replace('run:\n  concurrency: "many"\n', "")
                   .replace("{mobile: 0.9}", "{mobile: 1.7, edge: 0.5}")
                   .replace("mobile: mobile-1,", "mobile: mobil-1,"))
    with pytest.raises(ConfigError) as e:
        load_all(exp, inv)
    text = str(e.value)
    assert "devices.mobile: device 'mobil-1' is not in the inventory; did you mean 'mobile-1'?" in text
    assert "devices.edge: device 'edge-1' is a cloud device" in text
    assert "bundle: '/nonexistent/bundle' has no bundle.yaml" in text and "testbed partition" in text
    assert "policies[0].thresholds.mobile: 1.7 is outside [0, 1]" in text


def test_inventory_and_experiment_errors_reported_together(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("devices:\n  - id: m\n    tier: mobil\n    threads: 0\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: x\nbundle: b\ndevices: {}\npolicies: []\nbogus: 1\n")
    with pytest.raises(ConfigError) as e:
        load_all(exp, inv)
    text = str(e.value)
    assert "threads" in text and "bogus" in text and "policies" in text


def test_a_tier_name_that_cannot_name_columns_is_refused_in_the_inventory(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("devices:\n  - id: m\n    tier: Mobile-1\n  - id: m\n    tier: edge\n    cpus: [4096]\n")
    with pytest.raises(ConfigError) as e:
        load_inventory(inv)
    assert "devices[0].tier: 'Mobile-1' is not a tier name: use 1-24 lower-case letters and digits" in str(e.value)
    assert "devices[1].id: 'm' appears twice" in str(e.value)
    assert "devices[1].cpus: [4096] is not a non-empty list of CPU ids" in str(e.value)


def test_a_wildcard_bind_needs_an_address_ssh_devices_can_reach(tmp_path):
    inv = tmp_path / "inv.yaml"
    ssh = "launcher: ssh\n    host: 10.0.0.2\n    key_file: k\n    user: pi"
    inv.write_text(f"controller: {{bind: 0.0.0.0}}\ndevices:\n  - id: pi-1\n    tier: mobile\n    {ssh}\n"
                   f"  - id: jet-1\n    tier: edge\n    {ssh}\n    controller_host: 10.0.0.1\n"
                   "  - id: here\n    tier: cloud\n")
    with pytest.raises(ConfigError) as e:
        load_inventory(inv)
    text = " ".join(str(e.value).split())
    assert ("devices[0] (pi-1): controller.bind is '0.0.0.0', which no device can connect to, and neither "
            "controller.advertise nor this device's controller_host says where it reaches the controller") in text
    assert "devices[1]" not in text and "devices[2]" not in text  # jet-1 says where; a local agent uses 127.0.0.1
    inv.write_text(inv.read_text().replace("bind: 0.0.0.0", "bind: 0.0.0.0, advertise: 10.0.0.1"))
    loaded = load_inventory(inv)
    assert [loaded.controller_address(d) for d in loaded.devices] == ["10.0.0.1", "10.0.0.1", "10.0.0.1"]
    inv.write_text(inv.read_text().replace(", advertise: 10.0.0.1", ""))
    with pytest.raises(ConfigError):
        load_inventory(inv)
    inv.write_text("controller: {bind: 0.0.0.0}\ndevices:\n  - id: here\n    tier: cloud\n")
    assert load_inventory(inv).controller_address(load_inventory(inv).device("here")) == "127.0.0.1"


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\npolicies: [\n  - a\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    assert "line" in str(e.value) and "not valid YAML" in str(e.value)


def test_missing_file_is_a_config_error():
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(Path("/nonexistent/x.yaml"))


def test_bundle_files_and_split_size_are_checked(tiny_bundle, tmp_path):
    import shutil

    from conftest import write_experiment

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle.root, copy)
    (copy / "edge.onnx").unlink()
    inv = write_inventory(tmp_path / "inv.yaml")
    exp = write_experiment(tmp_path / "exp.yaml", copy, [{"name": "all-cloud"}], count=10_000)
    with pytest.raises(ConfigError) as e:
        load_all(exp, inv)
    text = str(e.value)
    assert "lacks edge.onnx" in text and "samples.count: 10000 but split 'test' has 60 samples" in text
    exp = write_experiment(tmp_path / "exp2.yaml", tiny_bundle.root, [{"name": "all-cloud"}], count=5,
                           samples={"split": "tset"})
    with pytest.raises(ConfigError, match="did you mean 'test'"):
        load_all(exp, inv)


def test_policy_parameters_and_cost_model_are_checked_with_their_yaml_paths(tiny_bundle, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml")
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [
        {"name": "all-cloud"}, {"name": "splitee", "alpha": 1.2, "o": -1}, {"name": "random", "shares": {"mobile": 1}},
        {"name": "cartography", "cost": "dimme"}, {"name": "splite"}],
        cost={"preset": "spliteee", "lam": {"mobil": 0.1}, "o": {"edge-cloud": -2}})
    with pytest.raises(ConfigError) as e:
        load_all(exp, inv)
    text = " ".join(str(e.value).split())
    assert "policies[1].alpha: 1.2 is outside [0, 1]" in text and "policies[1].o: -1.0 is negative" in text
    assert "policies[3].cost: unknown cost preset 'dimme'; did you mean 'dimee'?" in text
    assert "policies[4].name: unknown policy 'splite'; did you mean 'splitee'?" in text
    assert "cost.preset: unknown preset 'spliteee'; did you mean 'splitee'?" in text
    assert "cost.lam.mobil: not one of" in text and "cost.o.edge-cloud: -2.0 is negative" in text
    assert "policies[2]" not in text  # shares of 1 on mobile are fine


def test_a_policy_that_needs_a_table_the_bundle_lacks_is_refused_with_how_to_get_it(tiny_bundle, tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml")
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "adaptive-resnet"},
                                                                     {"name": "cartography"}])
    with pytest.raises(ConfigError) as e:
        load_all(exp, inv)
    text = " ".join(str(e.value).split())
    assert "policies[0]: adaptive-resnet needs ResNet variants with connections dropped" in text
    assert "partitions/specs/resnet-digits.yaml" in text
    assert "policies[1]: cartography needs a pool router trained on the training dynamics" in text
    assert "testbed bundle add-router" in text
    assert "rebuild it with this testbed's `testbed partition`" in text


@pytest.mark.parametrize("bad", ["..", ".", "-help", "a/b", "../up", "x" * 65, "a\x00b", ""])
def test_names_that_become_file_names_are_confined(tmp_path, bad):
    """An experiment name is a results directory and a device id a log file: neither may leave its folder."""
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path, [{"name": "all-cloud"}], name=bad)
    with pytest.raises(ConfigError) as e:
        load_experiment(exp)
    assert "name" in str(e.value) and "cannot name a file: use 1-64 letters, digits" in str(e.value)
    inv = write_inventory(tmp_path / "inv.yaml", **{"mobile-1": {"id": bad}})
    with pytest.raises(ConfigError) as e:
        load_inventory(inv)
    assert "devices[0].id" in str(e.value)


@pytest.mark.parametrize("bad", ["../../x.onnx", "/etc/passwd", "a/../../b.onnx", "~root/x.onnx", "a\\..\\b"])
def test_a_bundle_names_only_its_own_files(tiny_bundle, tmp_path, bad):
    import shutil

    import yaml

    from testbed.core.errors import BundleError
    from testbed.formats.bundle import Bundle

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle.root, copy)
    spec = yaml.safe_load((copy / "bundle.yaml").read_text())
    spec["tiers"][1]["file"] = bad
    (copy / "bundle.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(BundleError) as e:
        Bundle.load(copy)
    assert "tiers.1.file" in str(e.value) and "is not a file inside the bundle" in str(e.value)


def _bomb(levels: int = 8) -> str:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    prev = "a"
    for c in "bcdefghijk"[:levels]:
        lines.append(f"{c}: &{c} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = c
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("content, expected", [
    (b"name: a\nbundle: b\nname: c\n", "line 3: key 'name' appears twice (first at line 1)"),
    (b"name: caf\xe9\n", "line 1, byte 9: not UTF-8"),
    (_bomb().encode(), "aliases expand to more than 100,000 values"),
    (b"x: " + b"y" * (1 << 20) + b"\n", "a config file is at most 1,048,576"),
])
def test_files_a_run_could_not_read_as_meant_are_refused_by_name(tmp_path, content, expected):
    f = tmp_path / "exp.yaml"
    f.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_experiment(f)
    assert str(f) in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize("change, expected", [
    ({"seed": -1}, "seed"),
    ({"seed": 2**40}, "seed"),
    ({"timeouts": {"heartbeat_s": 1e-9}}, "timeouts.heartbeat_s"),
    ({"timeouts": {"sample_s": float("inf")}}, "timeouts.sample_s"),
    ({"timeouts": {"hello_s": 0.5}}, "timeouts.hello_s"),
    ({"timeouts": {"configure_s": float("nan")}}, "timeouts.configure_s"),
])
def test_validate_refuses_settings_a_run_would_fail_on(tmp_path, change, expected):
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path, [{"name": "all-cloud"}], **change)
    with pytest.raises(ConfigError) as e:
        load_experiment(exp)
    assert expected in str(e.value)


def test_a_local_python_that_does_not_exist_is_named(tmp_path):
    inv = write_inventory(tmp_path / "inv.yaml", **{"edge-1": {"python": "/nonexistent/python3.8"}})
    with pytest.raises(ConfigError, match=r"devices\[1\]\.python: '/nonexistent/python3.8' is not an executable"):
        load_inventory(inv)


def test_every_shipped_experiment_loads():
    """The experiments in experiments/ parse and validate as models (their bundles may not be built here)."""
    paths = sorted((ROOT / "experiments").glob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        exp = load_experiment(path)
        assert exp.name == path.stem or exp.name in path.read_text()
