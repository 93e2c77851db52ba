"""System metrics of a run, sampled in the job: `logging: {system: 30}` (seconds between samples; off by default).

A background thread of the run's process (rank 0 of a distributed run) samples, every N seconds:

    sys_cpu_percent   CPU use of the run's process (100 = one core busy), psutil
    sys_rss_mb        resident memory of the process and its children (data loader workers), MB
    sys_gpu_util      GPU utilisation, %            } through NVML (the nvidia-ml-py package, `pynvml`), for
    sys_gpu_mem_mb    GPU memory in use, MB         } each GPU the job sees; with several GPUs the names
    sys_gpu_power_w   GPU power draw, W             } carry the index: sys_gpu0_util, sys_gpu1_util...

and logs each sample with ctx.log, like any metric: into metrics.jsonl, then TensorBoard / W&B where
the spec turns them on, and into analysis.curves. A sample carries the step the task logged last (the
restored step before the task logs anything): curves over steps put it where training was; its
`time` says when it was taken. Without NVML (not installed, no driver, no GPU) there are no GPU
figures. Sampling never fails a run: the first error ends the thread with one line on stderr.
"""
from __future__ import annotations

import os
import sys
import threading

import psutil


class Sampler:
    """A daemon thread that logs a sample through `log(**figures)` every `every_s` seconds until stop()."""

    def __init__(self, log, every_s: float, name: str = ""):
        self._log, self.every_s, self.name = log, float(every_s), name
        self._stopped = threading.Event()
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)          # the first call only primes the counter
        self._gpus = _nvml_handles()
        self._thread = threading.Thread(target=self._loop, name="hpcsweep-system-metrics", daemon=True)
        self._thread.start()

    def sample(self) -> dict:
        """One sample: the figures named in the module docstring."""
        rss = self._process.memory_info().rss
        for pid in _descendants(self._process.pid):
            try:
                rss += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass                              # a child that ended between the listing and the read
        out = {"sys_cpu_percent": round(self._process.cpu_percent(None), 1), "sys_rss_mb": round(rss / 2 ** 20, 1)}
        if self._gpus:
            import pynvml
            for i, handle in self._gpus:
                tag = "sys_gpu" if len(self._gpus) == 1 else f"sys_gpu{i}"
                out[f"{tag}_util"] = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                out[f"{tag}_mem_mb"] = round(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2 ** 20, 1)
                try:
                    out[f"{tag}_power_w"] = round(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000, 1)
                except pynvml.NVMLError:
                    pass                          # a GPU that does not report its power
        return out

    def _loop(self):
        while not self._stopped.wait(self.every_s):
            try:
                self._log(**self.sample())
            except Exception as e:               # never the run's failure: said once, then no more samples
                print(f"hpcsweep: run {self.name}: system metrics stopped: {type(e).__name__}: {e}",
                      file=sys.stderr, flush=True)
                return

    def stop(self) -> None:
        """End the thread (waits for a sample being logged to finish)."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


def _descendants(pid: int) -> list:
    """The pids of a process's children, grandchildren...: read off /proc/<pid>/task/*/children (a
    few files; psutil's children() walks every process of the machine, ~100x slower). [] where
    the kernel does not offer the file."""
    out, todo = [], [pid]
    while todo:
        here = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{here}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{here}/task/{tid}/children") as f:
                    found = [int(p) for p in f.read().split()]
            except (OSError, ValueError):
                continue
            out += found
            todo += found
    return out


def _nvml_handles() -> list:
    """[(index, NVML handle)] of the GPUs this job sees; [] without NVML or GPUs (never raises)."""
    try:
        import pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        indexes = [int(i) for i in visible.split(",") if i.strip()] if visible else list(range(count))
    except ValueError:                            # GPU UUIDs: NVML's own order, as many as the job sees
        indexes = list(range(min(count, len(visible.split(",")))))
    out = []
    for i in indexes:
        try:
            out.append((i, pynvml.nvmlDeviceGetHandleByIndex(i)))
        except Exception:
            pass
    return out
