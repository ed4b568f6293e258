"""The client's rate-limit governor: pure logic on a fake clock, then the client on the emulator."""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from typing import Any

import pytest

from dagster_gptimage import _ratelimit
from dagster_gptimage._ratelimit import RateGovernor, parse_duration, read_limit_headers
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.emulator import Emulator
from dagster_gptimage.emulator._ratelimit import AccountLimits, retry_after_headers
from dagster_gptimage.errors import RateLimitError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def headers(limit: float, remaining: float, reset: str) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": reset,
    }


def after_one_answer(clock: FakeClock, answer: dict[str, str], *, rng: float = 0.5) -> RateGovernor:
    """A new governor whose first request got ``answer`` one second after it was sent."""
    governor = RateGovernor(clock=clock, rng=lambda: rng)
    governor.start()
    clock.now += 1
    governor.answered(answer, sent_at=clock.now - 1)
    return governor


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("120ms", 0.12), ("1s", 1.0), ("7.5s", 7.5), ("6m0s", 360.0), ("1h2m3s", 3723.0), ("2", 2.0)],
)
def test_reset_durations_in_openai_form(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "-1", "1s2"])
def test_unreadable_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_limit_headers_are_read_case_insensitively() -> None:
    reading = read_limit_headers({"X-RateLimit-Limit-Requests": "240", "x-ratelimit-remaining-requests": "7", "x-ratelimit-reset-requests": "3.25s"})  # fmt: skip
    assert reading is not None
    assert (reading.per_minute, reading.remaining, reading.reset_s) == (240, 7, 3.25)
    assert read_limit_headers({"x-ratelimit-limit-requests": "lots"}) is None
    assert read_limit_headers({}) is None


def test_probe_with_one_request_until_the_first_answer() -> None:
    clock = FakeClock()
    governor = RateGovernor(clock=clock)
    assert governor.delay() == 0
    governor.start()
    assert governor.delay() > 0  # a second request waits for the first answer
    governor.answered({}, sent_at=clock.now)
    assert governor.delay() == 0  # no limit reported: nothing to pace


def test_pacing_from_headers() -> None:
    clock = FakeClock()
    governor = RateGovernor(clock=clock, rng=lambda: 0.5)
    governor.start()
    clock.now += 1
    # 60 images/min, 5 left, full again in 5 s: burst 10, half of it left.
    governor.answered(headers(60, 5, "5s"), sent_at=clock.now - 1)
    assert governor.burst == pytest.approx(10)
    assert governor.limit_per_s == pytest.approx(1)
    assert governor.rate == pytest.approx(0.5)  # a first share: others may use the account
    assert governor.delay() == 0
    governor.start()
    assert governor.delay() == pytest.approx(2.0)
    clock.now += 2.0
    assert governor.delay() == 0


def test_a_first_answer_from_a_roomy_bucket_takes_a_quarter_of_the_room_at_once() -> None:
    """250 images/min with 249 of 250 left: pacing at half the limit until the next answer would
    add a round trip to a backfill that fits in the bucket many times over."""
    clock = FakeClock()
    governor = after_one_answer(clock, headers(250, 249, "240ms"))
    limit = 250 / 60
    assert governor.rate == pytest.approx(0.5 * limit + 0.25 * (249 - 125) / 1.0)
    sent = 0
    for _ in range(50):
        if governor.delay() == 0:
            governor.start()
            sent += 1
        clock.now += 0.01
    assert sent >= 10, "at half the limit, 2 would have gone in half a second"
    # The bucket below half: only the first share of the refill.
    later = after_one_answer(clock, headers(250, 100, "36s"))
    assert later.rate == pytest.approx(0.5 * limit)


def test_guard_never_sends_what_the_bucket_cannot_hold_and_keeps_a_reserve() -> None:
    """Nine images left of a burst of 10, nobody else seen: seven go at once, two stay in the
    bucket (RESERVE_FLOOR) for a process this one cannot see yet, and the next waits a refill."""
    clock = FakeClock()
    governor = after_one_answer(clock, headers(60, 9, "1s"), rng=0.0)
    governor.rate = None  # pacing out of the way
    for _ in range(7):
        assert governor.delay() == 0
        governor.start()
    assert governor.delay() == pytest.approx(1.0)


def test_429_pauses_everyone_but_the_refused_request_and_cuts_the_rate() -> None:
    clock = FakeClock()
    governor = after_one_answer(clock, headers(600, 100, "1s"))
    rate = governor.rate
    assert rate is not None
    governor.start()
    pause, wait = governor.refused(
        {**headers(600, 0, "11s"), "retry-after-ms": "100"}, 2.5, sent_at=clock.now
    )
    assert wait == 2.5
    assert governor.answers_429 == 1
    assert governor.rate == pytest.approx(rate / 2)
    assert governor.delay() == pytest.approx(2.5)
    assert governor.delay(exempt_pause=pause) < 2.5
    clock.now += 2.5
    assert governor.delay() == pytest.approx(governor.delay(exempt_pause=pause))


def test_one_cut_per_congestion_event() -> None:
    """Answers to requests sent before the last cut describe the past: they cut nothing."""
    clock = FakeClock()
    governor = RateGovernor(clock=clock)
    for _ in range(4):
        governor.start()
    sent = clock.now
    clock.now += 1
    governor.refused(headers(60, 0, "10s"), 1.0, sent_at=sent)
    window = governor.window
    assert window == 2  # half of the 4 in flight
    governor.refused(headers(60, 0, "10s"), 1.0, sent_at=sent)
    governor.refused(headers(60, 0, "10s"), 1.0, sent_at=sent)
    assert governor.window == window


def test_without_headers_429s_shrink_the_window_and_successes_grow_it() -> None:
    clock = FakeClock()
    governor = RateGovernor(clock=clock)
    for _ in range(8):
        governor.start()
    clock.now += 1
    governor.refused({}, None, sent_at=clock.now - 1)
    assert governor.window == 4
    assert governor.rate is None  # no limit known: nothing to pace by
    for _ in range(7):
        governor.answered({}, sent_at=clock.now - 1)
    assert governor.in_flight == 0
    assert governor.window is not None
    assert governor.window > 4


def simulate(
    processes: int,
    per_minute: float,
    burst: int,
    partitions: int,
    *,
    seed: int,
    runs: int | None = None,
    startup_s: float = 4.0,
) -> dict[str, Any]:
    """``processes`` governors (8 requests in flight each, latency 1 s) sharing one emulated
    account bucket, in virtual time: the emulator admits on arrival, answers after the latency.
    ``runs``: that many runs of ``partitions`` each, at most ``processes`` at once (a queued run
    coordinator), each a new process with a new governor starting ``startup_s`` after another
    ends. ``first_round_429``: refusals of each process's first, blind request."""
    rng = random.Random(seed)
    clock = FakeClock()
    account = AccountLimits(
        images_per_minute=per_minute,
        images_burst=burst,
        tokens_per_minute=None,
        tokens_burst=None,
        now=clock.now,
    )
    total_runs = runs if runs is not None else processes
    governors: list[RateGovernor | None] = [None] * total_runs
    starts = [(clock.now, p) for p in range(min(processes, total_runs))]
    queued = len(starts)
    todo = [partitions] * total_runs
    done = [0] * total_runs
    flying = [0] * total_runs
    retries: list[list[tuple[float, int]]] = [[] for _ in range(total_runs)]
    answers: list[tuple[float, int, int, float, float | None]] = []
    admitted: list[float] = []
    refused = sent = serial = first_round = 0
    end = clock.now + 3600
    while sum(done) < total_runs * partitions and clock.now < end:
        for start in [s for s in starts if s[0] <= clock.now]:
            starts.remove(start)
            governors[start[1]] = RateGovernor(clock=clock, rng=rng.random)
        while answers and answers[0][0] <= clock.now:
            _, _, p, sent_at, retry_after = heapq.heappop(answers)
            governor = governors[p]
            assert governor is not None
            flying[p] -= 1
            answer = dict(account.headers(clock.now))
            if retry_after is None:
                governor.answered(answer, sent_at=sent_at)
                done[p] += 1
                if done[p] == partitions and queued < total_runs:
                    starts.append((clock.now + startup_s, queued))
                    queued += 1
            else:
                answer.update(retry_after_headers(retry_after))
                pause, wait = governor.refused(answer, retry_after, sent_at=sent_at)
                retries[p].append((clock.now + wait, pause))
        for p, governor in enumerate(governors):
            while governor is not None and flying[p] < 8:
                ready = [r for r in retries[p] if r[0] <= clock.now]
                if not ready and not todo[p]:
                    break
                exempt = ready[0][1] if ready else -1
                if governor.delay(exempt_pause=exempt) > 0:
                    break
                if ready:
                    retries[p].remove(ready[0])
                else:
                    todo[p] -= 1
                blind = governor.sent == 0
                governor.start()
                flying[p] += 1
                sent += 1
                serial += 1
                rejection = account.admit(images=1, tokens=0, now=clock.now)
                if rejection is None:
                    admitted.append(clock.now)
                    heapq.heappush(answers, (clock.now + 1.0, serial, p, clock.now, None))
                else:
                    refused += 1
                    first_round += blind
                    heapq.heappush(
                        answers,
                        (clock.now + 0.01, serial, p, clock.now, rejection.retry_after_s),
                    )
        clock.now += 0.01
    times = sorted(admitted)
    span = times[-1] - times[min(burst, len(times) - 2)]
    return {
        "done": sum(done),
        "end_s": clock.now,
        "share_429": refused / sent,
        "first_round_429": first_round,
        "share_429_after_first_round": (refused - first_round) / sent,
        "achieved": (len(times) - 1 - burst) / span * 60 / per_minute,
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_three_processes_converge_on_the_shared_limit(seed: int) -> None:
    """AIMD on the shared bucket's level: three uncoordinated processes together use the limit
    with few refusals (the burst case of bench/ratelimit.py, in virtual time)."""
    outcome = simulate(3, 240, 20, 60, seed=seed)
    assert outcome["done"] == 180
    assert outcome["share_429"] <= 0.04
    assert outcome["achieved"] >= 0.93


def test_what_others_take_is_learned_from_the_level_and_kept_in_reserve() -> None:
    """Two answers a second apart, no send of this process between them, and the level fell by
    two images more than the refill: the others take about that much, and the guard now waits
    longer than this process's own view of the bucket alone would."""
    clock = FakeClock()
    governor = after_one_answer(clock, headers(60, 10, "10s"), rng=0.0)  # burst 20, level 10
    assert governor.others_per_s is None
    governor.start()
    clock.now += 1
    governor.answered(headers(60, 8, "12s"), sent_at=clock.now - 1)  # 10 + 1 - 1 - 2
    assert governor.others_per_s is not None
    assert governor.others_per_s > 0.2  # a fraction of a sample capped at the refill (1 a second)
    governor.rate = None
    sent = 0
    while governor.delay() == 0 and sent < 20:
        governor.start()
        sent += 1
    assert sent < 8  # alone, it would take all 8 images it saw


def test_alone_at_a_low_tier_no_request_is_refused() -> None:
    outcome = simulate(1, 10, 2, 10, seed=3)
    assert outcome["done"] == 10
    assert outcome["share_429"] == 0
    assert outcome["achieved"] >= 0.95


# --- the client against the emulator ------------------------------------------------------------


@pytest.mark.anyio
async def test_client_on_a_low_limit_paces_instead_of_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """30 images/min, burst 2, 8 requests at once: every request succeeds, after at most a
    couple of 429s, each image billed once, and the log says why requests wait."""
    caplog.set_level(logging.WARNING, logger="dagster_gptimage.client")
    emulator = Emulator(images_per_minute=30, images_burst=2, latency_s=0.05)
    client = GPTImageClient(
        provider="emulator", emulator=emulator, max_concurrency=8, max_retries=0
    )
    results = await asyncio.gather(
        *(client.generate(f"p{i}", size="1024x1024", quality="low") for i in range(8))
    )
    assert len(results) == 8
    assert emulator.stats.billed_images == 8
    assert all(r.possibly_billed_attempts == 1 for r in results)
    refused = sum(r.rate_limited_attempts for r in results)
    assert refused == emulator.stats.rate_limited <= 2
    assert sum(r.attempts for r in results) == 8 + refused
    assert sum(r.rate_limit_wait_s for r in results) > 5  # 6 images beyond the burst at 2 s each
    stats = client.rate_limit_stats()
    assert stats.answers_429 == refused
    assert stats.limit_per_minute == 30
    assert stats.sent == 8 + refused
    warnings = [r for r in caplog.records if "rate limit" in r.getMessage()]
    assert 1 <= len(warnings) <= 3
    await client.aclose()


@pytest.mark.anyio
async def test_rate_limit_waits_are_bounded_by_max_rate_limit_wait_s() -> None:
    emulator = Emulator(images_per_minute=6, images_burst=1)
    client = GPTImageClient(provider="emulator", emulator=emulator, max_rate_limit_wait_s=3)
    await client.generate("first")
    with pytest.raises(RateLimitError, match="max_rate_limit_wait_s=3") as info:
        await client.generate("second")
    assert info.value.possibly_billed_attempts == 0
    assert info.value.cost_usd == 0
    assert emulator.stats.billed_images == 1
    await client.aclose()


_CLIENT_PROCESS = """
import asyncio, json, sys
from dagster_gptimage.client import GPTImageClient

async def main():
    client = GPTImageClient(provider="emulator", base_url=sys.argv[1], max_concurrency=8)
    results = await asyncio.gather(*(client.generate(f"p{i}") for i in range(int(sys.argv[2]))))
    stats = client.rate_limit_stats()
    print(json.dumps({"images": len(results), "answers_429": stats.answers_429,
                      "billed": sum(r.possibly_billed_attempts for r in results)}))
    await client.aclose()

asyncio.run(main())
"""


@pytest.mark.slow
def test_two_processes_share_an_account_without_failing() -> None:
    """Two processes, 8 requests in flight each, share 60 images/min (burst 4) on one emulator
    server: every image is made once, and the 429s are few (a storm would be dozens)."""
    import subprocess
    import sys
    from pathlib import Path

    from dagster_gptimage.emulator import run_server_in_thread

    emulator = Emulator(images_per_minute=60, images_burst=4, latency_s=0.2, require_auth=False)
    root = Path(__file__).resolve().parents[1]
    with run_server_in_thread(emulator) as base_url:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _CLIENT_PROCESS, base_url, "8"],
                stdout=subprocess.PIPE,
                text=True,
                cwd=root,
            )
            for _ in range(2)
        ]
        outputs = [child.communicate(timeout=120)[0] for child in children]
    import json

    reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert [r["images"] for r in reports] == [8, 8]
    assert [r["billed"] for r in reports] == [8, 8]
    assert emulator.stats.billed_images == 16
    assert sum(r["answers_429"] for r in reports) == emulator.stats.rate_limited <= 4


@pytest.mark.parametrize("seed", [1, 2])
def test_three_processes_at_a_low_tier_take_turns(seed: int) -> None:
    """10 images/min, burst 2, three processes starting together (bench/ratelimit.py's low-tier
    case): they use the whole limit, and 429s stay few (the previous governor: 25 % of answers,
    0.57 x the limit, because one process took every refilled image and the others lost every
    retry). The first round costs one 429 whatever the governor: three blind probes, two images."""
    outcome = simulate(3, 10, 2, 10, seed=seed)
    assert outcome["done"] == 30
    assert outcome["achieved"] >= 0.93
    assert outcome["share_429"] <= 0.2


def test_three_processes_at_240_mostly_without_429s() -> None:
    """The 240 images/min case over several seeds: on average at most 2 % of answers are 429
    and the limit is used in every seed (before the others' rate was trusted for one window
    only, a process that had seen busy others waited up to 15 s after they had finished:
    0.78-1.04 x the limit over these seeds)."""
    outcomes = [simulate(3, 240, 20, 60, seed=seed) for seed in range(1, 9)]
    assert all(o["done"] == 180 for o in outcomes)
    assert sum(o["share_429"] for o in outcomes) / len(outcomes) <= 0.02
    assert min(o["achieved"] for o in outcomes) >= 0.95


@pytest.mark.parametrize(("per_minute", "burst"), [(60, 10), (240, 20)])
def test_queued_runs_starting_while_others_run_are_not_refused(per_minute: int, burst: int) -> None:
    """bench/production.py's shape: six runs of 30, three at a time (QueuedRunCoordinator), each
    a new process that knows nothing. Each keeps RESERVE_FLOOR images in the bucket, so a run
    that starts, or one that was waiting, finds one instead of meeting a process that takes each
    image as it is refilled (at 60/min: 4 % of answers were 429 without it, over these seeds)."""
    outcomes = [simulate(3, per_minute, burst, 30, runs=6, seed=seed) for seed in range(1, 7)]
    assert all(o["done"] == 180 for o in outcomes)
    assert sum(o["share_429"] for o in outcomes) / len(outcomes) <= 0.01
    assert max(o["share_429"] for o in outcomes) <= 0.02
    assert min(o["achieved"] for o in outcomes) >= 0.95


def test_the_others_rate_is_trusted_for_one_window_only() -> None:
    """A process that saw the others take 90 % of 240/min waits for its share, but not longer
    than the others' averaging window past its last answer: they may have finished, and only an
    answer can tell."""
    clock = FakeClock()
    governor = after_one_answer(clock, headers(240, 0, "5s"), rng=0.0)
    governor.rate = None  # pacing out of the way
    governor.others_per_s = 0.9 * 4
    wait = governor.delay()
    window = max(_ratelimit.MIN_WINDOW_S, _ratelimit.WINDOW_IMAGES / 4)
    # Unbounded, the others' leftover (0.4 images/s) would hold it 15 s for the 6 images it
    # needs in the bucket (its own and a reserve of a quarter of the burst of 20).
    assert 0 < wait <= window + 0.25 + 0.05


def test_three_processes_at_a_low_tier_with_a_minutes_bucket() -> None:
    """10 images/min with the emulator's default bucket (a minute's worth), three processes of 60
    partitions (bench/ratelimit.py's ratelimit_ipm10_b10): at most 2 % of answers 429 and the
    limit used (before RESERVE_FLOOR: 4.9 % and 0.93-1.0 x over 12 seeds)."""
    outcomes = [simulate(3, 10, 10, 60, seed=seed) for seed in range(1, 4)]
    assert all(o["done"] == 180 for o in outcomes)
    assert max(o["share_429"] for o in outcomes) <= 0.02
    assert min(o["achieved"] for o in outcomes) >= 0.95


def test_three_processes_at_a_low_tier_over_a_longer_run() -> None:
    """10 images/min, burst 2, three processes of 20 partitions each (about 70 answers), over
    seeds: every partition is served at the limit, and the first round costs exactly one 429
    (three blind probes, two images: nothing is known before the first answer). What follows is
    not within the 2 % target (bench/RESULTS.md 4d: 13-19 % over 24 seeds; a process admitted at
    every refill cannot see the others' 429s): this bounds it so that it does not get worse."""
    outcomes = [simulate(3, 10, 2, 20, seed=seed) for seed in range(1, 7)]
    assert all(o["done"] == 60 for o in outcomes)
    assert all(o["first_round_429"] == 1 for o in outcomes)
    assert all(o["share_429_after_first_round"] <= 0.22 for o in outcomes)
    assert sum(o["achieved"] for o in outcomes) / len(outcomes) >= 0.95
    assert min(o["achieved"] for o in outcomes) >= 0.9
