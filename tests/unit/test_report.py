import pandas as pd

from testbed import report


def test_meter_line_gives_source_period_and_approx_share():
    df = pd.DataFrame({"device_mobile": ["mobile-1"] * 4, "energy_approx_mobile": [False] * 4,
                       "device_edge": [None, "edge-1", None, "edge-1"], "energy_approx_edge": [None, True, None, False],
                       "device_cloud": ["cloud-1"] * 4, "energy_approx_cloud": [True, False, False, False]})
    assert report.meter_line("cloud-1", {"source": "rapl", "update_period_s": 0.001}, df) == (
        "cloud-1: rapl, update period 1.00 ms, 25.0% of 4 windows approximate")
    assert report.meter_line("edge-1", {"source": "ina", "update_period_s": 0.005}, df).endswith(
        "50.0% of 2 windows approximate")
    assert report.meter_line("mobile-1", {"source": "model"}, df) == (
        "mobile-1: model (MODELLED, not measured), 0.0% of 4 windows approximate")
    assert report.meter_line("x", {"source": "none"}, df) == "x: none"


def test_meter_line_counts_batch_windows_once_each():
    df = pd.DataFrame({"device_mobile": ["mobile-1"] * 5, "energy_approx_mobile": [True, True, False, False, False],
                       "energy_batch_mobile": [0, 0, 1, 1, 1]})
    assert report.meter_line("mobile-1", {"source": "ina"}, df) == "mobile-1: ina, 50.0% of 2 windows approximate"
