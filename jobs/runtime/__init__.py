"""In the job: the pack runner, the RunContext a task sees, and the run's checkpoint store.

Imports only jobs.spec and jobs.store: chaining into a fresh job is a function the scheduler
layer hands in with the pack, so nothing here reaches back to jobs.sched.
"""
