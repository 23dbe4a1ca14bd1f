import json
from pathlib import Path

import pytest

from rlhfkit.data import load_rows, split_off_eval
from rlhfkit.errors import DataError

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_local_json_jsonl_parquet_read_the_same_rows(tmp_path):
    rows = json.loads((FIXTURES / "alpaca.json").read_text())
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    assert load_rows(str(FIXTURES / "alpaca.json")) == rows
    assert load_rows(str(jsonl)) == rows
    assert load_rows(str(tmp_path / "a.parquet")) == rows


def test_builtin_source_has_disjoint_splits():
    train = load_rows("builtin:default", "train", builtin_size=200)
    test = load_rows("builtin:default:test")
    assert len(train) == 200
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (b"", ".jsonl", r"dataset is empty"),
        (b"[]", ".json", r"dataset is empty"),
        (b'{"instruction": "a", "output": "b"}\n{"instruction": ', ".jsonl", r"line 2: not valid JSON"),
        (b'{"a": 1}\n\xff\xfe oops\n', ".jsonl", r"line 2: not UTF-8 text"),
        (b"[1, 2]", ".json", r"row 0: expected a JSON object"),
        (b"a,b\n1,2\n", ".csv", r"unsupported data file type"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_rows(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_unreachable_hub(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_rows(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match=r"hf:nobody/nothing: cannot load split 'train'"):
        load_rows("hf:nobody/nothing")
    with pytest.raises(DataError, match=r"builtin:nonsense"):
        load_rows("builtin:nonsense")


def test_split_off_eval_is_deterministic_and_disjoint():
    rows = [{"i": i} for i in range(100)]
    train, held_out = split_off_eval(rows, 0.1, seed=3, max_eval=64)
    assert len(held_out) == 10 and len(train) == 90
    assert not {r["i"] for r in train} & {r["i"] for r in held_out}
    assert split_off_eval(rows, 0.1, seed=3, max_eval=64) == (train, held_out)
