"""The store: run states read from files, line logs that survive torn writes, standard JSON only."""
import json
import math

from jobs.store import RunState, SweepDir, atomic


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "journal.jsonl"
    atomic.append_jsonl(path, {"event": "submit", "n": 1})
    with open(path, "ab") as f:                       # a disk-full append: 4 KB of a record, no newline
        f.write(b'{"event": "submit", "runs": ["' + b"x" * 4096)
    atomic.append_jsonl(path, {"event": "job", "n": 2})
    bad = []
    rows = atomic.read_jsonl(path, bad)
    assert rows == [{"event": "submit", "n": 1}, {"event": "job", "n": 2}]
    assert len(bad) == 1 and bad[0][0] == 2


def test_records_of_another_shape_are_skipped_and_reported(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_text('[1, 2]\n"text"\n{"event": "submit"}\nnull\n')
    bad = []
    assert atomic.read_jsonl(path, bad) == [{"event": "submit"}]
    assert [n for n, _ in bad] == [1, 2, 4]


def test_non_finite_numbers_are_written_as_standard_json(tmp_path):
    atomic.write_json(tmp_path / "r.json", {"loss": math.nan, "best": math.inf, "low": -math.inf, "ok": 1.5})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": "nan", "best": "inf", "low": "-inf", "ok": 1.5}


def test_run_states_from_files(tmp_path):
    run = SweepDir(tmp_path).run("abc")
    assert run.state(in_flight=False) == RunState.NEW
    run.path.mkdir(parents=True)
    run.config.write_text("{run_id: abc, task: t, config: {}}\n")
    assert run.state(in_flight=False) == RunState.PENDING
    assert run.state(in_flight=True) == RunState.IN_FLIGHT
    run.error.write_text("Traceback ...\nValueError: x\n")
    assert run.state(in_flight=False) == RunState.FAILED
    assert run.state(in_flight=True) == RunState.IN_FLIGHT          # a retry is under way
    run.result.write_text('{"metrics": {"acc"')                     # cut short
    assert run.state(in_flight=False) == RunState.CORRUPT
    atomic.write_json(run.result, {"metrics": {"acc": 1.0}})
    assert run.state(in_flight=False) == RunState.DONE
