"""One benchmark row, measured in its own process: ``python -m edgecnn.benchmark_worker JOB.json``.

A crash here (even a segfault in a native runtime) fails only this row. The job names
the model file, device, threads, the .npy of test images and where to write results.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback

import numpy as np

from edgecnn.errors import first_line


def timed(fn, min_runs: int, min_seconds: float, max_seconds: float | None = None) -> list[float]:
    """The seconds of each call of ``fn``, called at least ``min_runs`` times and for at least ``min_seconds``
    (or, with ``max_seconds``, until that many seconds once it has 3 calls)."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if len(times) >= min_runs and elapsed >= min_seconds:
            break
        if max_seconds is not None and elapsed >= max_seconds and len(times) >= 3:
            break
    return times


def peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM resets at exec; ru_maxrss keeps the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(job: dict) -> dict:
    from edgecnn.runners import RunnerUnavailable, open_runner
    from edgecnn.stats import latency_summary

    images = np.load(job["images"], mmap_mode="r")
    if job.get("limit"):
        images = images[: job["limit"]]
    out: dict = {}
    t0 = time.perf_counter()
    try:
        if job.get("runtime") == "tflite-micro":
            from edgecnn.micro import MicroRunner

            runner = MicroRunner(open(job["model"], "rb").read())
        else:
            runner = open_runner(job["model"], job["device"], job["threads"])
        runner.check_input(np.asarray(images[:1]))
        first = runner.predict_batch(np.ascontiguousarray(images[:1]))
    except RunnerUnavailable as exc:
        return {"status": "skipped", "reason": str(exc)}
    out["cold_start_ms"] = 1000.0 * (time.perf_counter() - t0)
    n_classes = first.shape[1]

    batch = max(job["batch_sizes"])
    probs = np.empty((len(images), n_classes), np.float32)
    for i in range(0, len(images), batch):
        probs[i:i + batch] = runner.predict_batch(np.ascontiguousarray(images[i:i + batch]))
    np.save(job["probs_out"], probs)
    if job.get("flip_probs_out"):  # the reference of exports made with flip TTA inside (export --tta)
        flipped = np.empty_like(probs)
        for i in range(0, len(images), batch):
            flipped[i:i + batch] = runner.predict_batch(np.ascontiguousarray(images[i:i + batch, :, ::-1]))
        np.save(job["flip_probs_out"], flipped)

    one = np.ascontiguousarray(images[:1])
    timed(lambda: runner.predict_batch(one), job["warmup_runs"], job["warmup_seconds"])
    out.update(latency_summary(timed(lambda: runner.predict_batch(one), job["runs"], job["min_seconds"])))
    throughput = {}
    for bs in job["batch_sizes"]:
        if bs == 1:
            throughput["1"] = 1000.0 / out["latency_ms_p50"]
            continue
        x = np.ascontiguousarray(images[np.arange(bs) % len(images)])
        runner.predict_batch(x)
        times = timed(lambda: runner.predict_batch(x), 3, job["min_seconds"], max_seconds=10.0)
        throughput[str(bs)] = bs / float(np.median(times))
    out["throughput_ips_by_batch"] = throughput
    out["throughput_ips"] = throughput[str(batch)]
    out["peak_rss_mb"] = peak_rss_mb()
    out["info"] = runner.info()  # after the timing and the memory peak: it may profile a second session
    out["status"] = "ok"
    return out


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        job = json.load(f)
    try:
        result = measure(job)
    except Exception as exc:  # reported as a failed row, never raised into the table
        result = {"status": "failed", "reason": first_line(exc), "traceback": traceback.format_exc()[-2000:]}
    with open(job["result_out"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
