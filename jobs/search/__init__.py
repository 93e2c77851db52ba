"""Adaptive search without a driver: decisions taken by the jobs where results land.

    jobs.search.asha     pure ASHA: which trial to promote, or whether to start a new one
    jobs.search.engine   a search's journal (search/<stage>.jsonl) replayed into its state, and the
                         claim / record steps a worker job takes under the search's lock
    jobs.search.tpe      Optuna's TPE sampler asked and told through a journal file in the sweep dir

Imports spec and store only; the runtime asks it (jobs/runtime/runner.py), sched submits the worker
jobs it needs (jobs/sched/submit.py).
"""
