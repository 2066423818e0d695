import pandas as pd

from testbed.analysis import report


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


def test_fidelity_lines_split_rows_by_schedule_step():
    df = pd.DataFrame({"phase": ["measure"] * 6, "t_issue_unix_ns": [10, 20, 30, 110, 120, 130],
                       "net_ms_mobile_edge": [1.0, 1.2, 1.1, 26.0, 25.5, 25.8]})
    manifest = {"shaping": {"backend": "userspace", "links": {"mobile-edge": {"delay_ms": 0, "jitter_ms": 0}},
                            "schedule_applied": [{"hop": "mobile-edge", "unix_ns": 100, "at_s": 1, "applied_at_s": 1.02,
                                                  "profile": {"delay_ms": 25, "jitter_ms": 0, "rate_mbit": 5}}]}}
    first, second = report.fidelity_lines(df, manifest["shaping"])
    assert first == ("fidelity mobile-edge (as the run started): configured 0 ms; measured net median 1.10 ms "
                     "(p5 1.01, p95 1.19) over 3 rows")
    assert second.startswith("fidelity mobile-edge (schedule step from 1.02 s, step at_s 1): configured 25 ms, "
                             "5 Mbit/s; measured net median 25.80 ms") and second.endswith("over 3 rows")
    assert report.fidelity_lines(df, {"backend": "none"}) == []


def test_fidelity_of_the_controller_link_covers_both_directions():
    df = pd.DataFrame({"phase": ["measure"] * 4, "t_issue_unix_ns": [10, 20, 30, 40],
                       "exit_tier": ["mobile", "mobile", "cloud", "mobile"],
                       "net_ms_controller_mobile": [15.2, 15.4, 15.3, 15.6],
                       "net_ms_return": [15.1, 15.3, 0.4, 15.2]})
    manifest = {"shaping": {"backend": "userspace", "links": {"controller-mobile": {"delay_ms": 15}},
                            "probes": {"controller-mobile": {"controller->mobile": {"throughput_mbit": 19.5}}}}}
    there, back = report.fidelity_lines(df, manifest["shaping"])
    assert there == ("fidelity controller-mobile: configured 15 ms; measured net median 15.35 ms (p5 15.21, p95 "
                     "15.57) over 4 rows; probes controller->mobile 19.50 Mbit/s")
    # only the answers that came back over that link (exits on mobile): the cloud's comes over its own
    assert back.startswith("fidelity controller-mobile (answers back): configured 15 ms; measured net median "
                           "15.20 ms") and back.endswith("over 3 rows")


def test_fidelity_of_an_answers_only_controller_link_carries_its_probes():
    """controller-edge carries no Work (no column of its own): one line, the answers back, with the probes."""
    df = pd.DataFrame({"phase": ["measure"] * 3, "t_issue_unix_ns": [10, 20, 30],
                       "exit_tier": ["edge", "cloud", "edge"], "net_ms_return": [8.3, 0.4, 8.5]})
    manifest = {"shaping": {"backend": "userspace", "links": {"controller-edge": {"delay_ms": 8}},
                            "probes": {"controller-edge": {"edge->controller": {"throughput_mbit": 49.0}}}}}
    line, = report.fidelity_lines(df, manifest["shaping"])
    assert line == ("fidelity controller-edge (answers back): configured 8 ms; measured net median 8.40 ms (p5 8.31, "
                    "p95 8.49) over 2 rows; probes edge->controller 49.00 Mbit/s")


def test_fidelity_probes_give_the_link_rate_beside_the_payload_rate():
    df = pd.DataFrame({"phase": ["measure"], "t_issue_unix_ns": [10], "net_ms_mobile_edge": [20.5]})
    manifest = {"shaping": {"backend": "userspace", "links": {"mobile-edge": {"delay_ms": 20, "rate_mbit": 10}},
                            "probes": {"mobile-edge": {"mobile->edge": {"throughput_mbit": 9.56, "link_mbit": 9.996}}}}}
    line, = report.fidelity_lines(df, manifest["shaping"])
    assert line.endswith("probes mobile->edge 10.00 Mbit/s on the link (9.56 of payload)")
    manifest["shaping"]["probes"]["mobile-edge"]["mobile->edge"]["link_capacity_mbit"] = 10.02
    line, = report.fidelity_lines(df, manifest["shaping"])
    assert line.endswith("probes mobile->edge 10.02 Mbit/s on the link at its fastest 30% (mean 10.00; 9.56 of "
                         "payload)")
    probe = manifest["shaping"]["probes"]["mobile-edge"]["mobile->edge"]
    probe |= {"sender_steal_pct": 0.4, "receiver_steal_pct": 7.25}
    line, = report.fidelity_lines(df, manifest["shaping"])
    assert line.endswith("(mean 10.00; 9.56 of payload, the host stole 7.2% of an end's CPU meanwhile)")
