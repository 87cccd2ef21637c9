"""``bnnlab bench --only`` and ``--gemm``: a chosen subset of the cases, and bad values
refused with one line."""

import json
import os
import subprocess
import sys

import pytest

from bnnlab.cli import build_parser
from bnnlab.cli_base import CliError


def test_bench_runs_only_the_gemm_shapes_asked_for():
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-m", "bnnlab", "bench", "--only", "gemm", "--gemm",
                        "40x100x16,1024x64x32", "--repeats", "1", "--json"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["contention_sampling"] is False  # a 2-thread case runs on 2 threads
    assert [(row["case"], row["threads"]) for row in d["results"]] == [
        ("gemm 40x100x16", 1), ("gemm 1024x64x32", 1), ("gemm 1024x64x32", 2)]
    by_method = d["roofline"]["by_method"]
    assert by_method and all(v > 0 for v in by_method.values())
    assert next(iter(by_method)) in ("nibbles", "bytes", "lanes")


@pytest.mark.parametrize("args,msg", [(["--only", "gemm,speed"], "unknown group speed"),
                                      (["--gemm", "64x576"], "'64x576' is not MxKxN"),
                                      (["--gemm", "0x5x5"], "'0x5x5' is not MxKxN")])
def test_bench_refuses_bad_choices(args, msg):
    with pytest.raises(CliError, match=msg):
        build_parser().parse_args(["bench", *args])


def test_bench_options_parse():
    a = build_parser().parse_args(["bench", "--only", "gemm,runtime", "--gemm", "5184x576x64"])
    assert a.only == ["gemm", "runtime"] and a.gemm == [(5184, 576, 64)]


def test_one_image_cases_time_a_stream_and_a_lone_call(monkeypatch):
    # Batch 1 is timed as calls back to back (several per sample) and, separately, as
    # calls each after a pause; larger batches one call per sample and no lone call.
    from bnnlab import bench

    monkeypatch.setattr(bench, "STREAM_SAMPLE_S", 0.002)
    calls = {1: 0, 8: 0}

    def work(batch):
        def fn():
            calls[batch] += 1
            t = bench.time.perf_counter()
            while bench.time.perf_counter() - t < 1e-4:
                pass
        return fn

    one = bench._throughput("b1", 1, 1, work(1), lambda: None, 3)
    eight = bench._throughput("b8", 1, 8, work(8), lambda: None, 3)
    assert one["binary_lone_call_ms"] >= 0.1 and "binary_lone_call_ms" not in eight
    # A stream sample holds about 2 ms / 0.1 ms = 20 calls; a lone call is one.
    assert calls[1] > 5 * calls[8]


def test_contention_sampling_can_be_turned_off_and_on_again():
    from bnnlab.core.kernels import threads

    was = threads.set_contention_sampling(True)
    try:
        assert threads.contention is not None
        assert threads.set_contention_sampling(False) is True
        assert threads.contention is None and threads.contended() is False
        assert threads.set_contention_sampling(False) is False
    finally:
        threads.set_contention_sampling(was)
