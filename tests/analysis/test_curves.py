"""metrics.jsonl -> curves.csv: the fast path gives exactly what json.loads line by line gives."""
import csv
import io
import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from analysis import curves
from analysis.curves import parse_log, read_curves

MAIN = ["step", "time", "loss", "lr"]


def reference(raw: bytes):
    """(rows, bad): every complete line parsed with json.loads; a torn last line dropped."""
    lines = raw.split(b"\n")
    last = lines.pop()
    if last:
        try:
            if isinstance(json.loads(last), dict):
                lines.append(last)
        except ValueError:
            pass
    rows, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad += 1
    return rows, bad


def text(v) -> str:
    """What a curves.csv cell holds for a logged value (after CSV unquoting)."""
    if isinstance(v, str):
        return v
    return json.dumps(v)


def table(curves_obj):
    data = curves_obj.header() + b"".join(curves_obj.parts)
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def check_same(logs):
    """Render `logs` ({run_id: raw bytes}) and compare every cell with the reference parse."""
    got = table(read_from(logs))
    i = 0
    for rid, raw in logs.items():
        rows, _ = reference(raw)
        for row in rows:
            out = got[i]
            i += 1
            assert out["run_id"] == rid
            for k, v in out.items():
                if k != "run_id":
                    assert v == (text(row[k]) if k in row else ""), (rid, k, row, out)
    assert i == len(got)


def read_from(logs, tmp=None, workers=1):
    jobs = []
    for rid, raw in logs.items():
        jobs.append((rid, raw))
    # parse straight from bytes (read_curves reads files; _chunk-equivalent here)
    parsed = [parse_log(rid, raw) for rid, raw in jobs]
    columns = curves.columns_of(parsed)
    parts = [p for log in parsed for p in curves.render(log, columns)]
    return curves.Curves(columns, parts, [log.rows for log in parsed], [log.lists for log in parsed],
                         [log.bad_lines for log in parsed])


def dumps(obj, compact=False):
    return json.dumps(obj, separators=(",", ":") if compact else None).encode()


# ---------------------------------------------------------------- random logs

number = st.one_of(st.integers(-10**6, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1e-05, 1.5e300, 0.1]))
scalar = st.one_of(number, st.none(), st.booleans())
odd_value = st.one_of(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=6),
                      st.lists(number, max_size=3), st.dictionaries(st.sampled_from(["a", "b"]), number, max_size=2))


@st.composite
def line(draw):
    kind = draw(st.sampled_from(["main"] * 6 + ["subset", "reorder", "extra", "odd", "compact", "blank", "junk"]))
    values = {k: draw(number) for k in MAIN}
    if kind == "main":
        return dumps(values)
    if kind == "subset":
        keep = draw(st.lists(st.sampled_from(MAIN), min_size=1, unique=True))
        return dumps({k: draw(scalar) for k in MAIN if k in keep})
    if kind == "reorder":
        order = draw(st.permutations(MAIN))
        return dumps({k: values[k] for k in order})
    if kind == "extra":
        return dumps({"step": values["step"], "time": values["time"], "val_acc": draw(scalar)})
    if kind == "odd":
        return dumps({**values, draw(st.sampled_from(["loss", "w", "note"])): draw(odd_value)})
    if kind == "compact":
        return dumps(values, compact=True)
    if kind == "blank":
        return b""
    return draw(st.sampled_from([b"not json", b"\x00\x00\x00", b"[1, 2]", b"{\"step\": 1,"]))


@st.composite
def log(draw):
    first = draw(st.sampled_from([dumps({k: 1.5 for k in MAIN}), dumps({k: 1 for k in MAIN}, compact=True),
                                  dumps({"step": 0, "w": [1, 2]})]))
    body = [first] + draw(st.lists(line(), max_size=25))
    raw = b"\n".join(body) + b"\n"
    end = draw(st.sampled_from(["whole", "torn", "no newline"]))
    if end == "torn" and len(body[-1]) > 2:
        raw = raw[:-len(body[-1]) // 2]
    elif end == "no newline":
        raw = raw[:-1]
    return raw


@settings(max_examples=150, deadline=None)
@given(st.lists(log(), min_size=1, max_size=3))
def test_random_logs_give_the_reference_table(raws):
    check_same({f"run{i}": raw for i, raw in enumerate(raws)})


@settings(max_examples=100, deadline=None)
@given(log())
def test_bad_lines_are_counted_and_a_torn_tail_is_not(raw):
    assert parse_log("r", raw).bad_lines == reference(raw)[1]


# ---------------------------------------------------------------- the cases that must not slip through

def rows_of(*lines, end=b"\n"):
    raw = b"\n".join(lines) + end
    return table(read_from({"r": raw}))


def test_a_line_with_the_same_keys_in_another_order_keeps_each_value_in_its_column():
    got = rows_of(dumps({"step": 1, "a": 10, "b": 20}), dumps({"step": 2, "b": 21, "a": 11}))
    assert [(r["step"], r["a"], r["b"]) for r in got] == [("1", "10", "20"), ("2", "11", "21")]


def test_a_line_with_fewer_keys_leaves_the_others_empty():
    got = rows_of(dumps({"step": 1, "a": 10, "b": 20}), dumps({"step": 2, "b": 21}))
    assert [(r["step"], r["a"], r["b"]) for r in got] == [("1", "10", "20"), ("2", "", "21")]


def test_eval_lines_stay_in_their_place_between_training_lines():
    lines = [dumps({"step": s, "time": s + 0.5, "loss": 1 / (s + 1)}) for s in range(6)]
    lines.insert(3, dumps({"step": 2, "time": 2.7, "val_acc": 0.9}))
    got = rows_of(*lines)
    assert [r["step"] for r in got] == ["0", "1", "2", "2", "3", "4", "5"]
    assert [r["val_acc"] for r in got] == ["", "", "", "0.9", "", "", ""]
    assert got[3]["loss"] == ""


def test_a_torn_last_line_is_dropped_silently_and_a_whole_one_without_newline_is_kept():
    a, b = dumps({"step": 1, "x": 0.5}), dumps({"step": 2, "x": 0.25})
    assert [r["step"] for r in rows_of(a, b[:7], end=b"")] == ["1"]
    assert parse_log("r", a + b"\n" + b[:7]).bad_lines == 0
    assert [r["step"] for r in rows_of(a, b, end=b"")] == ["1", "2"]


def test_strings_lists_and_nested_values_are_quoted_text():
    got = rows_of(dumps({"step": 1, "x": 0.5}), dumps({"step": 2, "note": 'a, "b"\nc', "w": [1, 2]}))
    assert got[1]["note"] == 'a, "b"\nc' and json.loads(got[1]["w"]) == [1, 2]
    log = parse_log("r", b"\n".join([dumps({"step": 1, "w": [1, 2]}), dumps({"step": 2, "w": [3, 4]})]) + b"\n")
    assert log.lists == {"w": [3, 4]}


def test_replayed_steps_after_a_resume_are_replaced_by_the_last_attempt():
    first = [dumps({"step": s, "loss": 1.0}) for s in range(6)]        # killed after step 5
    second = [dumps({"step": s, "loss": 2.0}) for s in range(3, 8)]    # resumed from step 3
    raw = b"\n".join(first + second) + b"\n"
    log = parse_log("r", raw, replay=True)
    assert [(d["step"], d["loss"]) for d in log.items] == [(0, 1.0), (1, 1.0), (2, 1.0)] + [(s, 2.0) for s in range(3, 8)]
    assert parse_log("r", raw).rows == 11          # without replay: what was logged


def test_logs_whose_key_orders_clash_still_land_in_the_right_columns():
    got = table(read_from({"a": dumps({"step": 1, "p": 1, "q": 2}) + b"\n",
                           "b": dumps({"step": 1, "q": 4, "p": 3}) + b"\n"}))
    assert [(r["run_id"], r["p"], r["q"]) for r in got] == [("a", "1", "2"), ("b", "3", "4")]


def test_worker_processes_give_the_same_bytes(tmp_path, monkeypatch):
    jobs = []
    for i in range(12):
        lines = [dumps({"step": s, "time": s * 0.1, "loss": 1 / (s + i + 1)}) for s in range(30)]
        if i % 3 == 0:
            lines.insert(5, dumps({"step": 4, "val_acc": i / 10}))
        if i == 7:
            lines = [dumps({"step": s, "acc": 0.5, "time": 1.0}) for s in range(3)]
        p = tmp_path / f"{i}.jsonl"
        p.write_bytes(b"\n".join(lines) + b"\n")
        jobs.append((f"run{i}", p, False))
    jobs.append(("missing", tmp_path / "nope.jsonl", False))
    serial = read_curves(jobs, workers=1)
    monkeypatch.setattr(curves, "PARALLEL_MIN_LOGS", 2)
    parallel = read_curves(jobs, workers=2)
    assert parallel.columns == serial.columns and parallel.rows == serial.rows
    assert b"".join(parallel.parts) == b"".join(serial.parts)
    check_same({rid: p.read_bytes() for rid, p, _ in jobs[:-1]})


def test_frame_reads_the_numbers_back():
    raws = {"a": b"".join(dumps({"step": s, "loss": s / 4}) + b"\n" for s in range(4)),
            "b": dumps({"step": 0, "loss": None}) + b"\n" + dumps({"step": 1, "loss": True}) + b"\n"}
    cv = read_from(raws)
    df = curves.frame(cv, cv.header() + b"".join(cv.parts), ["step", "loss", "nope"])
    assert list(df.columns) == ["run", "step", "loss"]
    assert df["run"].tolist() == [0, 0, 0, 0, 1, 1]
    assert df["loss"].tolist()[:4] == [0.0, 0.25, 0.5, 0.75]
    assert math.isnan(df["loss"].iloc[4]) and df["loss"].iloc[5] == 1


@pytest.mark.parametrize("raw", [b"", b"\n", b"garbage", b"{\"step\": 1"])
def test_empty_or_unreadable_logs_give_no_rows(raw):
    assert parse_log("r", raw).rows == 0


def test_write_csv_in_workers_is_the_table_and_is_not_read_again_while_no_log_changes(tmp_path, monkeypatch):
    jobs = []
    for i in range(9):
        lines = [dumps({"step": s, "loss": 1 / (s + i + 1)}) for s in range(5)]
        if i == 4:
            lines.insert(2, dumps({"step": 1, "val_acc": 0.5, "note": "a,b"}))
        p = tmp_path / f"{i}.jsonl"
        p.write_bytes(b"\n".join(lines) + b"\n")
        jobs.append((f"run{i}", p, False))
    want = read_curves(jobs, workers=1)
    monkeypatch.setattr(curves, "PARALLEL_MIN_LOGS", 2)
    dest = tmp_path / "out" / "curves.csv"
    info = curves.write_csv(jobs, dest, workers=2)
    assert info.changed and dest.read_bytes() == want.header() + b"".join(want.parts)
    assert info.rows == want.rows and info.columns == want.columns
    mtime = dest.stat().st_mtime_ns

    def no_reading(*_):
        raise AssertionError("a log was read although none changed")
    monkeypatch.setattr(curves, "read_log", no_reading)
    assert not curves.write_csv(jobs, dest, workers=2).changed and dest.stat().st_mtime_ns == mtime
    monkeypatch.undo()
    with open(jobs[3][1], "ab") as f:
        f.write(dumps({"step": 5, "loss": 0.0}) + b"\n")
    info = curves.write_csv(jobs, dest, workers=1)
    assert info.changed and info.rows[3] == 6 and dest.read_bytes().count(b"\n") == 1 + sum(want.rows) + 1
    assert not list(dest.parent.glob(".curves.csv.*/"))          # no temp dir left behind


def test_numbers_reads_only_the_runs_asked_for(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.jsonl"
        p.write_bytes(b"".join(dumps({"step": s, "loss": i + s / 10, "w": [i]}) + b"\n" for s in range(3)))
        paths.append(p)
    df, lists = curves.numbers([(7, "a", paths[0], False), (9, "c", paths[2], False)], ["step", "loss", "nope"])
    assert list(df.columns) == ["run", "step", "loss"]
    assert df["run"].tolist() == [7, 7, 7, 9, 9, 9] and df["loss"].tolist() == [0, 0.1, 0.2, 2, 2.1, 2.2]
    assert lists == {7: {"w": [0]}, 9: {"w": [2]}}
