"""An agent's chain of layer graphs: where it starts, where it exits, where it splits, what it hands on."""

import numpy as np
import pytest

from agents import protocol as p
from agents.agent import run_chain
from agents.runtime import Partition, sha256_file


@pytest.fixture(scope="module")
def chain(tiny_bundle):
    """The tiny bundle has one layer per tier: its tier graphs are its layer graphs, L1..L3."""
    return [Partition.load(tiny_bundle.root / f"{t}.onnx", sha256_file(tiny_bundle.root / f"{t}.onnx"))
            for t in ("mobile", "edge", "cloud")]


def test_a_chain_splits_where_told_and_the_next_tier_continues_from_the_next_layer(tiny_bundle, chain):
    table = tiny_bundle.exits("test").set_index("sample_id")
    x = tiny_bundle.samples("test").tensors(0)
    first = run_chain(chain, 1, 3, p.Work(1, 0, x, {}, [], "max", split=1), tier_final=False)
    assert not first.exited and first.layer == 1 and set(first.onward) == {"hidden", "attention_mask"}
    assert first.layer_confidences == pytest.approx([table.loc[0, "confidence_L1"]], abs=1e-6)
    stage = p.Stage("mobile", "m", 0, 0, 0, 0, first.confidence, first.prediction, False, 0, 0.0, False, 0.0, 0, -1,
                    -1, first.layer, first.layer_confidences)
    rest = run_chain(chain, 1, 3, p.Work(1, 0, first.onward, {}, [stage], "max", split=1), tier_final=True)
    assert rest.exited and rest.layer == 3 and len(rest.layer_confidences) == 2  # layers 2 and 3, not 1 again
    assert rest.prediction == table.loc[0, "prediction_L3"]
    assert rest.layer_confidences == pytest.approx([table.loc[0, "confidence_L2"], table.loc[0, "confidence_L3"]],
                                                   abs=1e-6)


def test_a_chain_exits_at_the_first_layer_confident_enough_and_always_at_the_last(tiny_bundle, chain):
    x = tiny_bundle.samples("test").tensors(1)
    early = run_chain(chain, 1, 3, p.Work(1, 1, x, {"L2": 0.0}, [], "max"), tier_final=False)
    assert early.exited and early.layer == 2 and early.onward == {}
    whole = run_chain(chain, 1, 3, p.Work(1, 1, x, {}, [], "max"), tier_final=False)
    assert whole.exited and whole.layer == 3  # the model's last layer finishes the sample on this tier
    assert np.argmax(whole.logits) == whole.prediction
    with pytest.raises(ValueError, match="layer 4 is not among the layers 1-3"):
        stage = p.Stage("x", "x", 0, 0, 0, 0, 0.0, 0, False, 0, 0.0, False, 0.0, 0, -1, -1, 3, [])
        run_chain(chain, 1, 3, p.Work(1, 1, x, {}, [stage], "max"), tier_final=True)
