"""Loading labelled text: files, saved Hugging Face datasets, pairs, and every bad label kind."""

import numpy as np
import pandas as pd
import pytest

from testbed.build.datasets import load_text_dataset, split_indices
from testbed.core.errors import BuildError


def test_csv_with_string_labels(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame({"sentence": ["a", "b", "c", " ", None], "y": ["pos", "neg", "pos", "neg", "pos"]}).to_csv(p)
    d = load_text_dataset(str(p), "sentence", "y")
    assert d.labels == ["neg", "pos"] and d.text == ["a", "b", "c"] and d.label.tolist() == [1, 0, 1]


def test_integer_labels_keep_numeric_order_and_drop_unlabelled(tmp_path):
    p = tmp_path / "d.tsv"
    pd.DataFrame({"text": list("abcde"), "label": [10, 2, 2, -1, 10]}).to_csv(p, sep="\t", index=False)
    d = load_text_dataset(str(p))
    assert d.labels == ["2", "10"] and d.label.tolist() == [1, 0, 0, 1] and d.text == list("abce")


def test_sentence_pairs_from_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    pd.DataFrame({"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [0, 1]}).to_json(
        p, orient="records", lines=True)
    d = load_text_dataset(str(p), "premise", "label", "hypothesis")
    assert d.text == ["p1", "p2"] and d.text_pair == ["h1", "h2"]


@pytest.mark.parametrize(("labels", "match"), [
    ([0.5, 1.0, 0.0], "non-integer numbers"),
    ([True, False, True], "integers or strings"),
])
def test_labels_that_are_neither_integers_nor_strings(tmp_path, labels, match):
    p = tmp_path / "d.jsonl"
    pd.DataFrame({"text": ["a", "b", "c"], "label": labels}).to_json(p, orient="records", lines=True)
    with pytest.raises(BuildError, match=match):
        load_text_dataset(str(p))


def test_list_labels_are_refused(tmp_path):
    p = tmp_path / "d.jsonl"
    pd.DataFrame({"text": ["a", "b"], "label": [[1], [2]]}).to_json(p, orient="records", lines=True)
    with pytest.raises(BuildError, match="integers or strings"):
        load_text_dataset(str(p))


def test_missing_column_names_the_flag_and_the_columns(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame({"sentence": ["a"], "label": [1]}).to_csv(p, index=False)
    with pytest.raises(BuildError, match=r"no column\(s\) \['text'\].*\['sentence', 'label'\].*--text-column"):
        load_text_dataset(str(p))


def test_single_class_and_unknown_format(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [1, 1]}).to_csv(p, index=False)
    with pytest.raises(BuildError, match="at least two"):
        load_text_dataset(str(p))
    with pytest.raises(BuildError, match="does not exist"):
        load_text_dataset(str(tmp_path / "none.csv"))


def test_saved_huggingface_dataset_with_classlabel_and_hidden_test_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["negative", "positive"])})
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": ["good", "bad", "fine"], "label": [1, 0, 1]}, features=feats),
        "test": datasets.Dataset.from_dict({"sentence": ["hidden"], "label": [-1]}, features=feats),
    })
    dd.save_to_disk(str(tmp_path / "sst"))
    d = load_text_dataset(str(tmp_path / "sst"), "sentence", "label")
    assert d.labels == ["negative", "positive"] and d.label.tolist() == [1, 0, 1] and "hidden" not in d.text


def test_unloadable_hub_name_says_what_to_give(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(BuildError, match="cannot load it as a Hugging Face dataset"):
        load_text_dataset("no-such-user/no-such-dataset")


def test_builtin_corpus_and_seeded_splits():
    d = load_text_dataset("builtin:sentiment")
    assert d.labels == ["negative", "neutral", "positive"] and len(d.text) > 30000
    a = split_indices(100, {"train": 50, "val": 20, "test": 20}, 3)
    b = split_indices(100, {"train": 50, "val": 20, "test": 20}, 3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not set(a["train"]) & set(a["test"])
    with pytest.raises(BuildError, match="lower"):
        split_indices(10, {"train": 50}, 0)
