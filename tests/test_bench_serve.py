"""The serving benchmark's steady-state throughput: decode rate while all N streams run."""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_serve import full_stretches, steady_tok_s  # noqa: E402


def test_two_streams_overlapping_count_only_the_overlap():
    # A: a piece every second from 0 to 10 s; B: every half second from 5 to 15 s.
    # Both stream during [5, 10], at 1 + 2 = 3 pieces/s together.
    a = [float(t) for t in range(11)]
    b = [5 + 0.5 * k for k in range(21)]
    assert full_stretches([a, b], 2) == [(5.0, 10.0)]
    assert math.isclose(steady_tok_s([a, b], 2), 3.0)


def test_one_stream_is_its_own_decode_rate():
    s = [0.1 * k for k in range(31)]                      # 30 gaps in 3 s
    assert math.isclose(steady_tok_s([s], 1), 10.0)


def test_streams_that_never_all_overlap_give_nan():
    assert math.isnan(steady_tok_s([[0.0, 1.0], [2.0, 3.0]], 2))


def test_a_client_between_requests_breaks_the_stretch():
    # client 1 streams [0, 4] and [6, 10]; client 2 streams [1, 9] throughout:
    # both stream during [1, 4] and [6, 9], six seconds at 2 pieces/s each
    c1 = [float(t) for t in range(5)] + [float(t) for t in range(6, 11)]
    first, second = c1[:5], c1[5:]
    c2 = [1 + 0.5 * k for k in range(17)]
    assert full_stretches([first, second, c2], 2) == [(1.0, 4.0), (6.0, 9.0)]
    # gaps inside: first 3 + second 3 + c2 6 + 6 = 18 over 6 s = 3 pieces/s
    assert math.isclose(steady_tok_s([first, second, c2], 2), 3.0)
