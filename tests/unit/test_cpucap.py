"""CPU caps an agent applies mid-run: cgroup v1 and v2 quotas, cpufreq ceilings, and the refusals."""

import os
import time
from pathlib import Path

import boards
import pytest

from agents.cpucap import CgroupCap, CpuCapError, CpuCaps, CpufreqCap


def test_cgroup_v1_nests_the_agent_under_its_group_and_writes_the_cfs_quota(tmp_path):
    home = boards.cgroup_v1_tree(tmp_path)
    cap = CgroupCap(tmp_path, pid=4242)
    cap.open()
    assert cap.path == home / "testbed-agent-4242"  # a child: a cap on the board's group still holds
    assert (cap.path / "cgroup.procs").read_text() == "4242"
    assert "25000 per 100000" in cap.set(0.25)
    assert (cap.path / "cpu.cfs_quota_us").read_text() == "25000"
    cap.set(None)
    assert (cap.path / "cpu.cfs_quota_us").read_text() == "-1"


def test_cgroup_v2_makes_a_sibling_and_keeps_the_current_groups_ceiling(tmp_path):
    home = boards.cgroup_v2_tree(tmp_path, cpu_max="50000 100000")
    cap = CgroupCap(tmp_path, pid=7)
    cap.open()
    assert cap.path == home.parent / "testbed-agent-7"
    assert "+cpu" in (home.parent / "cgroup.subtree_control").read_text()
    cap.set(2.0)  # more than the 0.5 cores the agent had: it keeps 0.5
    assert (cap.path / "cpu.max").read_text() == "50000 100000"
    cap.set(0.1)
    assert (cap.path / "cpu.max").read_text() == "10000 100000"


def test_cpufreq_caps_every_core_clamped_and_puts_the_ceiling_back(tmp_path):
    dirs = boards.raspberry_pi4_cpufreq(tmp_path)
    caps = CpuCaps(["max_freq_mhz"], tmp_path)
    assert "600000" in caps.set("max_freq_mhz", 300)  # below what the chip does: its minimum
    assert {(d / "scaling_max_freq").read_text() for d in dirs} == {"600000"}
    caps.set("max_freq_mhz", 1000)
    assert {(d / "scaling_max_freq").read_text() for d in dirs} == {"1000000"}
    caps.close()
    assert {(d / "scaling_max_freq").read_text().strip() for d in dirs} == {"1500000"}


def test_a_device_without_the_files_is_refused_saying_what_would_do(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/\n")
    with pytest.raises(CpuCapError, match="cannot cap CPU time; use max_freq_mhz"):
        CpuCaps(["cores"], tmp_path)
    with pytest.raises(CpuCapError, match="cannot be capped; use cores"):
        CpufreqCap(tmp_path)
    with pytest.raises(CpuCapError, match="known are"):
        CpuCaps(["watts"], tmp_path)


def test_a_read_only_cpufreq_is_refused_when_opened(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes read-only files")
    for d in boards.raspberry_pi4_cpufreq(tmp_path):
        (d / "scaling_max_freq").chmod(0o444)
    with pytest.raises(CpuCapError, match="run it as root"):
        CpuCaps(["max_freq_mhz"], tmp_path)


def _busy_share(seconds: float = 0.6) -> float:
    t0, c0 = time.monotonic(), time.process_time()
    while time.monotonic() - t0 < seconds:
        pass
    return (time.process_time() - c0) / (time.monotonic() - t0)


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/sys/fs/cgroup").is_dir(), reason="needs root and cgroups")
def test_the_kernel_really_caps_this_process(tmp_path):
    """On this machine's own cgroups: a 0.2-core cap holds the busy loop's CPU share near 0.2, lifted after."""
    caps = CpuCaps(["cores"])
    try:
        caps.set("cores", 0.2)
        capped = _busy_share()
        caps.set("cores", 0)
        free = _busy_share()
    finally:
        caps.close()
    assert capped < 0.35 and free > 0.5


def test_the_throttled_time_is_read_per_sample_from_cpu_stat(tmp_path):
    """v1 gives throttled_time in ns; each call returns what accrued since the one before (the first: 0)."""
    home = boards.cgroup_v1_tree(tmp_path)
    caps = CpuCaps(["cores"], tmp_path)
    stat = next(home.glob("testbed-agent-*")) / "cpu.stat"
    stat.write_text("nr_periods 10\nnr_throttled 2\nthrottled_time 5000000\n")
    assert caps.throttled_ms() == 0.0
    stat.write_text("nr_periods 20\nnr_throttled 3\nthrottled_time 95000000\n")
    assert caps.throttled_ms() == pytest.approx(90.0)
    stat.write_text("nr_periods 30\nnr_throttled 9\nthrottled_time 400000000\n")
    caps.set("cores", 0)  # the cap lifted: what the old cap held back is not the next sample's
    stat.write_text("nr_periods 31\nnr_throttled 9\nthrottled_time 401000000\n")
    assert caps.throttled_ms() == pytest.approx(1.0)
    assert CpuCaps([], tmp_path).throttled_ms() == -1.0  # no cap opened: not measured


def test_cgroup_v2_reports_throttled_microseconds(tmp_path):
    boards.cgroup_v2_tree(tmp_path)
    cap = CgroupCap(tmp_path, pid=9)
    cap.open()
    (cap.path / "cpu.stat").write_text("usage_usec 100\nnr_throttled 1\nthrottled_usec 2500\n")
    assert cap.throttled_ns() == 2_500_000


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/sys/fs/cgroup").is_dir(), reason="needs root and cgroups")
def test_the_emulations_cgroups_go_with_an_agents_group_left_inside(tmp_path):
    """An agent killed before it removed its own group: `emulate down` removes it first, then the device's."""
    from testbed.devices.emulate import Cgroups

    cg = Cgroups(prefix="tbcaptest")
    device = cg.create("mobile1", 0.5)
    try:
        (device / "testbed-agent-12345").mkdir()  # what CgroupCap.open made, never closed
        gone = cg.remove()
        assert gone[0].endswith("mobile1/testbed-agent-12345") and gone[-1] == str(cg.base)
        assert not cg.base.exists()
    finally:
        for d in sorted((x for x in cg.base.rglob("*") if x.is_dir()), key=lambda x: -len(x.parts)):
            d.rmdir()
        if cg.base.exists():
            cg.base.rmdir()
