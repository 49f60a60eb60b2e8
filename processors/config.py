"""Configuration of the processors stage (the `processors:` section): settle window, bounds, identity keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentityConfig(_Strict):
    """Where the chargeback identifiers are read from, in the documented order (README "Attribution")."""

    tenant_keys: tuple[str, ...] = (
        "tenant.id",
        "tenant_id",
        "tenantId",
        "app.tenant.id",
        "app.tenant_id",
        "saas.tenant.id",
    )
    user_keys: tuple[str, ...] = ("user.id", "enduser.id", "user_id", "langfuse.user.id")
    environment_keys: tuple[str, ...] = ("deployment.environment.name", "deployment.environment", "environment")
    feature_keys: tuple[str, ...] = ("feature", "feature.name", "app.feature")
    workflow_keys: tuple[str, ...] = ("workflow.id", "gen_ai.workflow.name", "traceloop.workflow.name")
    metadata_keys: tuple[str, ...] = ("metadata", "gen_ai.request.metadata", "llm.metadata", "openai.batch.metadata")
    """Attributes holding a JSON object (OpenInference ``metadata``, OpenAI Batch-style request metadata) that
    may carry the tenant/user under one of the keys above or plain ``tenant``/``user``."""
    max_tenant_id_length: int = Field(default=128, gt=0)
    use_export_baggage: bool = False
    """Last resort: the ``baggage`` header of the OTLP export request (needs receiver.accept_export_baggage)."""

    def all_keys(self) -> frozenset[str]:
        return frozenset(
            self.tenant_keys
            + self.user_keys
            + self.environment_keys
            + self.feature_keys
            + self.workflow_keys
            + self.metadata_keys
        )


class ProcessorsConfig(_Strict):
    wait_duration_s: float = Field(default=2.0, ge=0)
    """A trace is settled when no new span arrived for this long (as groupbytrace's wait_duration)."""
    max_traces: int = Field(default=100_000, gt=0)
    """Unsettled traces held in memory; beyond it the oldest are settled early (late spans correct them)."""
    max_pending_spans: int = Field(default=2_000_000, gt=0)
    """Spans waiting to settle; beyond it the receiver answers retryable backpressure."""
    max_pending_spans_in_memory: int | None = Field(default=None, gt=0)
    """Of those, the most held in memory: beyond it, newly committed spans stay only in the spool and are read back, in
    order, as the settler catches up (a backlog costs disk, not memory). None (unset): a base of 32 768, or room for two
    batches (2 x ``max_batch_spans``) plus, per settle worker, the batches it may have computing or waiting to be
    written (2 x ``max_batch_spans``) if that is more (98 304 with two workers), plus room for the spans that wait out
    the settle window at the rate spans arrive, or are settled if that is lower (each averaged over ~2 s: rate x
    (``wait_duration_s`` + ``settle_max_delay_s`` + 2 x ``settle_interval_s``), at most 65 536 more): those are the
    pipeline's contents, not a backlog (in a burst, spans arriving faster than they settle are one). Without that room a
    one-core server at ~13 000 spans/s held 20 000-30 000 of them against 32 768, so a short stall made it spill, and
    every span arriving while it spilled was read back from the spool, which cost it more than its headroom
    (bench/README.md, 2026-12-04 16:30). So, unset, a spill reads back only the backlog: while spans wait in the spool,
    part of the window's room is kept for spans still arriving (as many as arrive in the window at the current rate),
    which are held if they fit, and the rest of the bound is for the backlog read back (a set value is all the
    read-back's, and spans arriving during a spill are left in the spool too). Spans stay pending until their batch is
    written, so with less than the base the read-back waits for each write and the workers idle meanwhile (2 cores, 4
    interleaved bursts: 23 300 spans/s at 32 768 against 28 800 at 100 000; bench/README.md, 2026-12-04 12:40). The
    process keeps the memory of its largest backlog for good (Python's allocator returns an arena only once it is
    empty), so the bound is also the step RSS can take after a stall: after 20 s stopped at 7 000 spans/s, +75 MiB at
    32 768 against +180 at 100 000, at the same one-core burst rate (bench/README.md, 2026-12-04 03:00). A set value is
    used as it is."""
    settle_interval_s: float = Field(default=0.2, gt=0)
    settle_batch_spans: int = Field(default=4_096, ge=1)
    """While spans keep arriving, a tick settles the due traces only once they hold this many spans, or once the
    oldest has been due for ``settle_max_delay_s``: each ledger transaction has a fixed cost (~10 ms), so under
    steady load fewer, bigger ones (as the Collector's batch processor's send_batch_size). When no span arrived
    since the last tick, what is due is settled at once."""
    settle_max_delay_s: float = Field(default=1.0, ge=0)
    """Longest a due trace waits for its batch to fill (see settle_batch_spans)."""
    max_batch_spans: int = Field(default=16_384, gt=0)
    """Most spans settled in one ledger transaction (a backlog is settled in several): bounds the transient
    memory of a settle (records, Arrow tables) however far behind the settler fell. The default is half the ledger's
    row group (ledger._file.ROW_GROUP_SIZE, 32 768 rows since 2026-12-05; the whole of it, 16 384, when this was
    measured), so a transaction's calls fit in one: DuckDB writes a larger one straight to row groups of its own (a
    part-filled last one doubles the file), and each smaller transaction after it (a tick's remainder) starts a new
    in-memory row group that the WAL-sized checkpoint does not count: with batches of 20 000 and 32 768 spans and
    16 384-row groups serve held ~250 MiB of such rows and stalled writes for up to 4.4 s (bench/README.md,
    2026-12-02 05:15 and 07:45)."""
    settled_cache_traces: int = Field(default=20_000, ge=0)
    """Recently settled traces remembered (the sequence numbers of their spans in the spool, and their summary for
    linked traces; ~200 bytes each) so a late span re-settles its trace from that part of the spool, not a scan of
    all of it. Not their spans: 20 000 traces of ~10 spans held ~600 MiB (bench/README.md)."""
    settle_workers: int | None = Field(default=None, ge=0, le=16)
    """Processes that attribute and price settled traces beside the main process, one batch in flight on each (0:
    in the main process). None (unset): 2 when the process may use two or more CPUs, else 0."""
    identity: IdentityConfig = IdentityConfig()
