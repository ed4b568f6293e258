"""Adapting to the provider's rate limit: when to send, learned from the provider's answers.

Pure logic on a clock the caller passes in (no I/O, no sleeping), so tests move time by hand.

The provider account is a token bucket shared by every process that uses the key: it refills at
``x-ratelimit-limit-requests`` images a minute, holds at most a burst, and says after each answer
how much is left (``x-ratelimit-remaining-requests``) and how long until it is full again
(``x-ratelimit-reset-requests``). A :class:`RateGovernor` reads those figures and:

- **learns what the others take**: between two of its answers the bucket refilled a known amount
  and this process took a known amount; the rest of the fall is the other processes' use,
  averaged over a few refills. The others' 429s never show, but their admitted images do;
- **guards** each send: never before the bucket, as this process last saw it and has used it
  since, holds the request (refills come at instants every process computes alike, since images
  are taken whole); and not before the others, at the rate they take, will have left it the
  request plus a small reserve (their takes come at instants this process cannot see, and a
  process that starts or comes back is unseen until it has taken an image: a couple of images
  always stay in the bucket for it, when the burst allows). The others' rate is trusted for one
  averaging window past the last answer, no longer: they may have finished. So
  processes take turns at the refills instead of racing for each one. A process that keeps
  finding the bucket empty while others are about lets one refill go by now and then (the others'
  429s do not show in its answers, so it cannot know who waits);
- **paces** itself above its share (the refill the others leave, plus what the bucket holds
  beyond half): the guard times the sends, the pace only bounds bursts; a 429 halves it until the
  next answer;
- **bounds requests in flight** with AIMD on a window when the provider answers 429 without
  rate-limit headers (and probes with one request until the first answer tells what the account
  is like);
- **pauses** every request for the ``retry-after`` of a 429.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "LimitReading",
    "RateGovernor",
    "RateLimitStats",
    "parse_duration",
    "read_limit_headers",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
LOW_WATER = 0.25
"""The reserve the guard keeps for the others is at most this fraction of the burst."""
HIGH_WATER = 0.5
"""Above this fraction of the burst, capacity is going unused: the pace may take it."""
DECREASE = 0.5
"""Multiplicative decrease of the pace (and the window) on a 429."""
START_SHARE = 0.5
"""The first paced rate, as a share of the account's limit (other processes may share it), plus
this share squared of what the bucket holds beyond half."""
JITTER = 0.2
"""Pacing intervals vary by up to this fraction, so processes do not send in lockstep."""
YIELD_CHANCE = 0.3
"""How often a process that finds the bucket empty lets a refilled image go to the others."""
PACE_HEADROOM = 1.5
"""The pace stays this much above the share: the bucket guard, not the pace, times the sends."""
MIN_SHARE = 0.1
"""The least share of the limit a process assumes it may use, however busy the others look."""
RESERVE_ROUNDS = 2.0
"""The guard leaves in the bucket what the others take in this many round trips (at most a
quarter of the burst): their takes come in whole images at instants this process cannot see."""
RESERVE_FLOOR = 2.0
"""And always this many images (at most a quarter of the burst), others seen or not: a process
taking each image as it is refilled would meet, at that refill, any process that starts or comes
back, and would never see it (a 429 takes nothing from the bucket)."""
MIN_PACE = 0.25
"""429s halve the pace down to this share of the limit, no lower (the guard does the rest)."""
WINDOW_IMAGES = 4.0
MIN_WINDOW_S = 2.0
"""The others' rate is averaged over this many refilled images' time, and at least this long."""
MAX_RATE_PER_S = 1000.0


def parse_duration(text: str) -> float | None:
    """Seconds in OpenAI's ``x-ratelimit-reset-*`` form (``120ms``, ``1s``, ``6m0s``, ``1h2m3s``)
    or a bare number of seconds; None when unreadable."""
    text = text.strip().lower()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


@dataclass(frozen=True)
class LimitReading:
    """The account's request (image) bucket as one answer described it."""

    per_minute: float
    remaining: float | None
    reset_s: float | None

    @property
    def per_s(self) -> float:
        return self.per_minute / 60.0


def read_limit_headers(headers: Mapping[str, str]) -> LimitReading | None:
    """The ``x-ratelimit-*-requests`` trio of an answer (image models count images there)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        per_minute = float(lowered.get("x-ratelimit-limit-requests", ""))
    except ValueError:
        return None
    if not math.isfinite(per_minute) or per_minute <= 0:
        return None
    remaining: float | None
    try:
        remaining = float(lowered.get("x-ratelimit-remaining-requests", ""))
    except ValueError:
        remaining = None
    if remaining is not None and not (math.isfinite(remaining) and remaining >= 0):
        remaining = None
    reset = parse_duration(lowered.get("x-ratelimit-reset-requests", ""))
    return LimitReading(per_minute, remaining, reset)


@dataclass(frozen=True)
class RateLimitStats:
    """What the provider's rate limit did to this process's requests to one account.

    ``answers_429``: rate-limit refusals received (never billed). ``wait_s``: total time requests
    spent waiting for the rate limit (before sending, and after a 429), summed over requests, so
    it can exceed wall time. ``sent``: requests sent. ``limit_per_minute``: the account's limit
    as last reported (None: never reported). ``pace_per_minute``: this process's current pace
    (None: not pacing).
    """

    answers_429: int = 0
    wait_s: float = 0.0
    sent: int = 0
    limit_per_minute: float | None = None
    pace_per_minute: float | None = None


class RateGovernor:
    """When this process may send its next request to one provider account.

    Call :meth:`delay` before sending (0 means now, and the caller must then call :meth:`start`),
    :meth:`answered` with every answer's headers, :meth:`refused` for a rate-limit 429 and
    :meth:`abandoned` when no answer came. Not thread-safe: the caller holds a lock.
    """

    def __init__(
        self, *, clock: Callable[[], float], rng: Callable[[], float] = random.random
    ) -> None:
        self._clock = clock
        self._rng = rng
        self.limit_per_s: float | None = None
        self.burst: float | None = None
        self.level: float | None = None
        self.level_at = 0.0
        self.sent_since_reading = 0.0
        self.others_per_s: float | None = None
        self.yielding = False
        self.rate: float | None = None
        self.next_at = 0.0
        self.window: float | None = None
        self.in_flight = 0
        self.probing = True
        self.paused_until = 0.0
        self.pause_id = 0
        self.last_cut = -math.inf
        self.last_start = -math.inf
        self.round_trip_s = 1.0
        self.answers_429 = 0
        self.wait_s = 0.0
        self.sent = 0

    # --- the decision ---------------------------------------------------------------------------

    def delay(self, images: int = 1, *, exempt_pause: int = -1) -> float:
        """Seconds until a request of ``images`` may be sent (0: now). ``exempt_pause``: the pause
        this request already waited out itself (it got the 429 that started it)."""
        now = self._clock()
        waits = [0.0]
        if self.paused_until > now and self.pause_id != exempt_pause:
            waits.append(self.paused_until - now)
        if self.probing and self.in_flight > 0:
            waits.append(self._poll_s())
        if self.window is not None and self.in_flight >= max(1, math.floor(self.window)):
            waits.append(self._poll_s())
        if self.rate is not None and self.next_at > now:
            waits.append(self.next_at - now)
        waits.append(self._guard_wait(images, now))
        return max(waits)

    def start(self, images: int = 1) -> None:
        """A request of ``images`` is being sent now."""
        now = self._clock()
        self.in_flight += 1
        self.sent += 1
        self.last_start = now
        self.sent_since_reading += images
        if self.rate is not None:
            spacing = images / self.rate * (1 + JITTER * (2 * self._rng() - 1))
            self.next_at = max(now, self.next_at) + spacing

    def waited(self, seconds: float) -> None:
        self.wait_s += max(0.0, seconds)

    # --- what the answers say -------------------------------------------------------------------

    def answered(self, headers: Mapping[str, str], *, sent_at: float) -> None:
        """An answer (any status but a rate-limit 429) to a request sent at ``sent_at``."""
        now = self._clock()
        self._finish(now, sent_at)
        reading = read_limit_headers(headers)
        if reading is None:
            self._grow_window()
            return
        self._read(reading, now)
        level, burst, limit = self.level, self.burst, self.limit_per_s
        if level is None or burst is None or limit is None:
            return
        self._grow_window()
        if self.rate is None:
            # A first share of the refill and of what the bucket holds beyond half (a quarter
            # of it: others starting at the same time see the same bucket), until the next
            # answers tell what the others take.
            spare = self._spare_rate(level, burst, limit)
            self.rate = min(START_SHARE * limit + START_SHARE**2 * spare, MAX_RATE_PER_S)
            self.next_at = now
            return
        self.rate = min(self._target_rate(level, burst, limit), MAX_RATE_PER_S)
        self.next_at = min(self.next_at, max(now, self.last_start + 1 / self.rate))

    def refused(
        self, headers: Mapping[str, str], retry_after_s: float | None, *, sent_at: float
    ) -> tuple[int, float]:
        """A rate-limit 429 to a request sent at ``sent_at``: the pause it starts (its id, to
        exempt the refused request that waits it out itself) and how long that request waits."""
        now = self._clock()
        self._finish(now, sent_at)
        self.answers_429 += 1
        if sent_at >= self.level_at:
            self.sent_since_reading = max(0.0, self.sent_since_reading - 1)  # it took nothing
        reading = read_limit_headers(headers)
        if reading is not None:
            self._read(reading, now)
        in_flight = self.in_flight + 1
        self._cut(now, sent_at, self._current_rate(now), in_flight=in_flight)
        wait = retry_after_s if retry_after_s is not None else self._default_wait()
        until = now + wait
        if until > self.paused_until:
            self.paused_until = until
            self.pause_id += 1
        return self.pause_id, wait

    def abandoned(self, *, sent_at: float) -> None:
        """No answer came (a transport failure): the request is no longer in flight."""
        self._finish(self._clock(), sent_at)

    def stats(self) -> RateLimitStats:
        return RateLimitStats(
            answers_429=self.answers_429,
            wait_s=self.wait_s,
            sent=self.sent,
            limit_per_minute=None if self.limit_per_s is None else self.limit_per_s * 60,
            pace_per_minute=None if self.rate is None else self.rate * 60,
        )

    # --- internals ------------------------------------------------------------------------------

    def _finish(self, now: float, sent_at: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        self.probing = False
        if now > sent_at:
            self.round_trip_s += 0.2 * (now - sent_at - self.round_trip_s)

    def _read(self, reading: LimitReading, now: float) -> None:
        """Learn the account's rate, burst and current level from one answer, and from how the
        level moved since the last one, how fast the other processes take from the bucket."""
        rate = reading.per_s
        if self.limit_per_s is not None and abs(rate - self.limit_per_s) > 1e-9:
            self.burst = None  # a new tier: learn its burst and its sharing again
            self.level = self.others_per_s = None
            if self.rate is not None:
                self.rate *= rate / self.limit_per_s
        self.limit_per_s = rate
        remaining, reset = reading.remaining, reading.reset_s
        if remaining is None:
            return
        alone = self._estimate(now, others=False)
        since = now - self.level_at
        if reset is not None:
            # The remaining count is rounded down and the reset up (to the millisecond): a burst
            # is a whole number of images, the largest this reading allows.
            implied = math.ceil(remaining + reset * rate - 0.001 * rate - 1e-6)
            self.burst = max(self.burst or 0.0, implied, remaining, 1.0)
            level = max(remaining, self.burst - reset * rate)
        else:
            self.burst = max(self.burst or 0.0, remaining, 1.0)
            level = remaining
        level = min(level, self.burst)
        if alone is not None and since > 0:
            self._learn_others(max(0.0, alone - level), since, level, self.burst, rate)
        elif self.others_per_s is None and level < HIGH_WATER * self.burst:
            # A first look at a bucket already half empty: assume an equal other until seen.
            self.others_per_s = rate * (1 - START_SHARE)
        self.level, self.level_at, self.sent_since_reading = level, now, 0.0
        # Taking each image as it is refilled, a process cannot tell whether others wait for
        # them (their 429s do not show): now and then it lets one refill go by.
        low = level < 1 and self.burst >= 2 and (self.others_per_s or 0) > MIN_SHARE * rate / 2
        self.yielding = low and self._rng() < YIELD_CHANCE

    def _learn_others(
        self, taken: float, since: float, level: float, burst: float, rate: float
    ) -> None:
        """Fold what the others took in ``since`` seconds into their rate (an average over a few
        refills: images are taken whole, so one interval says little)."""
        previous = self.others_per_s
        if previous is not None and level >= burst - 1:
            taken = min(taken, previous * since)  # a full bucket hides refill that was lost
        weight = 1 - math.exp(-since / self._window_s(rate))
        sample = min(taken / since, rate)
        previous = previous or 0.0
        self.others_per_s = min(previous + weight * (sample - previous), rate * (1 - MIN_SHARE))

    @staticmethod
    def _window_s(limit: float) -> float:
        """How long the others' rate is averaged over (and trusted for)."""
        return max(MIN_WINDOW_S, WINDOW_IMAGES / limit)

    def _target_rate(self, level: float, burst: float, limit: float) -> float:
        """What this process may use: the refill the others leave, plus a share of what the
        bucket holds beyond half (capacity going unused)."""
        others = self.others_per_s or 0.0
        spare = self._spare_rate(level, burst, limit)
        return max(MIN_SHARE * limit, limit - others + spare) * PACE_HEADROOM

    def _spare_rate(self, level: float, burst: float, limit: float) -> float:
        """What the bucket holds beyond half, spread over a round trip: capacity going unused."""
        return max(0.0, level - HIGH_WATER * burst) / max(self.round_trip_s, 1 / limit, 1e-3)

    def _cut(
        self, now: float, sent_at: float, current: float | None, *, in_flight: int | None = None
    ) -> None:
        """Multiplicative decrease, once per congestion event: answers to requests sent before
        the last cut describe the past."""
        if sent_at < self.last_cut:
            return
        self.last_cut = now
        if self.limit_per_s is not None:
            base = current if self.rate is None else min(self.rate, current or self.rate)
            floor = MIN_PACE * self.limit_per_s
            self.rate = max(floor, DECREASE * (base if base else START_SHARE * self.limit_per_s))
        if in_flight is not None or self.limit_per_s is None:
            flying = in_flight if in_flight is not None else self.in_flight + 1
            self.window = max(1.0, DECREASE * min(self.window or flying, flying))

    def _grow_window(self) -> None:
        if self.window is None:
            return
        self.window += 1 / self.window
        if self.window >= 64:
            self.window = None

    def _current_rate(self, now: float) -> float | None:
        """The rate this process is sending at: its pace, else what it has in flight per round."""
        if self.rate is not None:
            return self.rate
        flying = self.in_flight + 1
        return flying / max(self.round_trip_s, 1e-3)

    def _guard_wait(self, images: int, now: float) -> float:
        """Time until the bucket, as this process last saw it and has used it since, holds
        ``images`` (never sooner), and until the others, at the rate they have been taking, will
        have left them to it with a reserve (the nearest refill). Refill instants are the same for
        every process (images are taken whole, so the level's fraction is common), which makes
        the processes' turns stick."""
        limit, burst, level = self.limit_per_s, self.burst, self.level
        if limit is None or burst is None or level is None:
            return 0.0
        short = min(float(images), burst) + self.sent_since_reading - level
        ready = self._refill_at(self.level_at + short / limit, up=True) if short > 1e-9 else now
        others = self.others_per_s or 0.0
        # What the others take comes in whole images at unknown instants, and a process that
        # starts or comes back is unseen until it has taken one: keep some in reserve.
        reserve = RESERVE_ROUNDS * others * max(self.round_trip_s, 1 / limit)
        short += min(LOW_WATER * burst, max(RESERVE_FLOOR, reserve))
        if short > 1e-9:
            # Alone, the reserve is this process's own: never sooner than the refill that holds it.
            fair = self._refill_at(self.level_at + short / (limit - others), up=others <= 0)
            if self.yielding:
                fair += 1 / limit
            # The others' rate is an average over one window: past it, without a newer answer, it
            # may be stale (they may have finished), so the guard stops waiting for them.
            trusted = self.level_at + max(self.round_trip_s, self._window_s(limit))
            ready = max(ready, min(fair, self._refill_at(trusted, up=True)))
        if ready <= now:
            return 0.0
        # Processes that compute the same refill instant race for it: spread them a little.
        return ready - now + min(0.05, 0.05 / limit) * self._rng()

    def _refill_at(self, when: float, *, up: bool) -> float:
        """The instant an image is refilled nearest ``when`` (``up``: at or after it)."""
        limit, level = self.limit_per_s or 1.0, self.level or 0.0
        refilled = level + (when - self.level_at) * limit
        whole = math.ceil(refilled - 1e-9) if up else round(refilled)
        return self.level_at + (whole - level) / limit

    def _estimate(self, now: float, *, others: bool = True) -> float | None:
        """The bucket's level now: the last reading, refilled since, minus what this process sent
        since and (``others``) what the others are expected to have taken."""
        if self.level is None or self.limit_per_s is None or self.burst is None:
            return None
        net = self.limit_per_s - (self.others_per_s or 0.0 if others else 0.0)
        refilled = min(self.burst, self.level + (now - self.level_at) * net)
        return refilled - self.sent_since_reading

    def _default_wait(self) -> float:
        """A 429 without ``retry-after``: one token's time if the rate is known, else a second."""
        if self.limit_per_s:
            return min(60.0, 1.0 / self.limit_per_s)
        return 1.0

    def _poll_s(self) -> float:
        return min(0.05, max(0.005, self.round_trip_s / 20))
