"""Meters on fake sysfs trees and fake clocks: exact expected deltas."""

import math
import sys
import time

import pytest

from agents.meters import (
    ExternalMeter,
    MeterError,
    ModelMeter,
    NullMeter,
    NvmlMeter,
    RaplMeter,
    detect_update_period,
    find_ina_iio_rails,
    find_ina_rails,
    find_rapl_domains,
    ina_meter,
    integrate,
    nvml_power_meter,
    open_meter,
    parse_pmic,
    parse_power_line,
    pmic_meter,
    read_ina_watts,
    replay_meter,
)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def fake_rapl(root, package_uj=1000, dram_uj=50, max_range=2**32):
    zones = {"intel-rapl:0": ("package-0", package_uj), "intel-rapl:0:0": ("core", 7),
             "intel-rapl:0:2": ("dram", dram_uj), "intel-rapl:1": ("psys", 9)}
    for zone, (name, value) in zones.items():
        d = root / zone
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{value}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


def set_uj(root, zone, value):
    (root / zone / "energy_uj").write_text(f"{value}\n")


def test_rapl_finds_package_and_dram_only(tmp_path):
    names = [d.name for d in find_rapl_domains(fake_rapl(tmp_path))]
    assert names == ["package-0", "dram-0"]


def test_rapl_window_is_the_counter_difference_per_rail(tmp_path):
    root, clock = fake_rapl(tmp_path), Clock()
    m = RaplMeter(root, clock, update_period_s=0.001)
    m.begin("a")
    set_uj(root, "intel-rapl:0", 1000 + 2_500_000)
    set_uj(root, "intel-rapl:0:2", 50 + 500_000)
    clock.t += 0.5
    d = m.end("a")
    assert d.rails_j == {"package-0": 2.5, "dram-0": 0.5}
    assert d.energy_j == pytest.approx(3.0) and d.duration_s == pytest.approx(0.5)
    assert d.source == "rapl" and not d.approx


def test_rapl_wraparound(tmp_path):
    root, clock = fake_rapl(tmp_path, package_uj=2**32 - 1_000_000, max_range=2**32), Clock()
    m = RaplMeter(root, clock)
    m.begin("w")
    set_uj(root, "intel-rapl:0", 3_000_000)  # wrapped past max_energy_range_uj
    clock.t += 1
    assert m.end("w").rails_j["package-0"] == pytest.approx(4.0)


def test_rapl_windows_of_any_length_count_every_wrap(tmp_path):
    """A window over three wraps (a long batch window): the background reads between them see each one."""
    root, clock = fake_rapl(tmp_path, package_uj=2**32 - 1_000_000, max_range=2**32), Clock()
    m = RaplMeter(root, clock)
    m.begin("long")
    for _ in range(3):  # each lap: +1 J to the top, wrap, then to 3 J short of it again
        set_uj(root, "intel-rapl:0", 500_000)
        m.read()  # what the timeline's 50 ms reads do in the background
        set_uj(root, "intel-rapl:0", 2**32 - 1_000_000)
        m.read()
    set_uj(root, "intel-rapl:0", 3_000_000)
    clock.t += 3600
    assert m.end("long").rails_j["package-0"] == pytest.approx(3 * 2**32 / 1e6 + 4.0)  # one wrap per window read 4 J


def test_windows_nest_and_overlap_by_key(tmp_path):
    root, clock = fake_rapl(tmp_path), Clock()
    m = RaplMeter(root, clock)
    m.begin("outer")
    set_uj(root, "intel-rapl:0", 1000 + 1_000_000)
    m.begin("inner")
    set_uj(root, "intel-rapl:0", 1000 + 3_000_000)
    assert m.end("inner").rails_j["package-0"] == pytest.approx(2.0)
    assert m.end("outer").rails_j["package-0"] == pytest.approx(3.0)


def test_window_misuse_is_an_error(tmp_path):
    m = RaplMeter(fake_rapl(tmp_path), Clock())
    m.begin("x")
    with pytest.raises(MeterError, match="already open"):
        m.begin("x")
    with pytest.raises(MeterError, match="never begun"):
        m.end("y")
    m.end("x")
    with pytest.raises(MeterError, match="never begun"):
        m.end("x")


def test_short_window_is_flagged_approx_never_zeroed(tmp_path):
    root, clock = fake_rapl(tmp_path), Clock()
    m = RaplMeter(root, clock, update_period_s=0.010)
    m.begin("s")
    clock.t += 0.004  # shorter than the 10 ms update period: the counter did not move
    d = m.end("s")
    assert d.approx and d.energy_j == 0.0


def test_update_period_is_the_smallest_change_interval():
    clock = Clock()
    state = {"reads": 0}

    def read():
        # the counter steps every 5 reads; each read advances the clock by 1 ms
        state["reads"] += 1
        clock.t += 0.001
        return state["reads"] // 5

    assert detect_update_period(read, clock, max_s=1.0) == pytest.approx(0.005)

    def stuck():
        clock.t += 0.001
        return 7

    assert detect_update_period(stuck, clock, max_s=0.05) is None


def test_model_meter_is_idle_plus_busy_cpu_time():
    clock, cpu = Clock(), Clock()
    m = ModelMeter(idle_w=2.0, busy_w=6.0, clock=clock, cpu_time=cpu)
    m.begin("k")
    clock.t += 0.010
    cpu.t += 0.004
    d = m.end("k")
    assert d.energy_j == pytest.approx(2.0 * 0.010 + 4.0 * 0.004)
    assert d.source == "model" and "not measured" in m.describe()["note"]
    with pytest.raises(MeterError, match="idle_w <= busy_w"):
        ModelMeter(idle_w=5, busy_w=1)


def test_null_meter_gives_no_energy():
    clock = Clock()
    m = NullMeter(clock)
    m.begin("n")
    clock.t += 1
    d = m.end("n")
    assert d.energy_j is None and d.source == "none" and d.duration_s == 1


def test_open_meter_probes_in_order(tmp_path):
    none = {"rapl_root": tmp_path / "absent", "hwmon_root": tmp_path / "absent",
            "iio_root": tmp_path / "absent"}  # and no vcgencmd here
    assert open_meter("auto", **none).source == "none"
    assert open_meter("auto", idle_w=1, busy_w=2, **none).source == "model"
    assert open_meter("auto", rapl_root=fake_rapl(tmp_path / "rapl"), hwmon_root=tmp_path / "absent").source == "rapl"
    with pytest.raises(MeterError, match="no readable RAPL"):
        open_meter("rapl", rapl_root=tmp_path / "absent")
    with pytest.raises(MeterError, match="no INA"):
        open_meter("ina", hwmon_root=tmp_path / "absent", iio_root=tmp_path / "absent")
    with pytest.raises(MeterError, match="needs idle_w and busy_w"):
        open_meter("model")
    with pytest.raises(MeterError, match="unknown meter"):
        open_meter("joulescope")
    assert not math.isnan(open_meter("model", idle_w=1, busy_w=2).busy_w)


def test_integrate_trapezoids_with_interpolated_edges():
    times, watts = [0.0, 1.0, 2.0, 3.0], [2.0, 4.0, 4.0, 0.0]
    energy, inside = integrate(times, watts, 0.5, 2.5)
    # 0.5..1: (3+4)/2*0.5 ; 1..2: 4 ; 2..2.5: (4+2)/2*0.5
    assert energy == pytest.approx(1.75 + 4 + 1.5) and inside == 2
    assert integrate(times, watts, 5.0, 6.0) == (0.0, 0)  # held at the last sample, 0 W
    assert integrate(times, watts, 1.0, 1.0) == (0.0, 0)
    with pytest.raises(MeterError):
        integrate([], [], 0, 1)


def fake_hwmon(root):
    ina = root / "hwmon3"
    ina.mkdir(parents=True)
    (ina / "name").write_text("ina3221\n")
    for n, (label, mv, ma) in enumerate([("VDD_IN", 5000, 1200), ("VDD_CPU_GPU_CV", 5000, 400)], start=1):
        (ina / f"in{n}_label").write_text(label + "\n")
        (ina / f"in{n}_input").write_text(f"{mv}\n")
        (ina / f"curr{n}_input").write_text(f"{ma}\n")
    ina238 = root / "hwmon4"
    ina238.mkdir()
    (ina238 / "name").write_text("ina238\n")
    (ina238 / "in1_label").write_text("VDD_SOC\n")
    (ina238 / "power1_input").write_text("1500000\n")
    other = root / "hwmon0"
    other.mkdir()
    (other / "name").write_text("k10temp\n")
    return root


def test_ina_rails_read_as_watts(tmp_path):
    rails = find_ina_rails(fake_hwmon(tmp_path))
    assert sorted(rails) == ["VDD_CPU_GPU_CV", "VDD_IN", "VDD_SOC"]
    assert read_ina_watts(rails) == {"VDD_IN": 6.0, "VDD_CPU_GPU_CV": 2.0, "VDD_SOC": 1.5}


def test_timeline_meter_integrates_each_rail_and_flags_sparse_windows(tmp_path):
    root, clock = fake_hwmon(tmp_path), Clock()
    m = ina_meter(root, period_s=0.01, clock=clock, background=False)  # sampled by hand below
    m.begin("w")
    for _ in range(10):
        clock.t += 0.01
        m.sample_once()
    (root / "hwmon3" / "curr1_input").write_text("2400\n")  # VDD_IN doubles to 12 W
    for _ in range(10):
        clock.t += 0.01
        m.sample_once()
    d = m.end("w")
    assert d.rails_j["VDD_SOC"] == pytest.approx(1.5 * 0.2)
    assert d.rails_j["VDD_IN"] == pytest.approx(6.0 * 0.1 + 9.0 * 0.01 + 12.0 * 0.09)
    assert not d.approx and d.source == "ina"
    m.begin("short")
    clock.t += 0.004
    short = m.end("short")
    # VDD_IN is the board's input: it already carries the other rails, which stay its breakdown
    assert short.approx and short.energy_j == pytest.approx(12.0 * 0.004)
    assert d.energy_j == pytest.approx(d.rails_j["VDD_IN"]) and m.describe()["total"] == "VDD_IN"


def test_timeline_meter_background_thread_samples_and_stops(tmp_path):
    m = ina_meter(fake_hwmon(tmp_path), period_s=0.002)
    m.begin("bg")
    deadline = time.monotonic() + 30  # the thread's pace, not any duration, is under test
    while len(m.times) <= 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    d = m.end("bg")
    m.close()
    assert len(m.times) > 3 and d.energy_j > 0
    assert d.energy_j == pytest.approx(6.0 * d.duration_s, rel=1e-6)  # constant: VDD_IN's 6 W (it holds the rest)


class FakeNvml:
    """Scripted pynvml: two GPUs; energy in mJ and power in mW set by the test."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy=True):
        self.energy_mj = {0: 1_000, 1: 5_000}
        self.power_mw = {0: 70_000, 1: 30_000}
        self.has_energy = energy

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.has_energy:
            raise self.NVMLError("Not Supported")
        return self.energy_mj[h]

    def nvmlDeviceGetPowerUsage(self, h):
        return self.power_mw[h]


def test_nvml_counter_per_gpu():
    nv, clock = FakeNvml(), Clock()
    m = NvmlMeter(nv, clock=clock)
    m.begin("g")
    nv.energy_mj[0] += 2_500
    nv.energy_mj[1] += 500
    clock.t += 0.1
    d = m.end("g")
    assert d.rails_j == {"gpu0": 2.5, "gpu1": 0.5} and d.energy_j == pytest.approx(3.0) and d.source == "nvml"


def test_nvml_without_counter_is_refused_and_power_sampling_takes_over():
    with pytest.raises(MeterError, match="energy counter unavailable: Not Supported"):
        NvmlMeter(FakeNvml(energy=False))
    clock = Clock()
    m = nvml_power_meter(FakeNvml(energy=False), period_s=0.01, clock=clock, background=False)
    m.begin("p")
    for _ in range(5):
        clock.t += 0.01
        m.sample_once()
    d = m.end("p")
    assert d.source == "nvml-power" and d.energy_j == pytest.approx(100.0 * 0.05)
    assert "one-second average" in m.describe()["reading"]  # this pynvml has no field values


class FakeNvmlFields(FakeNvml):
    """A driver that answers the instant-power field (values differ from the averaged reading)."""

    NVML_FI_DEV_POWER_INSTANT = 186

    class _Value:
        def __init__(self, mw):
            self.nvmlReturn = 0
            self.value = type("V", (), {"uiVal": mw})()

    def nvmlDeviceGetFieldValues(self, h, fields):
        assert fields == [186]
        return [self._Value({0: 90_000, 1: 10_000}[h])]


def test_nvml_power_reads_instant_power_where_the_driver_has_it():
    clock = Clock()
    m = nvml_power_meter(FakeNvmlFields(energy=False), period_s=0.01, clock=clock, background=False)
    m.begin("p")
    for _ in range(5):
        clock.t += 0.01
        m.sample_once()
    d = m.end("p")
    assert d.rails_j == pytest.approx({"gpu0": 90.0 * 0.05, "gpu1": 10.0 * 0.05})  # instant, not the 70/30 W average
    assert m.describe()["reading"].startswith("instant power")


PMIC_OUTPUT = """\
     3V7_WL_SW_A current(0)=0.00000000A
    3V3_SYS_A current(1)=0.05270000A
   VDD_CORE_A current(7)=2.50000000A
     3V7_WL_SW_V volt(8)=3.71000000V
    3V3_SYS_V volt(9)=3.30000000V
   VDD_CORE_V volt(15)=0.80000000V
    EXT5V_V volt(24)=5.10000000V
"""


def test_parse_pmic_multiplies_volts_and_amps_per_rail():
    rails = parse_pmic(PMIC_OUTPUT)
    assert rails == pytest.approx({"3V7_WL_SW": 0.0, "3V3_SYS": 3.3 * 0.0527, "VDD_CORE": 2.0})
    with pytest.raises(MeterError, match="no rail"):
        parse_pmic("error: unknown command")


def test_pmic_meter_runs_the_command(tmp_path):
    script = tmp_path / "vcgencmd"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + PMIC_OUTPUT + "EOF\n")
    script.chmod(0o755)
    clock = Clock()
    m = pmic_meter((str(script), "pmic_read_adc"), period_s=0.1, clock=clock, background=False)
    m.begin("pi")
    clock.t += 0.1
    m.sample_once()
    d = m.end("pi")
    assert d.source == "pmic" and d.energy_j == pytest.approx((2.0 + 3.3 * 0.0527) * 0.1)
    assert "PMIC rails only: below the board's draw" in m.describe()["reading"]
    scaled = pmic_meter((str(script), "pmic_read_adc"), period_s=0.1, clock=clock, background=False, scale=1.25)
    scaled.begin("pi")
    clock.t += 0.1
    scaled.sample_once()
    d = scaled.end("pi")  # calibrated against a wall meter: the total scaled, the rails as read
    assert d.energy_j == pytest.approx(1.25 * (2.0 + 3.3 * 0.0527) * 0.1)
    assert d.rails_j["VDD_CORE"] == pytest.approx(0.2)
    assert "x 1.25" in scaled.describe()["reading"]
    with pytest.raises(MeterError, match="failed"):
        pmic_meter((str(tmp_path / "absent"),), background=False)


def test_power_lines():
    assert parse_power_line("5.5\n") == (None, 5.5)
    assert parse_power_line("1700000000.25, 4.0") == (1700000000.25, 4.0)
    with pytest.raises(MeterError, match="expected"):
        parse_power_line("watts: lots")


def test_external_meter_maps_stamped_readings_and_integrates(tmp_path):
    script = tmp_path / "meter.py"
    # ten readings stamped 0.1 s apart on the meter's clock, 5 W then 7 W, then the meter idles
    script.write_text("import sys, time\n"
                      "for i in range(10):\n"
                      "    print(f'{1000 + i / 10:.1f} {5.0 if i < 5 else 7.0}', flush=True)\n"
                      "time.sleep(30)\n")
    clock = Clock()
    m = ExternalMeter([sys.executable, str(script)], clock=clock)
    try:
        deadline = time.monotonic() + 30  # a loaded machine may take seconds to start python
        while len(m.times) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert m.times == pytest.approx([100.0 + i / 10 for i in range(10)])  # offset from the first reading
        clock.t = 100.4  # begins on a 5 W reading, ends on a 7 W one
        m.begin("e")
        clock.t = 100.6
        d = m.end("e")
        assert d.source == "external" and d.energy_j == pytest.approx((5 + 7) / 2 * 0.1 + 7 * 0.1)
    finally:
        m.close()
    with pytest.raises(MeterError, match="no reading"):
        ExternalMeter([sys.executable, "-c", "import time; time.sleep(5)"], first_reading_s=0.3)  # never prints


def test_replay_equals_the_original_log(tmp_path):
    root, clock = fake_hwmon(tmp_path), Clock()
    live = ina_meter(root, period_s=0.01, clock=clock, background=False)
    windows = []
    for k in range(6):
        live.begin(f"w{k}")
        start = clock.t
        for _ in range(k + 1):
            clock.t += 0.01
            (root / "hwmon3" / "curr1_input").write_text(f"{1000 + 100 * k}\n")
            live.sample_once()
        windows.append((start, clock.t, live.end(f"w{k}")))
    replay_clock = Clock()
    replay = replay_meter(live.times, live.rails, replay_clock)
    for k, (t0, t1, original) in enumerate(windows):
        replay_clock.t = t0
        replay.begin(f"r{k}")
        replay_clock.t = t1
        again = replay.end(f"r{k}")
        assert again.rails_j == pytest.approx(original.rails_j) and again.approx == original.approx


def test_rapl_power_timeline_from_counter_differences(tmp_path):
    root, clock = fake_rapl(tmp_path, package_uj=2**32 - 1_000_000, dram_uj=0), Clock()
    m = RaplMeter(root, clock)
    tl = m.record(period_s=0.1, background=False)  # first reading taken now, at t=100.0
    for step in range(1, 4):
        clock.t += 0.1
        set_uj(root, "intel-rapl:0", (2**32 - 1_000_000 + step * 1_500_000) % 2**32)  # 15 W, wraps at step 1
        set_uj(root, "intel-rapl:0:2", step * 200_000)  # 2 W
        tl.sample_once()
    times, rails = m.snapshot()
    assert times == pytest.approx([100.05, 100.15, 100.25])
    assert rails["package-0"] == pytest.approx([15.0] * 3) and rails["dram-0"] == pytest.approx([2.0] * 3)
    m.close()


def test_nvml_power_timeline_from_counter_differences():
    nv, clock = FakeNvml(), Clock()
    m = NvmlMeter(nv, clock=clock)
    tl = m.record(period_s=0.5, background=False)
    clock.t += 0.5
    nv.energy_mj[0] += 100_000  # 200 W on gpu0
    tl.sample_once()
    times, rails = m.snapshot()
    assert times == pytest.approx([100.25]) and rails == {"gpu0": pytest.approx([200.0]), "gpu1": pytest.approx([0.0])}


def test_ina_rails_under_iio_on_older_jetsons(tmp_path):
    """L4T 32 (TX2, Xavier): ina3221x under iio, power in mW, or mV x mA where no power file exists."""
    dev = tmp_path / "iio" / "iio:device0"
    dev.mkdir(parents=True)
    (dev / "name").write_text("ina3221x\n")
    for n, (label, mw, mv, ma) in enumerate([("VDD_IN", 5200, None, None), ("VDD_SYS_GPU", None, 19000, 100)]):
        (dev / f"rail_name_{n}").write_text(label + "\n")
        if mw is not None:
            (dev / f"in_power{n}_input").write_text(f"{mw}\n")
        else:
            (dev / f"in_voltage{n}_input").write_text(f"{mv}\n")
            (dev / f"in_current{n}_input").write_text(f"{ma}\n")
    other = tmp_path / "iio" / "iio:device1"
    other.mkdir()
    (other / "name").write_text("bmi160\n")
    rails = find_ina_iio_rails(tmp_path / "iio")
    assert sorted(rails) == ["VDD_IN", "VDD_SYS_GPU"]
    assert read_ina_watts(rails) == {"VDD_IN": 5.2, "VDD_SYS_GPU": 1.9}
    clock = Clock()
    m = open_meter("ina", hwmon_root=tmp_path / "absent", iio_root=tmp_path / "iio")
    m.close()
    m = ina_meter(tmp_path / "absent", period_s=0.01, iio_root=tmp_path / "iio", clock=clock, background=False)
    m.begin("w")
    for _ in range(10):
        clock.t += 0.01
        m.sample_once()
    d = m.end("w")
    assert d.source == "ina" and d.energy_j == pytest.approx(5.2 * 0.1)  # the input rail, not input + GPU


def test_two_sockets_keep_both_drams(tmp_path):
    """A two-socket server: package-0/1 and a ``dram`` zone under each; the fake counters advance by +1, +0.5, +2
    and +0.25 J, so the window holds 3.75 J (keying both drams by name lost socket 0's and read 3.25 J)."""
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0:2": "dram", "intel-rapl:1": "package-1",
             "intel-rapl:1:2": "dram"}
    for zone, name in zones.items():
        d = tmp_path / zone
        d.mkdir()
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text("0\n")
        (d / "max_energy_range_uj").write_text(f"{2**32}\n")
    clock = Clock()
    m = RaplMeter(tmp_path, clock, update_period_s=0.001)
    m.begin("w")
    for zone, uj in zip(zones, (1_000_000, 500_000, 2_000_000, 250_000), strict=True):
        set_uj(tmp_path, zone, uj)
    clock.t += 1
    d = m.end("w")
    assert d.rails_j == {"package-0": 1.0, "dram-0": 0.5, "package-1": 2.0, "dram-1": 0.25}
    assert d.energy_j == pytest.approx(3.75)


def test_a_jetson_nano_takes_its_input_rail_and_leaves_out_unconnected_channels(tmp_path):
    """Jetson Nano's INA3221 (hwmon, L4T 32): POM_5V_IN is the module's input; the GPU and CPU rails are inside."""
    ina = tmp_path / "hwmon1"
    ina.mkdir()
    (ina / "name").write_text("ina3221\n")
    for n, (label, mv, ma) in enumerate([("POM_5V_IN", 5000, 800), ("POM_5V_GPU", 5000, 100),
                                         ("POM_5V_CPU", 5000, 300), ("NC", 0, 0)], start=1):
        (ina / f"in{n}_label").write_text(label + "\n")
        (ina / f"in{n}_input").write_text(f"{mv}\n")
        (ina / f"curr{n}_input").write_text(f"{ma}\n")
    clock = Clock()
    m = ina_meter(tmp_path, period_s=0.01, clock=clock, background=False)
    m.begin("w")
    for _ in range(10):
        clock.t += 0.01
        m.sample_once()
    d = m.end("w")
    assert set(d.rails_j) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}  # the NC channel is not a rail
    assert d.energy_j == pytest.approx(4.0 * 0.1)  # 4 W in, not 4 + 0.5 + 1.5


def test_a_gpu_server_reads_rapl_and_nvml_together(tmp_path, monkeypatch):
    """meter: auto on a machine with RAPL and NVML: the CPU packages, DRAM and GPUs in one window (RAPL alone, as
    before, left the GPUs out)."""
    from agents import meters

    nv, clock = FakeNvml(), Clock()
    gpu = NvmlMeter(nv, clock=clock)
    monkeypatch.setattr(meters, "_open_nvml", lambda: gpu)
    root = fake_rapl(tmp_path / "rapl")
    m = open_meter("auto", rapl_root=root, hwmon_root=tmp_path / "absent")
    assert m.source == "rapl+nvml" and [p["source"] for p in m.describe()["parts"]] == ["rapl", "nvml"]
    m.begin("w")
    set_uj(root, "intel-rapl:0", 1000 + 2_000_000)
    nv.energy_mj[0] += 3_000
    clock.t += 0.2
    d = m.end("w")
    assert d.rails_j == {"rapl:package-0": 2.0, "rapl:dram-0": 0.0, "nvml:gpu0": 3.0, "nvml:gpu1": 0.0}
    assert d.energy_j == pytest.approx(5.0)
    m.close()
    assert open_meter("rapl", rapl_root=root, hwmon_root=tmp_path / "absent").source == "rapl"  # named: alone


def test_a_rail_that_does_not_read_is_skipped_not_fatal(tmp_path):
    """A disabled INA channel answers an error on read: that rail is left out and named, the others go on."""
    root = fake_hwmon(tmp_path)
    (root / "hwmon3" / "curr2_input").write_text("")  # what a read that fails leaves: no number
    m = ina_meter(root, period_s=0.01, clock=Clock(), background=False)
    assert "VDD_CPU_GPU_CV" not in m.rails and "VDD_IN" in m.rails
    assert "ValueError" in m.describe()["unreadable_rails"]["VDD_CPU_GPU_CV"]
    for f in ("curr1_input", "in1_input"):
        (root / "hwmon3" / f).unlink()
    (root / "hwmon4" / "power1_input").unlink()
    with pytest.raises(MeterError, match="no INA rail could be read"):
        m.sample_once()
