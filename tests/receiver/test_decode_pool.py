"""The decode worker process: every captured fixture extracts exactly as in the receiving thread, bad bodies get
the same permanent errors, and a worker killed mid-service is replaced with the request refused retryably."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator

import pytest

from processors._dialects import EXTRA_KEYS, usage_problems
from processors.config import IdentityConfig
from receiver import DecodePool, InvalidRequest, JSONAttributes, RequestTooLarge, WorkerUnavailable
from receiver._otlp import AttributeFilter
from tests.conftest import fixture_names, fixture_to_protobuf, load_fixture

FILTER = AttributeFilter(IdentityConfig().all_keys() | EXTRA_KEYS, 65_536)


@pytest.fixture()
def pool() -> Iterator[DecodePool]:
    p = DecodePool(FILTER, usage_problems, 1000, workers=1)
    p.start()
    yield p
    p.close()


def _fields(ex: object) -> dict[str, object]:
    return {f.name: getattr(ex, f.name) for f in dataclasses.fields(ex)}  # type: ignore[arg-type]


def test_worker_extracts_every_fixture_exactly_as_in_process(pool: DecodePool) -> None:
    local = DecodePool(FILTER, usage_problems, 1000, workers=0)
    spans = 0
    for name in fixture_names():
        body = fixture_to_protobuf(load_fixture(name)).SerializeToString()
        remote, here = pool.extract(body), local.extract(body)
        assert _fields(remote) == _fields(here), name
        spans += len(remote)
    assert spans > 100


def test_without_attribute_dicts_spans_carry_the_spools_json_text_and_read_the_same() -> None:
    """For settle workers (they parse attributes themselves) the decode worker sends no attribute dicts: each span
    carries the JSON text the spool stores, unparsed, and it reads as the dict extracted in-process."""
    remote_pool = DecodePool(FILTER, usage_problems, 1000, workers=1, attribute_dicts=False)
    remote_pool.start()
    local = DecodePool(FILTER, usage_problems, 1000, workers=0)
    try:
        for name in fixture_names():
            body = fixture_to_protobuf(load_fixture(name)).SerializeToString()
            remote, here = remote_pool.extract(body), local.extract(body)
            attrs = remote.attribute_dicts
            assert all(isinstance(a, JSONAttributes) and a._parsed is None for a in attrs), name
            assert [a.text for a in attrs if isinstance(a, JSONAttributes)] == here.attributes, name
            assert attrs == here.attribute_dicts, name
            assert {k: v for k, v in _fields(remote).items() if k != "attribute_dicts"} == {
                k: v for k, v in _fields(here).items() if k != "attribute_dicts"}, name
    finally:
        remote_pool.close()


def test_bad_bodies_get_the_same_permanent_errors(pool: DecodePool) -> None:
    with pytest.raises(InvalidRequest, match="not a valid OTLP ExportTraceServiceRequest"):
        pool.extract(b"\x0a\xff\xff\xff")
    big = fixture_to_protobuf(load_fixture(fixture_names()[0]))
    spans = big.resource_spans[0].scope_spans[0].spans
    template = spans[0]
    for _ in range(1001):
        spans.add().CopyFrom(template)
    with pytest.raises(RequestTooLarge, match="max_spans_per_request"):
        pool.extract(big.SerializeToString())
    assert pool.restarts == 0


def test_killed_worker_is_replaced_and_the_request_is_refused_retryably(pool: DecodePool) -> None:
    body = fixture_to_protobuf(load_fixture(fixture_names()[0])).SerializeToString()
    assert len(pool.extract(body)) > 0
    (worker,) = pool._all
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.join(10)
    with pytest.raises(WorkerUnavailable) as err:
        pool.extract(body)
    assert err.value.retryable
    assert len(pool.extract(body)) > 0 and pool.restarts == 1
