"""Pricing: list cost from the genai-prices catalogue at the call's timestamp, effective (contracted) cost from
config overrides, per-component rates kept on the record so FOCUS rows satisfy cost = unit price × quantity.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import threading
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from importlib.metadata import version
from typing import Any, Literal

from genai_prices import Usage, calc_price
from pydantic import BaseModel, ConfigDict, Field, model_validator

from processors._record import ComponentPrice, UsageRecord

_Q = Decimal("1e-12")  # the ledger's DECIMAL(38,12); costs are rounded half-even to it
_MTOK = Decimal(1_000_000)

# Semconv gen_ai.provider.name (and deprecated gen_ai.system / OpenInference llm.provider values) -> the
# genai-prices provider id. Explicit because the ids differ (x_ai vs x-ai, gcp.* vs google, aws.bedrock vs aws).
PROVIDER_MAP: Mapping[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "aws.bedrock": "aws",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "az.ai.openai": "azure",
    "az.ai.inference": "azure",
    "azure": "azure",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "vertex_ai": "google",
    "gemini": "google",
    "google": "google",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "groq": "groq",
    "perplexity": "perplexity",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "moonshot_ai": "moonshotai",
}


class RateOverride(BaseModel):
    """A negotiated/contract rate, or the rate of a self-hosted or fine-tuned model (rates per 1M tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    provider: str | None = None
    model: str
    input_per_mtok: Decimal | None = Field(default=None, ge=0)
    output_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_read_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)
    discount_pct: Decimal | None = Field(default=None, ge=0, le=100)
    applies_to: Literal["effective", "list_and_effective"] = "effective"

    @model_validator(mode="after")
    def _one_kind(self) -> RateOverride:
        rates = (self.input_per_mtok, self.output_per_mtok, self.cache_read_per_mtok, self.cache_write_per_mtok)
        has_rates = any(r is not None for r in rates)
        if has_rates == (self.discount_pct is not None):
            raise ValueError(f"override for model {self.model!r}: set either *_per_mtok rates or discount_pct")
        if self.applies_to == "list_and_effective" and (self.input_per_mtok is None or self.output_per_mtok is None):
            raise ValueError(f"override for model {self.model!r}: list_and_effective needs input_per_mtok and "
                             "output_per_mtok")
        return self

    def matches(self, provider: str | None, model: str) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        return fnmatch.fnmatchcase(model.lower(), self.model.lower())


class PricingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    overrides: tuple[RateOverride, ...] = ()
    batch_discount_pct: Decimal = Field(default=Decimal("50"), ge=0, le=100)
    """Applied when the span says the call went through a Batch API and the catalogue has no batch price."""
    provider_map: dict[str, str] = {}
    currency: str = "USD"


def provider_id_for(semconv_provider: str | None, extra: Mapping[str, str] | None = None) -> str | None:
    if semconv_provider is None:
        return None
    if extra and semconv_provider in extra:
        return extra[semconv_provider]
    return PROVIDER_MAP.get(semconv_provider)


def _q(d: Decimal) -> Decimal:
    return d.quantize(_Q, rounding=ROUND_HALF_EVEN)


def _rate(price: Any, total_input: int) -> Decimal | None:
    """A catalogue price for one unit: plain Decimal, or tiered with the 'cliff' rule (when the total input
    exceeds a tier's start, every token of that unit uses the tier rate)."""
    if price is None:
        return None
    if isinstance(price, Decimal | int | float):
        return Decimal(str(price))
    base = Decimal(str(price.base))
    for tier in sorted(price.tiers, key=lambda t: t.start):
        if total_input > tier.start:
            base = Decimal(str(tier.price))
    return base


_MINUTE_NS = 60_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NO_RATES = ComponentPrice()


@dataclasses.dataclass(frozen=True, slots=True)
class _Quote:
    cost: Decimal
    rates: ComponentPrice | None
    model: str
    source: str


class Pricer:
    """Threading: stateless after construction except the lock-protected rate cache; safe from any thread."""

    def __init__(self, config: PricingConfig) -> None:
        self._cfg = config
        self._source = f"genai-prices {version('genai-prices')} bundled"
        self._lock = threading.Lock()
        self._linear: dict[tuple[Any, ...], tuple[str, ComponentPrice, str, _PerToken]] = {}

    @property
    def config(self) -> PricingConfig:
        return self._cfg

    def price(self, record: UsageRecord) -> UsageRecord:
        """A priced copy of ``record``."""
        out = dataclasses.replace(record)
        self.price_into(out)
        return out

    def price_into(self, record: UsageRecord) -> None:
        """Fill the pricing fields of a record the caller owns (the settler: fresh from attribution). In place
        because copying a 43-field record per call was a measurable share of the settle CPU (bench/README.md)."""
        cfg = self._cfg
        record.currency = cfg.currency
        if record.usage_status == "missing" or record.input_tokens is None and record.output_tokens is None:
            record.pricing_status = "usage_missing"
            record.pricing_reason = "the span reported no token usage (e.g. a stream without include_usage)"
            return
        model = record.response_model or record.request_model
        if not model:
            record.pricing_status = "unpriced"
            record.pricing_reason = "the span names no model (gen_ai.request.model)"
            return
        inp = record.input_tokens or 0
        cr = record.cache_read_tokens or 0
        cw = record.cache_write_tokens or 0
        out = record.output_tokens or 0
        qty = (inp - cr - cw, cr, cw, out)
        override = next((o for o in cfg.overrides if o.matches(record.provider, model)), None) \
            if cfg.overrides else None
        quote = self._catalogue(record.provider, model, inp, cr, cw, out, record.start_time_unix_nano,
                                record.batch, record.service_tier)
        if isinstance(quote, str):
            if override is None or override.applies_to != "list_and_effective":
                record.pricing_status = "unpriced"
                record.pricing_reason = quote
                return
            rates = _override_rates(override, None)
            cost = _cost(qty, rates)
            record.pricing_status = "contract"
            record.list_cost = record.effective_cost = cost
            record.list_rates = record.effective_rates = rates
            record.price_source = f"override:{override.model}"
            record.priced_model = model
            record.pricing_reason = None
            return
        eff_cost, eff_rates, status, source = quote.cost, quote.rates, "priced", quote.source
        if override is not None:
            if override.discount_pct is not None:
                factor = (100 - override.discount_pct) / 100
                eff_rates = _scale(quote.rates, factor) if quote.rates else None
                eff_cost = _cost(qty, eff_rates) if eff_rates else _q(quote.cost * factor)
            else:
                eff_rates = _override_rates(override, quote.rates)
                eff_cost = _cost(qty, eff_rates)
            status, source = "contract", f"{quote.source}; override:{override.model}"
        record.pricing_status = status
        record.pricing_reason = None
        record.list_cost = quote.cost
        record.effective_cost = eff_cost
        record.list_rates = quote.rates or _NO_RATES
        record.effective_rates = eff_rates or _NO_RATES
        record.price_source = source
        record.priced_model = quote.model

    @staticmethod
    def _calc(usage: Usage, model: str, pid: str | None, when: dt.datetime, ctx: Any) -> Any:
        return calc_price(usage, model, provider_id=pid, genai_request_timestamp=when, price_context=ctx)

    def _catalogue(self, provider: str | None, model: str, inp: int, cr: int, cw: int, out: int,
                   start_ns: int, batch: bool, tier: str | None) -> _Quote | str:
        """The catalogue's price of one call. Where the model's four token prices are flat (no tiers) the price is
        linear in the token counts, so the rates found for (model, provider, context, minute) are reused for the
        next calls of that minute: genai-prices' per-call usage decomposition was most of the settle thread's CPU
        (bench/README.md). Price periods and time-of-day prices change on minute boundaries."""
        key = (model, provider, tier, batch, start_ns // _MINUTE_NS)
        hit = self._linear.get(key)
        if hit is not None:
            model_id, rates, source, per_token = hit
            return _Quote(_cost_per_token((inp - cr - cw, cr, cw, out), per_token), rates, model_id, source)
        when = _EPOCH + dt.timedelta(microseconds=start_ns // 1000)  # exact, unlike a float timestamp
        quote, linear = self._catalogue_call(provider, model, inp, cr, cw, out, when, batch, tier)
        if linear and isinstance(quote, _Quote) and quote.rates is not None:
            with self._lock:
                if len(self._linear) > 50_000:
                    self._linear.clear()
                self._linear[key] = (quote.model, quote.rates, quote.source, _per_token(quote.rates))
        return quote

    def _catalogue_call(self, provider: str | None, model: str, inp: int, cr: int, cw: int, out: int,
                        when: dt.datetime, batch: bool, tier: str | None) -> tuple[_Quote | str, bool]:
        pid = provider_id_for(provider, self._cfg.provider_map)
        ctx: dict[str, str] = {}
        if tier in ("flex", "priority"):
            ctx["service_tier"] = tier
        if batch:
            ctx["processing"] = "batch"
        try:
            usage = Usage(input_tokens=inp, cache_read_tokens=cr, cache_write_tokens=cw, output_tokens=out)
            calc = self._calc(usage, model, pid, when, ctx or None)
            std = calc
            if batch:
                std = self._calc(usage, model, pid, when,
                                 {k: v for k, v in ctx.items() if k != "processing"} or None)
        except LookupError:
            return (f"model {model!r} of provider {provider or '?'!r} is not in the price catalogue: add a "
                    f"pricing.overrides entry for model '{model}'"), False
        except ValueError as e:
            return f"usage cannot be priced: {e}", False
        mp = calc.model_price
        linear = _flat(mp) and _flat(std.model_price)
        input_rate = _rate(mp.input_mtok, inp)
        # A model without a cache price bills cache tokens as input tokens: record that rate, so the FOCUS rows
        # (quantity x unit price per token type) add up to the call's cost.
        read_rate = _rate(mp.cache_read_mtok, inp)
        write_rate = _rate(mp.cache_write_mtok, inp)
        rates: ComponentPrice | None = ComponentPrice(
            input_per_mtok=input_rate,
            cache_read_per_mtok=read_rate if read_rate is not None else input_rate,
            cache_write_per_mtok=write_rate if write_rate is not None else input_rate,
            output_per_mtok=_rate(mp.output_mtok, inp),
        )
        total = Decimal(str(calc.total_price))
        assert rates is not None
        if _cost((inp - cr - cw, cr, cw, out), rates) != _q(total):
            rates = None  # the catalogue priced something we cannot decompose (e.g. other usage keys)
        source = self._source
        if calc.auto_update_timestamp is not None:
            source = f"genai-prices {version('genai-prices')} updated {calc.auto_update_timestamp.isoformat()}"
        if batch and calc.total_price == std.total_price and self._cfg.batch_discount_pct:
            # No batch variant in the catalogue for this model: apply the configured Batch-API discount.
            factor = (100 - self._cfg.batch_discount_pct) / 100
            rates = _scale(rates, factor) if rates else None
            total = total * factor
            source += f"; batch -{self._cfg.batch_discount_pct}%"
        cost = _cost((inp - cr - cw, cr, cw, out), rates) if rates else _q(total)
        return _Quote(cost, rates, calc.model.id, source), linear


_TOKEN_PRICES = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")


def _flat(model_price: Any) -> bool:
    """True when none of the four token prices is tiered: the call's price is then linear in its token counts."""
    return all(isinstance(getattr(model_price, f, None), Decimal | int | float | type(None)) for f in _TOKEN_PRICES)


_PerToken = tuple[Decimal, Decimal, Decimal, Decimal]
_ZERO = Decimal(0)


def _per_token(rates: ComponentPrice) -> _PerToken:
    """The four rates per token, as _cost applies them: cache tokens of a model with no cache price are input tokens
    at the input price (as genai-prices bills them); a missing rate adds nothing. Exact: dividing by 10^6 only
    moves the exponent."""
    inp = rates.input_per_mtok
    read = rates.cache_read_per_mtok if rates.cache_read_per_mtok is not None else inp
    write = rates.cache_write_per_mtok if rates.cache_write_per_mtok is not None else inp
    a, b, c, d = (_ZERO if r is None else r / _MTOK for r in (inp, read, write, rates.output_per_mtok))
    return a, b, c, d


def _cost(qty: tuple[int, int, int, int], rates: ComponentPrice) -> Decimal:
    """Sum of quantity × rate per component, exact, then rounded once to the ledger's 12 decimals."""
    return _cost_per_token(qty, _per_token(rates))


def _cost_per_token(qty: tuple[int, int, int, int], per_token: _PerToken) -> Decimal:
    # Unrolled, with the per-token rates precomputed for the minute's cached rates: this runs for every call
    # priced, and the loop with a Decimal division per component was twice as slow.
    n_in, n_read, n_write, n_out = qty
    r_in, r_read, r_write, r_out = per_token
    return _q(_ZERO + (n_in * r_in if n_in else 0) + (n_read * r_read if n_read else 0)
              + (n_write * r_write if n_write else 0) + (n_out * r_out if n_out else 0))


def _scale(rates: ComponentPrice | None, factor: Decimal) -> ComponentPrice | None:
    if rates is None:
        return None
    return ComponentPrice(*(None if r is None else _q(r * factor) for r in dataclasses.astuple(rates)))


def _override_rates(o: RateOverride, base: ComponentPrice | None) -> ComponentPrice:
    b = base or ComponentPrice()
    return ComponentPrice(
        input_per_mtok=o.input_per_mtok if o.input_per_mtok is not None else b.input_per_mtok,
        cache_read_per_mtok=o.cache_read_per_mtok if o.cache_read_per_mtok is not None else b.cache_read_per_mtok,
        cache_write_per_mtok=o.cache_write_per_mtok if o.cache_write_per_mtok is not None else b.cache_write_per_mtok,
        output_per_mtok=o.output_per_mtok if o.output_per_mtok is not None else b.output_per_mtok,
    )
