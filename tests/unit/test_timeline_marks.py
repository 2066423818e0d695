"""The power timeline's marks: the policies' phases, link schedule steps and throttling, on its own clock."""

import pandas as pd
import pytest

from testbed.analysis.plots import power_timelines, timeline_marks
from testbed.formats.results import write_power_timeline, write_thermal

T0 = 1_700_000_000 * 10**9
S = 10**9


def test_marks_are_placed_in_seconds_from_the_first_power_sample(tmp_path):
    df = pd.DataFrame({"policy": ["a", "a", "a", "b"], "phase": ["warmup", "measure", "measure", "measure"],
                       "t_issue_unix_ns": [T0 + 1 * S, T0 + 2 * S, T0 + 5 * S, T0 + 6 * S]})
    shaping = {"schedule_applied": [{"hop": "mobile-edge", "step": 1, "unix_ns": T0 + 4 * S}]}
    write_thermal(tmp_path, "pi-1", [T0 + 3 * S, T0 + 4 * S, T0 + 7 * S], {"cpu-thermal": [60.0, 81.0, 70.0]},
                  [0, 0x4, -1])  # throttled once; -1: the flags could not be read
    cpu = {"applied": [{"device": "pi-1", "kind": "cores", "value": 0.5, "lift": False, "unix_ns": T0 + 3 * S},
                       {"device": "edge-1", "kind": "cores", "value": 0.5, "lift": False, "unix_ns": T0 + 3 * S},
                       {"device": "pi-1", "kind": "cores", "value": 0.0, "lift": True, "unix_ns": T0 + 6 * S}]}
    marks = timeline_marks(tmp_path, "pi-1", T0, df, shaping, cpu)
    rows = {(r.kind, r.label): (r.start_s, r.end_s) for r in marks.itertuples(index=False)}
    assert rows[("cpu step", "cpu cores 0.5")] == (3.0, 3.0) and rows[("cpu step", "cpu lifted")] == (6.0, 6.0)
    assert (marks["kind"] == "cpu step").sum() == 2  # the edge's cap is on the edge's timeline
    assert rows[("phase", "a warmup")] == (1.0, 1.0) and rows[("phase", "a measure")] == (2.0, 5.0)
    assert rows[("phase", "b measure")] == (6.0, 6.0)
    assert rows[("link step", "mobile-edge step 1")] == (4.0, 4.0)
    assert rows[("throttled", "flags 0x4")] == (4.0, 4.0) and (marks["kind"] == "throttled").sum() == 1


def test_the_figure_and_its_numbers_are_written_with_the_marks(tmp_path):
    write_power_timeline(tmp_path, "pi-1", [T0, T0 + S, T0 + 2 * S], {"pmic": [3.0, 4.0, 3.5]}, "pmic")
    df = pd.DataFrame({"policy": ["a"], "phase": ["measure"], "t_issue_unix_ns": [T0 + S]})
    pngs = power_timelines(tmp_path, tmp_path / "out", df, None)
    assert [p.name for p in pngs] == ["power_pi-1.png"] and pngs[0].stat().st_size > 5000
    watts = pd.read_csv(tmp_path / "out" / "power_pi-1.csv")
    assert list(watts["t_s"]) == [0.0, 1.0, 2.0] and list(watts["power_w_pmic"]) == [3.0, 4.0, 3.5]
    marks = pd.read_csv(tmp_path / "out" / "power_pi-1_marks.csv")
    assert marks.to_dict("records") == [{"kind": "phase", "label": "a measure", "start_s": pytest.approx(1.0),
                                         "end_s": pytest.approx(1.0)}]
