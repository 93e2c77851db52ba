"""jobs/checkpoint.py: atomic checkpoints with sha256 sidecars, retention, damage handling, the manifest.

The crash tests use real processes killed with SIGKILL. Children come from a forkserver that has
imported torch once, so each trial costs a fork, not a 2-second interpreter start.
"""
import hashlib
import multiprocessing
import multiprocessing.forkserver
import os
import random
import re
import warnings
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st

from jobs.runtime import checkpoint as ck
from jobs.runtime.checkpoint import CheckpointWarning

ROOT = Path(__file__).resolve().parents[2]


def procs():
    """A multiprocessing context whose children fork from a server with torch and these modules loaded."""
    ctx = multiprocessing.get_context("forkserver")
    # torch._dynamo: the first optimizer a process builds imports it (1.5 s); do it once, in the server
    ctx.set_forkserver_preload(["jobs.context", "torch._dynamo", "test_checkpoint", "test_context"])
    # the server ignores our sys.path: it finds the test modules (to preload them) through PYTHONPATH
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")] + ([old] if old else []))
    try:
        multiprocessing.forkserver.ensure_running()      # no-op when already running
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    return ctx


def payload(step, n=64):
    return {"step": step, "data": torch.full((n,), float(step)), "meta": {"note": f"s{step}", "list": [1, 2.5]}}


def files(d):
    return sorted(p.name for p in Path(d).iterdir())


# --- round trip and retention -------------------------------------------------------------------

def test_round_trip_and_sidecar(tmp_path):
    d = tmp_path / "dir with space 'q'" / "checkpoints"
    for step in (0, 5, 12):
        path = ck.save(d, step, payload(step))
    assert path == d / "step_00000012.pt"
    step, got = ck.load_latest(d)
    assert step == 12 and got["meta"] == {"note": "s12", "list": [1, 2.5]}
    assert torch.equal(got["data"], torch.full((64,), 12.0))
    # sha256sum format: `sha256sum -c` checks it by hand
    assert (d / "step_00000012.pt.sha256").read_text() == \
        hashlib.sha256(path.read_bytes()).hexdigest() + "  step_00000012.pt\n"


def test_no_checkpoint_is_none(tmp_path):
    assert ck.load_latest(tmp_path / "missing") is None
    assert ck.load_latest(tmp_path) is None


def test_big_steps_keep_sorting(tmp_path):
    ck.save(tmp_path, 99_999_999, payload(1))
    ck.save(tmp_path, 123_456_789, payload(2), keep_last=5)
    assert ck.list_steps(tmp_path) == [99_999_999, 123_456_789]
    assert ck.load_latest(tmp_path)[0] == 123_456_789


def test_retention_keep_last(tmp_path):
    for step in range(1, 6):
        ck.save(tmp_path, step, payload(step), keep_last=2)
    assert files(tmp_path) == ["step_00000004.pt", "step_00000004.pt.sha256",
                               "step_00000005.pt", "step_00000005.pt.sha256"]


def test_retention_keep_every(tmp_path):
    for step in range(1, 11):
        ck.save(tmp_path, step, payload(step), keep_last=2, keep_every=3)
    assert ck.list_steps(tmp_path) == [3, 6, 9, 10]


def test_saving_an_earlier_step_drops_the_abandoned_newer_ones(tmp_path):
    """A run that resumed from step 20 (say step 30 was corrupt) must not later resume from 30."""
    for step in (10, 20, 30):
        ck.save(tmp_path, step, payload(step), keep_last=5)
    ck.save(tmp_path, 25, payload(25), keep_last=5)
    assert ck.list_steps(tmp_path) == [10, 20, 25]


def test_a_valid_checkpoint_is_never_overwritten_but_a_damaged_one_is(tmp_path):
    """Saving the step a run resumed from again (keep_last=1) must not open a window with no valid one."""
    manifest = tmp_path / "m.yaml"
    ck.save(tmp_path / "c", 4, payload(4), keep_last=1, manifest=manifest)
    before = (tmp_path / "c" / "step_00000004.pt").read_bytes()
    ck.save(tmp_path / "c", 4, payload(5), keep_last=1, manifest=manifest)
    assert (tmp_path / "c" / "step_00000004.pt").read_bytes() == before
    assert len(ck.read_manifest(manifest)) == 1
    flip(tmp_path / "c" / "step_00000004.pt")
    ck.save(tmp_path / "c", 4, payload(5), keep_last=1, manifest=manifest)
    assert ck.load_latest(tmp_path / "c")[1]["step"] == 5
    assert len(ck.read_manifest(manifest)) == 2


def test_bad_retention_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        ck.save(tmp_path, 1, payload(1), keep_last=0)
    with pytest.raises(ValueError, match="keep_every"):
        ck.save(tmp_path, 1, payload(1), keep_every=0)
    with pytest.raises(ValueError, match=">= 0"):
        ck.save(tmp_path, -1, payload(1))
    with pytest.raises(TypeError, match="int"):
        ck.save(tmp_path, 1.5, payload(1))


@settings(max_examples=200, deadline=None)
@given(steps=st.sets(st.integers(0, 60), max_size=15), current=st.integers(0, 60),
       keep_last=st.integers(1, 4), keep_every=st.one_of(st.none(), st.integers(1, 10)))
def test_retention_rule(steps, current, keep_last, keep_every):
    steps = steps | {current}
    gone = set(ck.doomed(steps, current, keep_last, keep_every))
    kept = steps - gone
    past = sorted(s for s in steps if s <= current)
    assert current in kept
    assert set(past[-keep_last:]) <= kept                         # the newest keep_last survive
    assert all(s in gone for s in steps if s > current)            # an abandoned future never does
    if keep_every:
        assert {s for s in past if s % keep_every == 0} <= kept
    assert len(kept) <= keep_last + (len([s for s in past if s % keep_every == 0]) if keep_every else 0)


# --- damaged checkpoints ------------------------------------------------------------------------

def flip(p):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def no_sidecar(p):
    ck.sidecar_of(p).unlink()


def bad_sidecar(p):
    ck.sidecar_of(p).write_text("not a digest\n")


def empty(p):
    p.write_bytes(b"")


@pytest.mark.parametrize("damage", [flip, truncate, no_sidecar, bad_sidecar, empty])
def test_damaged_newest_is_skipped_with_a_warning(tmp_path, damage):
    for step in (1, 2, 3):
        ck.save(tmp_path, step, payload(step), keep_last=3)
    damage(tmp_path / "step_00000003.pt")
    with pytest.warns(CheckpointWarning, match=re.escape("step_00000003.pt")):
        step, got = ck.load_latest(tmp_path)
    assert step == 2 and torch.equal(got["data"], torch.full((64,), 2.0))


def test_all_damaged_is_none(tmp_path):
    for step in (1, 2):
        ck.save(tmp_path, step, payload(step))
    flip(tmp_path / "step_00000001.pt")
    truncate(tmp_path / "step_00000002.pt")
    with pytest.warns(CheckpointWarning) as caught:
        assert ck.load_latest(tmp_path) is None
    assert {Path(re.search(r"skipping checkpoint (\S+):", str(w.message)).group(1)).name for w in caught} == \
        {"step_00000001.pt", "step_00000002.pt"}


def test_leftovers_of_a_killed_writer_are_ignored_then_cleaned(tmp_path):
    ck.save(tmp_path, 1, payload(1))
    # what a writer killed mid-write leaves: a temp file (even a complete one), an orphan sidecar
    (tmp_path / ".step_00000002.pt.k3j4h5.tmp").write_bytes(ck.to_bytes(payload(2))[:1000])
    (tmp_path / ".step_00000002.pt.sha256.zz.tmp").write_text("0" * 64)
    (tmp_path / "step_00000007.pt.sha256").write_text("0" * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # ignoring leftovers is not worth a warning
        assert ck.load_latest(tmp_path)[0] == 1
    ck.save(tmp_path, 2, payload(2))
    assert files(tmp_path) == ["step_00000001.pt", "step_00000001.pt.sha256",
                               "step_00000002.pt", "step_00000002.pt.sha256"]


def pwned(marker):
    Path(marker).write_text("code ran")
    return {"step": 9}


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pwned, (self.marker,)


def test_a_checkpoint_cannot_run_code(tmp_path):
    """Even with a matching sidecar, a pickle that calls a function is refused (weights_only)."""
    marker = tmp_path / "marker"
    ck.save(tmp_path / "c", 1, payload(1))
    data = ck.to_bytes(Evil(str(marker)))
    (tmp_path / "c" / "step_00000002.pt").write_bytes(data)
    (tmp_path / "c" / "step_00000002.pt.sha256").write_text(hashlib.sha256(data).hexdigest())
    with pytest.warns(CheckpointWarning, match="weights_only"):
        assert ck.load_latest(tmp_path / "c")[0] == 1
    assert not marker.exists()


def test_verify_refuses_a_payload_that_would_not_load(tmp_path):
    import numpy as np
    with pytest.raises(TypeError, match="numpy array"):
        ck.save(tmp_path, 1, {"a": np.zeros(3)}, verify=True)
    assert ck.list_steps(tmp_path) == []


# --- kill -9 while writing ----------------------------------------------------------------------

BIG = 1 << 20          # floats per checkpoint: 4 MiB, so a kill often lands inside a write


def save_forever(d, manifest, keep_last, ready):
    """Child: save steps 1, 2, ... until killed; `ready` once the first one is complete."""
    step = 1
    while True:
        ck.save(d, step, {"step": step, "data": torch.full((BIG,), float(step))},
                manifest=manifest, run_id="r", keep_last=keep_last)
        ready.set()
        step += 1


def test_kill_9_while_saving_never_yields_a_corrupt_checkpoint(tmp_path):
    mp = procs()
    rng = random.Random(1234)
    outcomes = []
    for trial in range(24):
        d, manifest = tmp_path / f"t{trial}" / "checkpoints", tmp_path / f"t{trial}" / "manifest.yaml"
        ready = mp.Event()
        p = mp.Process(target=save_forever, args=(d, manifest, 1 + trial % 2, ready))
        p.start()
        assert ready.wait(60), "child never completed its first checkpoint"
        # any instant is a valid place to die: the delay only spreads the kills over the phases
        # of a save (write, fsync, rename, sidecar, retention, manifest)
        p.join(rng.uniform(0.0, 0.25))
        p.kill()
        p.join()
        leftovers = [n for n in files(d) if n.endswith(".tmp") or
                     (n.endswith(".pt") and not (d / (n + ".sha256")).exists())]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)   # a .pt without sidecar is allowed
            found = ck.load_latest(d)
        # the first checkpoint was complete before the kill and is only deleted after a newer one is
        assert found is not None, files(d)
        step, got = found
        assert got["step"] == step and torch.equal(got["data"], torch.full((BIG,), float(step)))
        entries = yaml.safe_load(manifest.read_text())["entries"]
        written = [e["step"] for e in entries if e["event"] == "written"]
        assert written == list(range(1, len(written) + 1)) and len(written) >= step - 1
        # and the run carries on from there: the next save cleans up and becomes the latest
        ck.save(d, step + 1, {"step": step + 1, "data": torch.full((BIG,), float(step + 1))},
                manifest=manifest, run_id="r")
        assert ck.load_latest(d)[0] == step + 1
        assert not [n for n in files(d) if n.endswith(".tmp")]
        outcomes.append((step, leftovers))
    print("kill -9 outcomes (step, leftovers):", outcomes)


# --- the manifest -------------------------------------------------------------------------------

def test_manifest_records_writes_and_deletions(tmp_path):
    manifest = tmp_path / "checkpoints_manifest.yaml"
    d = tmp_path / "runs" / "abc" / "checkpoints"
    for step in (1, 2, 3):
        ck.save(d, step, payload(step), manifest=manifest, run_id="abc", keep_last=2)
    entries = ck.read_manifest(manifest)
    assert [(e["event"], e["step"]) for e in entries] == \
        [("written", 1), ("written", 2), ("written", 3), ("deleted", 1)]
    for e in entries:
        assert e["run"] == "abc" and e["path"] == f"runs/abc/checkpoints/step_{e['step']:08d}.pt"
        assert isinstance(e["time"], str) and datetime.fromisoformat(e["time"]).utcoffset().total_seconds() == 0
    by_step = {e["step"]: e for e in entries if e["event"] == "written"}
    assert by_step[1]["sha256"] == entries[-1]["sha256"] and by_step[1]["bytes"] == entries[-1]["bytes"]
    f3 = d / "step_00000003.pt"
    assert by_step[3]["bytes"] == f3.stat().st_size
    assert by_step[3]["sha256"] == hashlib.sha256(f3.read_bytes()).hexdigest()
    assert yaml.safe_load(manifest.read_text()) == {"entries": entries}


def test_manifest_outside_the_sweep_dir_gets_absolute_paths(tmp_path):
    ck.save(tmp_path / "a", 1, payload(1), manifest=tmp_path / "b" / "m.yaml", run_id="x")
    assert ck.read_manifest(tmp_path / "b" / "m.yaml")[0]["path"] == str((tmp_path / "a" / "step_00000001.pt"))


def test_a_corrupt_manifest_is_kept_aside_and_training_goes_on(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("entries: [unclosed\n  - : :")
    with pytest.warns(CheckpointWarning, match="moved it to"):
        ck.record(manifest, {"event": "written", "step": 1})
    assert [e["step"] for e in ck.read_manifest(manifest)] == [1]
    assert len(list(tmp_path.glob("m.yaml.corrupt-*"))) == 1


def record_many(manifest, who, n, go):
    go.wait()
    for i in range(n):
        ck.record(manifest, {"event": "written", "run": who, "step": i, "path": f"{who}/{i}", "bytes": i,
                             "sha256": "0" * 64})


def test_32_processes_recording_at_once_lose_nothing(tmp_path):
    mp, n = procs(), 6
    manifest = tmp_path / "checkpoints_manifest.yaml"
    go = mp.Event()
    ps = [mp.Process(target=record_many, args=(manifest, f"p{i}", n, go)) for i in range(32)]
    for p in ps:
        p.start()
    go.set()
    for p in ps:
        p.join(120)
        assert p.exitcode == 0
    entries = yaml.safe_load(manifest.read_text())["entries"]
    assert len(entries) == 32 * n
    assert {(e["run"], e["step"]) for e in entries} == {(f"p{i}", j) for i in range(32) for j in range(n)}
    for i in range(32):      # each writer's own entries stay in its order
        assert [e["step"] for e in entries if e["run"] == f"p{i}"] == list(range(n))


def test_a_directory_named_like_a_checkpoint_is_no_checkpoint(tmp_path):
    (tmp_path / "step_00000001.pt").mkdir()
    for step in (2, 3, 4):
        ck.save(tmp_path, step, {"w": torch.ones(1) * step}, keep_last=1)
    assert ck.list_steps(tmp_path) == [4] and (tmp_path / "step_00000001.pt").is_dir()
    assert ck.load_latest(tmp_path)[0] == 4


def test_a_malformed_sidecar_is_called_malformed_not_missing(tmp_path):
    path = ck.save(tmp_path, 1, {"w": torch.ones(1)})
    ck.sidecar_of(path).write_text("not a digest\n")
    with pytest.warns(CheckpointWarning, match="malformed sha256 sidecar"):
        assert ck.load_latest(tmp_path) is None


def test_retention_keeps_a_pinned_step(tmp_path):
    """export pins the step it registers: a run still training never deletes it."""
    ck.save(tmp_path, 1, {"w": torch.ones(1)}, keep_last=1)
    assert ck.pin(tmp_path, 1, "early") is not None
    for step in (2, 3):
        ck.save(tmp_path, step, {"w": torch.ones(1) * step}, keep_last=1)
    assert ck.list_steps(tmp_path) == [1, 3] and ck.load_step(tmp_path, 1)["w"].item() == 1.0
    assert ck.pin(tmp_path, 2, "gone") is None                    # deleted already: nothing to pin
