"""The receiver's configuration (the `receiver:` section of the YAML config), validated before any port opens."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def parse_endpoint(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:4317``); port 0 asks the OS for a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"endpoint {value!r} must be HOST:PORT with a port in 0..65535, e.g. 127.0.0.1:4317")
    return host.strip("[]"), int(port)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthConfig(_Strict):
    """Bearer-token auth, as the Collector's bearertokenauth extension does."""

    bearer_token: str | None = None
    """Token required on ingest (``Authorization: Bearer <token>``); None disables auth."""
    bearer_token_file: Path | None = None
    """Read the token from this file instead (kept out of the config file)."""

    @model_validator(mode="after")
    def _one_source(self) -> AuthConfig:
        if self.bearer_token and self.bearer_token_file:
            raise ValueError("set only one of bearer_token and bearer_token_file")
        return self

    def token(self) -> str | None:
        if self.bearer_token_file is not None:
            return self.bearer_token_file.read_text().strip() or None
        return self.bearer_token or None


class TLSConfig(_Strict):
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _both(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls needs both cert_file and key_file")
        for p in (self.cert_file, self.key_file):
            if p is not None and not p.is_file():
                raise ValueError(f"tls file not found: {p}")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class ReceiverConfig(_Strict):
    grpc_endpoint: str = "127.0.0.1:4317"
    http_endpoint: str = "127.0.0.1:4318"
    max_request_size_mib: float = Field(default=64, gt=0)
    """Largest request accepted, compressed or decompressed (the gRPC default of 4 MiB is too small)."""
    max_spans_per_request: int = Field(default=100_000, gt=0)
    max_attribute_value_length: int = Field(default=65_536, gt=0)
    """Longest kept string attribute value; longer billing-relevant values reject the span."""
    max_inflight_requests: int = Field(default=64, gt=0)
    """Requests being decoded or committed at once; more are refused retryably (backpressure)."""
    retry_after_s: float = Field(default=1.0, gt=0)
    memory_limit_mib: float | None = Field(default=None, gt=0)
    """Resident memory of the process above which (80% of it) exports are refused retryably; None: no limit."""
    grpc_workers: int = Field(default=8, gt=0)
    decode_workers: int | None = Field(default=None, ge=0, le=64)
    """Processes decoding OTLP/protobuf bodies beside the main process (0: in the receiving thread). None
    (unset): 1 when the process may use two or more CPUs, else 0."""
    accept_export_baggage: bool = False
    """Keep the W3C ``baggage`` header of the OTLP export request itself as a last-resort tenant source."""
    auth: AuthConfig = AuthConfig()
    tls: TLSConfig = TLSConfig()

    @field_validator("grpc_endpoint", "http_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parse_endpoint(v)
        return v

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_size_mib * 1024 * 1024)
