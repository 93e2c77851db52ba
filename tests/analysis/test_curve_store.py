"""The fast read of many logs (columns from a sample, a byte census vouching for each file) gives
exactly what the slow, exact read gives, whatever the files hold that the sample did not show."""
import json

import pyarrow as pa
import pytest

from analysis import curve_store


def log(steps, **extra):
    return "".join(json.dumps({"step": s, "time": 1.7e9 + s, "loss": 1.0 / (s + 1), **extra}) + "\n" for s in steps)


def files_of(tmp_path, texts):
    out = {}
    for i, text in enumerate(texts):
        p = tmp_path / f"r{i:03d}" / "metrics.jsonl"
        p.parent.mkdir()
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        out[f"r{i:03d}"] = p
    return out


def frames_equal(a: pa.Table, b: pa.Table):
    fa, fb = curve_store.frame(a), curve_store.frame(b)
    assert sorted(fa.columns) == sorted(fb.columns)
    fa, fb = fa[sorted(fa.columns)], fb[sorted(fb.columns)]
    for col in fa.columns:
        left, right = fa[col].tolist(), fb[col].tolist()
        assert [repr(x) for x in left] == [repr(x) for x in right], col


ODD = {  # what a log can hold that sampled columns miss, at positions no sample reaches
    0: log(range(3), day="2026-01-01", uid="5f0e8c1e-2c4a-4c8e-9d9a-1a2b3c4d5e6f"),         # texts DuckDB takes for a date, a UUID
    7: log(range(5)) + json.dumps({"step": 5, "time": 1.0, "late_key": 3.5}) + "\n",      # a key no sampled file has
    11: log(range(3), note='he said "hi": twice'),                                         # escaped quotes in a string
    13: log(range(4)) + '{"step": 4, "time": 1.0, "loss": null}\n',                          # a null value
    19: log(range(4)) + "not json at all\n" + log(range(4, 6)),                             # an unreadable line
    23: log(range(6)) + log(range(3, 8)),                                                   # replayed steps (a resume)
    29: log(range(3)) + '{"step": 3, "ti',                                                  # a torn last line
    31: log(range(3), nested={"a": 1, "b": [1, 2]}),                                         # a nested object
    41: log(range(2)) + '{"time": 1.0, "loss": 0.5}\n',                                      # a line without a step
    43: log(range(3), flag=True),                                                          # a bool only here
    47: log(range(3)).replace(", ", ","),                                                   # compact JSON, still fine
    21: log(range(3), at="12:30"),                                                         # a colon inside a text
    25: log(range(3)).replace('": ', '" : '),                                               # odd spacing, still fine
    53: log(range(3)) + '{"step": 3, "time": 1.0, "loss": NaN, "acc": Infinity}\n',          # bare NaN / Infinity
}


def texts(n):
    return [ODD.get(i, log(range(8), lr=0.1 * (i % 3))) for i in range(n)]


def test_the_fast_read_equals_the_exact_read_on_logs_the_sample_misses(tmp_path):
    files = files_of(tmp_path, texts(60))
    assert len(files) > curve_store.SAMPLE
    fast, fast_bad = curve_store.convert(files)
    exact, exact_bad = curve_store._exact(files)
    frames_equal(fast, exact)
    assert {k: v for k, v in fast_bad.items() if v} == {k: v for k, v in exact_bad.items() if v}
    df = curve_store.frame(fast)
    assert df.loc[df.run_id == "r000", "day"].tolist() == ["2026-01-01"] * 3              # the text logged
    assert df.loc[df.run_id == "r021", "at"].tolist() == ["12:30"] * 3
    assert df.loc[df.run_id == "r007", "late_key"].tolist()[-1] == 3.5     # not dropped
    assert fast_bad["r019"] == 1 and not fast_bad.get("r029")              # unreadable counted, torn cut
    replayed = df[df.run_id == "r023"]
    assert replayed["step"].tolist() == list(range(8))                     # steps 3..5 keep the last value
    assert list(df["run_id"].drop_duplicates()) == sorted(files)           # runs in the order asked


def test_the_fast_read_vouches_for_plain_logs_without_rereading_them(tmp_path, monkeypatch):
    files = files_of(tmp_path, texts(60))
    reread = []
    real = curve_store._exact
    monkeypatch.setattr(curve_store, "_exact", lambda f: reread.append(sorted(f)) or real(f))
    curve_store.convert(files)
    assert len(reread) == 1                       # once, for the files the census doubted
    doubted = set(reread[0])
    plain = {f"r{i:03d}" for i in range(60) if i not in ODD}
    assert not doubted & plain                    # every plain log was taken from the one fast read
    assert {"r007", "r011", "r013", "r019", "r031", "r041"} <= doubted


@pytest.mark.parametrize("n", [1, curve_store.SAMPLE, curve_store.SAMPLE + 1])
def test_small_and_boundary_sizes_read_alike(tmp_path, n):
    files = files_of(tmp_path, [log(range(4), k=i) for i in range(n)])
    table, bad = curve_store.convert(files)
    assert table.num_rows == 4 * n and not any(bad.values())


def test_a_metric_logged_once_as_text_loses_no_line(tmp_path):
    odd = log(range(2)) + '{"step": 2, "time": 1.0, "loss": "text now"}\n'
    files = files_of(tmp_path, [odd if i == 37 else log(range(3)) for i in range(40)])
    for table, bad in (curve_store.convert(files), curve_store._exact(files)):
        assert table.num_rows == 3 * 40 and not any(bad.values())


def test_a_number_where_the_sample_saw_text_cannot_hide_a_missed_key(tmp_path):
    """DuckDB casts a number into a text column without a word; the census counts colons, one per
    key whatever the value, so the missed key of that same file still shows."""
    n = 40
    sampled = round(1 * (n - 1) / (curve_store.SAMPLE - 1))            # the second file DuckDB samples
    texts = [log(range(3)) for _ in range(n)]
    texts[sampled] = log(range(3), tag="a")                               # tag: text, in the sample
    texts[17] = log(range(3), tag=5) + json.dumps({"step": 3, "time": 1.0, "late": 2.5}) + "\n"
    files = files_of(tmp_path, texts)
    df = curve_store.frame(curve_store.convert(files)[0])
    assert df.loc[df.run_id == "r017", "late"].dropna().tolist() == [2.5]
    assert len(df) == 3 * n + 1


def test_the_pyarrow_backend_holds_the_same_values_without_a_copy(tmp_path):
    import math
    text = log(range(3)) + '{"step": 3, "time": 1.0, "loss": NaN, "acc": 0.5, "w": [1, 2]}\n'
    table, _ = curve_store.convert(files_of(tmp_path, [text] * 20))
    numpy_df = curve_store.frame(table)
    arrow_df = curve_store.frame(table, dtype_backend="pyarrow")
    assert list(arrow_df.columns) == list(numpy_df.columns)
    assert str(arrow_df["loss"].dtype) == "double[pyarrow]" and str(arrow_df["run_id"].dtype) == "category"
    assert arrow_df["acc"].isna().sum() == numpy_df["acc"].isna().sum() == 20 * 3   # not logged: <NA> / NaN
    assert math.isnan(arrow_df["loss"].iloc[3]) and arrow_df["loss"].iloc[3] is not None   # a logged NaN stays NaN
    assert arrow_df["w"].iloc[3] == numpy_df["w"].iloc[3] == [1.0, 2.0]
    assert arrow_df["step"].astype("int64").tolist() == numpy_df["step"].tolist()
    with pytest.raises(ValueError, match="dtype_backend: expected one of numpy, pyarrow"):
        curve_store.frame(table, dtype_backend="polars")


@pytest.mark.parametrize("i", sorted(ODD) + [1])
def test_a_few_small_logs_read_by_python_equal_the_exact_read(tmp_path, i):
    """convert() of a few small logs (a run that just finished) takes Python's json, not DuckDB;
    what it gives is what the exact read gives, whatever the log holds."""
    files = files_of(tmp_path, [ODD.get(i, log(range(8), lr=0.1)), log(range(3), w=[1, 2.5, None])])
    assert sum(p.stat().st_size for p in files.values()) <= curve_store.SMALL_BYTES
    small, small_bad = curve_store.convert(files)
    exact, exact_bad = curve_store._exact(files)
    frames_equal(small, exact)
    assert small_bad == exact_bad
    assert small.schema.field("w").type == pa.list_(pa.float64())


def test_a_few_small_logs_need_no_duckdb(tmp_path, monkeypatch):
    files = files_of(tmp_path, [log(range(1000), lr=0.1, w=[0.5, 1])])
    monkeypatch.setattr(curve_store, "_connect", lambda: pytest.fail("DuckDB was asked"))
    table, bad = curve_store.convert(files)
    assert table.num_rows == 1000 and bad == {"r000": 0}


@pytest.mark.parametrize("n", [2, 40])
def test_a_metric_logged_as_run_id_is_renamed_and_no_run_is_lost(tmp_path, n):
    """A log written before ctx.log refused the name: run_id stays the run's, the metric is kept beside it."""
    texts = [log(range(3), run_id=7) if i % 2 == 0 else log(range(2)) for i in range(n)]
    files = files_of(tmp_path, texts)
    for table in (curve_store.convert(files)[0], curve_store._exact(files)[0]):
        df = curve_store.frame(table)
        assert set(df.run_id) == set(files) and len(df) == sum(3 if i % 2 == 0 else 2 for i in range(n))
        first = df[df.run_id == "r000"]
        assert first[curve_store.LOGGED_RUN_ID].tolist() == [7.0, 7.0, 7.0]
