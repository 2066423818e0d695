"""Tier cutting and exit placement: parsing and every way a cut can be wrong."""

import pytest

from testbed.build.tiers import CutError, exit_output, make_cut, parse_exits, parse_tiers


def test_parse_tiers_and_exits():
    assert parse_tiers("mobile:1-4,edge:5-8,cloud:9-12") == {"mobile": (1, 4), "edge": (5, 8), "cloud": (9, 12)}
    assert parse_tiers("mobile:1, edge:2-3 ,cloud:4") == {"mobile": (1, 1), "edge": (2, 3), "cloud": (4, 4)}
    assert parse_exits("4,8") == [4, 8]
    assert parse_exits("all") is None and parse_exits(None) is None
    with pytest.raises(CutError, match="TIER:FIRST-LAST"):
        parse_tiers("mobile1-4")
    with pytest.raises(CutError, match="not a layer range"):
        parse_tiers("mobile:a-b")
    with pytest.raises(CutError, match="appears twice"):
        parse_tiers("mobile:1,mobile:2")
    with pytest.raises(CutError, match="layer numbers"):
        parse_exits("4,x")


def test_a_good_cut_places_exits_at_every_boundary():
    cut = make_cut({"mobile": (1, 4), "edge": (5, 8), "cloud": (9, 12)}, [2, 6], 12)
    assert cut.exits == (2, 4, 6, 8, 12)
    assert cut.exits_in("mobile") == [2, 4] and cut.exits_in("cloud") == [12]
    assert cut.tier_of(5) == "edge" and cut.boundary("edge") == 8
    assert exit_output(4, cut) == "logits" and exit_output(2, cut) == "exit_L2"
    every = make_cut({"mobile": (1, 2), "edge": (3, 4), "cloud": (5, 6)}, None, 6)
    assert every.exits == (1, 2, 3, 4, 5, 6)


@pytest.mark.parametrize(("tiers", "exits", "match"), [
    ({"mobile": (1, 4), "edge": (4, 8), "cloud": (9, 12)}, None, "overlaps the previous tier.*start edge at layer 5"),
    ({"mobile": (1, 4), "edge": (6, 8), "cloud": (9, 12)}, None, "leaves layers 5-5 in no tier"),
    ({"mobile": (1, 4), "edge": (5, 8), "cloud": (9, 11)}, None, "model has 12 layers; end the cloud tier at 12"),
    ({"mobile": (1, 4), "edge": (8, 5), "cloud": (9, 12)}, None, "runs backwards"),
    ({"Edge": (1, 4), "mobile": (5, 8), "cloud": (9, 12)}, None, "'Edge' is not a tier name"),
    ({"mobile": (1, 12)}, None, "give two tiers or more"),
    ({"mobile": (1, 4), "edge": (5, 8), "cloud": (9, 12)}, [4, 13], r"\[13\]: beyond the model's depth"),
    ({"mobile": (1, 4), "edge": (5, 8), "cloud": (9, 12)}, [0], "beyond the model's depth"),
    ({"mobile": (1, 4), "edge": (5, 8), "cloud": (9, 12)}, [3, 3], "appears twice"),
])
def test_bad_cuts_are_refused_with_the_fix(tiers, exits, match):
    with pytest.raises(CutError, match=match):
        make_cut(tiers, exits, 12)


def test_two_tiers_of_any_names_make_a_cut():
    cut = make_cut({"device": (1, 2), "cloud": (3, 6)}, [1], 6)
    assert cut.names == ("device", "cloud") and cut.first == "device" and cut.last == "cloud"
    assert cut.exits == (1, 2, 6) and cut.next_of("device") == "cloud" and cut.next_of("cloud") is None
    assert parse_tiers("mobile:1-3,cloud:4-6") == {"mobile": (1, 3), "cloud": (4, 6)}
