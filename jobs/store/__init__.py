"""The sweep dir on shared storage: paths (SweepDir, RunDir), run states, atomic writes, line logs.

    from jobs.store import SweepDir, RunState
    sweep_dir = SweepDir.under("results", "depth_ladder")
    sweep_dir.run(run_id).state(in_flight=False)

Imports nothing else of the repository: every other layer reads the on-disk format through here.
"""
from jobs.store import atomic, registry
from jobs.store.sweepdir import (DEFAULT_ROOT, Outcome, RunDir, RunState, SweepDir, Where, absolute, now_iso,
                                 project_top, root_dir)

__all__ = ["atomic", "registry", "DEFAULT_ROOT", "Outcome", "RunDir", "RunState", "SweepDir", "Where", "absolute",
           "now_iso", "project_top", "root_dir"]
