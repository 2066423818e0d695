"""One Hop type: column stems, link names, kinds, for any ordered list of tiers."""

import pytest

from testbed.core.hops import Hop, data_hops, link_ends, offload_hops, shaped_links
from testbed.formats.schema import for_tiers


def test_three_tiers_give_the_columns_and_links_the_results_have_always_had():
    cols = for_tiers(("mobile", "edge", "cloud"))
    assert cols.hops == ("controller_mobile", "mobile_edge", "edge_cloud", "return")
    assert cols.msg_hops == cols.hops[:3] and cols.wire_hops == ("mobile_edge", "edge_cloud")
    assert shaped_links(["mobile", "edge", "cloud"]) == [
        "controller-mobile", "controller-edge", "controller-cloud", "mobile-edge", "edge-cloud"]


def test_two_tiers_have_one_offload_hop():
    hops = data_hops(["device", "cloud"])
    assert [h.column for h in hops] == ["controller_device", "device_cloud", "return"]
    assert [h.kind for h in hops] == ["issue", "offload", "return"]
    assert [h.link for h in offload_hops(["device", "cloud"])] == ["device-cloud"]


def test_parse_takes_either_spelling_and_refuses_what_is_not_a_hop():
    assert Hop.parse("mobile-edge") == Hop.parse("mobile_edge") == Hop("mobile", "edge")
    assert Hop.parse("return").kind == "return" and link_ends("controller-edge") == ("controller", "edge")
    for bad in ("mobile", "a-b-c", "-edge"):
        with pytest.raises(ValueError, match="not a hop"):
            Hop.parse(bad)
    with pytest.raises(ValueError, match="no link of its own"):
        _ = Hop.parse("return").link
