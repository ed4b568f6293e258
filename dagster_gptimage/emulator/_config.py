"""Emulator configuration: which provider it imitates, how slow and how unreliable it is."""

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FAULT_KINDS", "RATE_LIMIT_FIELDS", "EmulatorConfig", "FaultKind", "Profile"]

Profile = Literal["openai", "azure", "gateway"]
FaultKind = Literal[
    "ok",
    "429",
    "insufficient_quota",
    "500",
    "502",
    "503",
    "reset",
    "truncate",
    "timeout",
    "moderation",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
"""What ``Emulator.script`` accepts. "ok" means "no fault for this request"."""

RATE_LIMIT_FIELDS = ("images_per_minute", "images_burst", "tokens_per_minute", "tokens_burst")
"""The account limits: changing any of them starts the buckets afresh, full."""

_RATE_FIELDS = (
    "rate_limit_rate",
    "insufficient_quota_rate",
    "server_error_rate",
    "reset_rate",
    "truncate_rate",
    "timeout_rate",
    "moderation_rate",
)


def _rate(description: str) -> Any:
    return Field(default=0.0, ge=0.0, le=1.0, description=description)


class EmulatorConfig(BaseModel):
    """Settings of one :class:`~dagster_gptimage.emulator.Emulator`.

    Fault rates are probabilities per request (drawn from a ``random.Random(seed)``); together they
    may not exceed 1. Scripted faults (``Emulator.script``) are consumed before any rate is drawn.
    The account limits (``images_per_minute``, ``tokens_per_minute``) are not faults: they are
    token buckets that answer 429 only to clients that go faster than the limit.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: Profile = Field(
        default="openai",
        description="Imitate OpenAI (/v1), Azure OpenAI (/openai/deployments/...) or a gateway.",
    )
    require_auth: bool = Field(
        default=True,
        description="Answer 401 without `Authorization: Bearer ...` (Azure: `api-key`), like the "
        "real API; the client always sends a placeholder bearer to the emulator.",
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        description="When set, the bearer / api-key must equal it (to test 401 handling).",
    )
    latency_s: float = Field(default=0.0, ge=0.0, description="Fixed latency of a generation.")
    latency_distribution: Literal["fixed", "lognormal"] = "fixed"
    latency_p50_s: float = Field(default=59.0, gt=0.0, description="Lognormal median.")
    latency_p95_s: float = Field(default=143.0, gt=0.0, description="Lognormal 95th percentile.")
    latency_scale: float = Field(
        default=1.0, ge=0.0, description="Multiplies lognormal latencies (0.001 for tests)."
    )
    images_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Account limit in images per minute (IPM), shared by every client; "
        "None = unlimited.",
    )
    images_burst: float | None = Field(
        default=None,
        ge=1,
        description="Images the IPM bucket holds when full; None = one minute's worth.",
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Account limit in image output tokens per minute (TPM); None = unlimited.",
    )
    tokens_burst: float | None = Field(
        default=None,
        gt=0,
        description="Tokens the TPM bucket holds when full; None = one minute's worth.",
    )
    rate_limit_rate: float = _rate("429 rate_limit_exceeded (retryable).")
    retry_after_s: float = Field(default=1.0, ge=0.0, description="retry-after of a 429.")
    insufficient_quota_rate: float = _rate("429 insufficient_quota (final; gateway: 402).")
    server_error_rate: float = _rate("500 / 502 / 503, equally likely.")
    reset_rate: float = _rate("Connection reset after the image was generated (billed).")
    truncate_rate: float = _rate("200 with a body cut short (billed).")
    timeout_rate: float = _rate("Answer only after hang_s (billed).")
    moderation_rate: float = _rate("400 moderation_blocked.")
    hang_s: float = Field(
        default=900.0, ge=0.0, description="How long a 'timeout' fault keeps the client waiting."
    )
    moderation_word: str | None = Field(
        default=None, description="A prompt containing it (any case) is blocked by moderation."
    )
    seed: int | None = Field(default=0, description="Seed of fault and latency draws.")
    azure_model: str = Field(
        default="gpt-image-2",
        description="Model behind Azure deployments whose name is not a model name.",
    )
    max_recorded: int = Field(default=500, ge=0, description="Requests kept in stats.recorded.")
    max_files: int = Field(default=256, ge=1, description="Gateway URL images kept for download.")
    file_content_type: str | None = Field(
        default=None, description="Serve gateway URL downloads with this content type instead."
    )
    file_padding_bytes: int = Field(
        default=0, ge=0, description="Append this many bytes to gateway URL downloads."
    )
    batch_completion_s: float = Field(
        default=0.2,
        ge=0.0,
        description="Seconds from creating a batch to `completed`: 10 % validating, 80 % "
        "in_progress (lines done at an even pace), 10 % finalizing; cancelling takes 10 %.",
    )
    batch_window_s: float = Field(
        default=86_400.0,
        gt=0.0,
        description="The completion window (the real `24h`): a batch not done by then expires "
        "with the lines done so far.",
    )
    batch_failure_rate: float = _rate(
        "Fraction of batch lines that fail with a 500 server_error line in the error file."
    )
    batch_max_lines: int = Field(default=50_000, ge=1, description="Lines per input file.")
    batch_max_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1, description="Bytes per input file."
    )
    batch_download_faults: int = Field(
        default=0,
        ge=0,
        description="The next this many downloads of file content break mid-body.",
    )
    batch_download_fault: Literal["truncate", "reset"] = Field(
        default="truncate",
        description="How those downloads break: the connection closes (truncate) or is reset.",
    )
    batch_download_fault_at: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Where in the requested content a broken download stops (fraction).",
    )

    @model_validator(mode="after")
    def _rates_fit(self) -> "EmulatorConfig":
        total = sum(getattr(self, name) for name in _RATE_FIELDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}; they may not exceed 1")
        return self

    def fault_rates(self) -> list[tuple[str, float]]:
        """(kind, probability) in draw order; "server_error" stands for 500/502/503."""
        return [
            ("429", self.rate_limit_rate),
            ("insufficient_quota", self.insufficient_quota_rate),
            ("server_error", self.server_error_rate),
            ("reset", self.reset_rate),
            ("truncate", self.truncate_rate),
            ("timeout", self.timeout_rate),
            ("moderation", self.moderation_rate),
        ]
