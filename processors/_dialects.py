"""One normalised view (GenAIView) of the GenAI attributes on one span, whichever dialect sent them: OTel GenAI
semconv (current and deprecated names), OpenLLMetry/Traceloop, OpenInference, and provider SDKs' own spans.
"""

from __future__ import annotations

import json
import math
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from receiver import StagedSpan

# ---------------------------------------------------------------------------------------------------------------
# THE INPUT-TOKENS RULE. ``GenAIView.input_tokens`` is always the TOTAL input, cache read and cache write
# included (semconv: gen_ai.usage.input_tokens SHOULD include gen_ai.usage.cache_read.input_tokens and
# gen_ai.usage.cache_creation.input_tokens); ``output_tokens`` includes reasoning. Providers and libraries differ:
# OpenAI's prompt_tokens includes cached_tokens; Anthropic's raw usage.input_tokens EXCLUDES cache_read_input_tokens
# and cache_creation_input_tokens (as does Bedrock Converse inputTokens vs cacheRead/WriteInputTokens); the
# instrumentations in the fixtures (OpenLLMetry anthropic 0.62.4, anthropic SDK 2.12.0) already add them (471 =
# 51 + 300 + 120), and so did older OpenLLMetry anthropic releases under the Anthropic-style key names
# gen_ai.usage.cache_read_input_tokens / cache_creation_input_tokens. A reported input is therefore read as
# INCLUSIVE unless, in this order:
#   1. the span's instrumentation scope is in ``exclusive_input_scopes`` (known to copy provider-raw usage);
#   2. input < cache_read + cache_write: impossible when inclusive, so it is exclusive (noted in ``problems``);
#   3. the scope is not in ``inclusive_input_scopes`` (known to sum already), the cache count came from an
#      Anthropic/Bedrock-raw key (``_RAW_CACHE_KEYS``) and the provider reports raw input that way (anthropic,
#      aws.bedrock, or a Claude model on gcp.vertex_ai).
# Exclusive input gets cache_read + cache_write added. So ``cache_read + cache_write <= input`` always holds, and a
# cached token is billed once, at the cache rate. The same holds for output: reasoning > output means the output
# excluded reasoning (Gemini candidates vs thoughts), and reasoning is added.
# ---------------------------------------------------------------------------------------------------------------

# Instrumentation scopes whose input tokens exclude cache tokens: Strands Agents copies Bedrock Converse
# usage (inputTokens, cacheReadInputTokens, cacheWriteInputTokens) as they are.
DEFAULT_EXCLUSIVE_INPUT_SCOPES: frozenset[str] = frozenset({"strands.telemetry.tracer"})
# Scopes known to report inclusive input even under Anthropic-style cache keys (rule 3 does not apply to them):
# OpenLLMetry anthropic (input = input + cache_read + cache_creation in every release with cache support), the
# anthropic SDK's own spans (fixtures), OpenLLMetry langchain (LangChain usage_metadata includes cache tokens).
DEFAULT_INCLUSIVE_INPUT_SCOPES: frozenset[str] = frozenset(
    {
        "opentelemetry.instrumentation.anthropic",
        "com.anthropic.sdk.python",
        "opentelemetry.instrumentation.langchain",
    }
)

ROLE_INFERENCE = "inference"  # a billable model call
ROLE_AGGREGATE = "aggregate"  # an agent/workflow/chain span whose usage, if any, sums its children
ROLE_TOOL = "tool"
ROLE_OTHER = "other"

MAX_TOKEN_COUNT = 10_000_000_000  # beyond this a "token count" is a cost, a byte size or a timestamp

# Token-count aliases per slot, best first. Semconv first, then deprecated semconv, OpenInference, OpenLLMetry.
_INPUT_KEYS = (
    "gen_ai.usage.input_tokens",  # semconv
    "gen_ai.usage.prompt_tokens",  # semconv, deprecated
    "llm.token_count.prompt",  # OpenInference
    "llm.usage.prompt_tokens",  # OpenLLMetry < 0.40
)
_OUTPUT_KEYS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
    "llm.usage.completion_tokens",
)
_CACHE_READ_KEYS = (
    "gen_ai.usage.cache_read.input_tokens",  # semconv >= 1.40, anthropic SDK, OpenLLMetry >= 0.4x
    "llm.token_count.prompt_details.cache_read",  # OpenInference (a subset of llm.token_count.prompt)
    "gen_ai.usage.cache_read_input_tokens",  # Anthropic-raw style: older OpenLLMetry, Strands, hand-rolled
    "gen_ai.usage.cache_read_tokens",
)
_CACHE_WRITE_KEYS = (
    "gen_ai.usage.cache_creation.input_tokens",  # semconv >= 1.40, OpenLLMetry
    "gen_ai.usage.cache_write.input_tokens",  # anthropic SDK's own spans
    "llm.token_count.prompt_details.cache_write",  # OpenInference
    "gen_ai.usage.cache_creation_input_tokens",  # Anthropic-raw style
    "gen_ai.usage.cache_write_input_tokens",  # Bedrock-raw style (Strands)
    "gen_ai.usage.cache_write_tokens",
)
_REASONING_KEYS = (
    "gen_ai.usage.reasoning.output_tokens",  # semconv >= 1.41
    "llm.token_count.completion_details.reasoning",  # OpenInference
    "gen_ai.usage.reasoning_tokens",  # OpenLLMetry
)
_SLOTS = (_INPUT_KEYS, _OUTPUT_KEYS, _CACHE_READ_KEYS, _CACHE_WRITE_KEYS, _REASONING_KEYS)
_IN, _OUT, _CR, _CW, _RS = range(5)
# Keys named after the provider's raw usage fields; input next to them may be the raw (exclusive) one.
_RAW_CACHE_KEYS = frozenset(
    {
        "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "gen_ai.usage.cache_write_input_tokens",
    }
)
# OpenInference audio details: inside prompt/completion; read only to note that they are priced as text.
_AUDIO_KEYS = ("llm.token_count.prompt_details.audio", "llm.token_count.completion_details.audio")

USAGE_KEYS: frozenset[str] = frozenset(k for keys in _SLOTS for k in keys) | frozenset(_AUDIO_KEYS)
"""Every attribute key read as a token count (totals are not: they are never billed). The receiver validates
these with ``usage_problems``."""

# Keys read below that fall outside the receiver's GenAI prefixes (gen_ai., llm., openinference., traceloop.,
# embedding., ...): the receiver must keep them for service tier, batch, session and agent to reach this module.
EXTRA_KEYS: frozenset[str] = frozenset(
    {
        "openai.request.service_tier",
        "openai.response.service_tier",
        "anthropic.request.service_tier",
        "anthropic.response.service_tier",
        "openai.request.batch",
        "anthropic.request.batch",
        "openai.batch.id",
        "anthropic.batch.id",
        "session.id",
        "agent.name",
        "server.address",
    }
)

_GENAI_PREFIXES = ("gen_ai.", "llm.", "openinference.", "traceloop.", "embedding.")
_MARKER_KEYS = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system", "openinference.span.kind")

# semconv gen_ai.provider.name values, from themselves and from deprecated gen_ai.system values (vertex_ai, gemini,
# az.ai.*, xai), OpenLLMetry's capitalised gen_ai.system ("OpenAI", "Anthropic", "AWS"), OpenInference llm.provider
# (openai, anthropic, azure, google, aws, mistralai, xai, deepseek, cohere) and llm.system (vertexai, mistralai).
_PROVIDERS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "aws.bedrock": "aws.bedrock",
    "aws_bedrock": "aws.bedrock",
    "aws": "aws.bedrock",
    "bedrock": "aws.bedrock",
    "gcp.vertex_ai": "gcp.vertex_ai",
    "vertex_ai": "gcp.vertex_ai",
    "vertexai": "gcp.vertex_ai",
    "gcp.gemini": "gcp.gemini",
    "gemini": "gcp.gemini",
    "gcp.gen_ai": "gcp.gen_ai",
    "google": "gcp.gen_ai",
    "azure.ai.inference": "azure.ai.inference",
    "az.ai.inference": "azure.ai.inference",
    "azure.ai.openai": "azure.ai.openai",
    "az.ai.openai": "azure.ai.openai",
    "azure": "azure.ai.openai",
    "azure_openai": "azure.ai.openai",
    "x_ai": "x_ai",
    "xai": "x_ai",
    "mistral_ai": "mistral_ai",
    "mistralai": "mistral_ai",
    "mistral": "mistral_ai",
    "ibm.watsonx.ai": "ibm.watsonx.ai",
    "watsonx": "ibm.watsonx.ai",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "groq": "groq",
    "perplexity": "perplexity",
    "moonshot_ai": "moonshot_ai",
}
_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")

# semconv gen_ai.operation.name -> role.
_OPERATION_ROLES: dict[str, str] = {
    "chat": ROLE_INFERENCE,
    "text_completion": ROLE_INFERENCE,
    "generate_content": ROLE_INFERENCE,
    "embeddings": ROLE_INFERENCE,
    "rerank": ROLE_INFERENCE,
    "invoke_agent": ROLE_AGGREGATE,
    "invoke_workflow": ROLE_AGGREGATE,
    "create_agent": ROLE_AGGREGATE,
    "plan": ROLE_AGGREGATE,
    "execute_tool": ROLE_TOOL,
    "retrieval": ROLE_TOOL,
}
# OpenInference openinference.span.kind -> (operation, role).
_OPENINFERENCE_KINDS: dict[str, tuple[str | None, str]] = {
    "LLM": ("chat", ROLE_INFERENCE),
    "EMBEDDING": ("embeddings", ROLE_INFERENCE),
    "RERANKER": ("rerank", ROLE_INFERENCE),
    "AGENT": ("invoke_agent", ROLE_AGGREGATE),
    "CHAIN": (None, ROLE_AGGREGATE),
    "TOOL": ("execute_tool", ROLE_TOOL),
    "RETRIEVER": ("retrieval", ROLE_TOOL),
}
# OpenLLMetry traceloop.span.kind (decorators) -> (operation, role).
_TRACELOOP_KINDS: dict[str, tuple[str | None, str]] = {
    "workflow": ("invoke_workflow", ROLE_AGGREGATE),
    "agent": ("invoke_agent", ROLE_AGGREGATE),
    "task": (None, ROLE_AGGREGATE),
    "tool": ("execute_tool", ROLE_TOOL),
}
# OpenLLMetry llm.request.type -> semconv operation.
_LLM_REQUEST_TYPES: dict[str, str] = {
    "chat": "chat",
    "completion": "text_completion",
    "embedding": "embeddings",
    "rerank": "rerank",
    "batch": "chat",
}

_REQUEST_MODEL_KEYS = ("gen_ai.request.model", "llm.request.model")
_RESPONSE_MODEL_KEYS = ("gen_ai.response.model", "llm.response.model", "llm.model_name", "embedding.model_name")
_INVOCATION_KEYS = ("llm.invocation_parameters", "embedding.invocation_parameters")  # OpenInference, JSON
_STREAM_FLAG_KEYS = ("gen_ai.request.stream", "gen_ai.is_streaming", "llm.is_streaming")
_STREAM_EVENTS = frozenset({"First Token Stream Event", "gen_ai.content.completion.chunk"})
# Provider Batch APIs (no semconv attribute yet): a true flag, a batch id, or OpenLLMetry llm.request.type "batch".
BATCH_FLAG_KEYS: tuple[str, ...] = ("gen_ai.request.batch", "openai.request.batch", "anthropic.request.batch")
BATCH_ID_KEYS: tuple[str, ...] = ("gen_ai.batch.id", "openai.batch.id", "anthropic.batch.id")
# The tier that served the call first, then the one requested (semconv openai.*; deprecated gen_ai.openai.*).
_SERVICE_TIER_KEYS = (
    "openai.response.service_tier",
    "gen_ai.openai.response.service_tier",
    "anthropic.response.service_tier",
    "openai.request.service_tier",
    "gen_ai.openai.request.service_tier",
    "anthropic.request.service_tier",
)
_CONVERSATION_KEYS = (
    "gen_ai.conversation.id",  # semconv
    "session.id",  # OpenInference
    "langfuse.session.id",
    "traceloop.association.properties.session_id",  # OpenLLMetry association properties
    "traceloop.association.properties.conversation_id",
    "traceloop.association.properties.thread_id",
    "traceloop.association.properties.chat_id",
)
_AGENT_KEYS = ("gen_ai.agent.name", "agent.name")  # semconv, OpenInference
_WORKFLOW_KEYS = ("gen_ai.workflow.name", "traceloop.workflow.name")


@dataclass(slots=True)  # not frozen: built for every GenAI span, and a frozen __init__ is ~5x slower
class GenAIView:
    is_genai: bool
    role: str  # inference | aggregate | tool | other
    provider: str | None  # semconv gen_ai.provider.name value
    operation: str | None  # semconv gen_ai.operation.name value
    request_model: str | None
    response_model: str | None
    response_id: str | None
    streamed: bool
    batch: bool
    service_tier: str | None
    usage_reported: bool
    input_tokens: int | None  # total input, cache read and write included
    output_tokens: int | None  # total output, reasoning included
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    conversation_id: str | None
    agent_name: str | None
    workflow_name: str | None
    problems: tuple[str, ...]


_NOT_GENAI = GenAIView(
    False, ROLE_OTHER, None, None, None, None, None, False, False, None, False,
    None, None, None, None, None, None, None, None, (),
)


def view_of(
    span: StagedSpan,
    exclusive_input_scopes: Container[str] = DEFAULT_EXCLUSIVE_INPUT_SCOPES,
    inclusive_input_scopes: Container[str] = DEFAULT_INCLUSIVE_INPUT_SCOPES,
) -> GenAIView:
    """The normalised GenAI view of one span; ``is_genai`` is False (and nothing else is read) for other spans."""
    a = span.attributes
    if not _is_genai(a):
        return _NOT_GENAI
    problems: list[str] = []
    operation, role = _classify(a, span.name)
    request_model = _text(a, _REQUEST_MODEL_KEYS)
    response_model = _text(a, _RESPONSE_MODEL_KEYS)

    streamed = False
    for k in _STREAM_FLAG_KEYS:
        if _truthy(a.get(k)):
            streamed = True
            break
    if not streamed and "gen_ai.response.time_to_first_chunk" in a:  # semconv: recorded for streams only
        streamed = True
    if not streamed and span.events:
        streamed = any(e.name in _STREAM_EVENTS for e in span.events)
    # OpenInference keeps the request model (and "stream") only in its JSON invocation parameters: parse it
    # only when the answer is still missing and, for "stream", only when the text mentions it.
    raw = a.get(_INVOCATION_KEYS[0]) or a.get(_INVOCATION_KEYS[1])
    if isinstance(raw, str) and (request_model is None or (not streamed and '"stream"' in raw)):
        params = _json_object(raw)
        if params is not None:
            if request_model is None:
                for k in ("model", "model_name", "model_id"):
                    m = params.get(k)
                    if isinstance(m, str) and m.strip():
                        request_model = m.strip()
                        break
            if params.get("stream") is True:
                streamed = True

    if role is None:
        # No operation/kind at all (e.g. Vercel AI SDK doGenerate spans): a span naming a model is a model call.
        role = ROLE_INFERENCE if (request_model or response_model) else ROLE_OTHER

    provider = _provider(a, request_model or response_model)

    batch = _truthy(a.get(BATCH_FLAG_KEYS[0])) or _truthy(a.get(BATCH_FLAG_KEYS[1])) or _truthy(
        a.get(BATCH_FLAG_KEYS[2])
    )
    if not batch:
        batch = a.get("llm.request.type") == "batch" or _text(a, BATCH_ID_KEYS) is not None

    # Usage: span attributes; when they carry none, the last span event carrying usage.
    usage = _read_usage(a, problems)
    if usage is None and span.events:
        for ev in reversed(span.events):
            usage = _read_usage(ev.attributes, problems)
            if usage is not None:
                break
    vals: list[int | None] = [None] * 5
    usage_reported = False
    if usage is not None:
        vals, keys = usage
        usage_reported = any(v is not None for v in vals)
        if usage_reported:
            scope = span.scope_name or ""
            _normalise(vals, keys, provider, request_model or response_model, scope,
                       exclusive_input_scopes, inclusive_input_scopes, problems)

    workflow = _text(a, _WORKFLOW_KEYS)
    agent = _text(a, _AGENT_KEYS)
    tl_kind = a.get("traceloop.span.kind")
    if tl_kind is not None and (agent is None or workflow is None):
        entity = _text(a, ("traceloop.entity.name",))
        if tl_kind == "agent" and agent is None:
            agent = entity
        elif tl_kind == "workflow" and workflow is None:
            workflow = entity

    # Positional, in field order (each line names its field): keyword arguments cost ~0.05 us each, on every span.
    return GenAIView(
        True,  # is_genai
        role,  # role
        provider,  # provider
        operation,  # operation
        request_model,  # request_model
        response_model,  # response_model
        _text(a, ("gen_ai.response.id",)),  # response_id
        streamed,  # streamed
        batch,  # batch
        _text(a, _SERVICE_TIER_KEYS),  # service_tier
        usage_reported,  # usage_reported
        vals[_IN],  # input_tokens
        vals[_OUT],  # output_tokens
        vals[_CR],  # cache_read_tokens
        vals[_CW],  # cache_write_tokens
        vals[_RS],  # reasoning_tokens
        _text(a, _CONVERSATION_KEYS),  # conversation_id
        agent,  # agent_name
        workflow,  # workflow_name
        tuple(problems),  # problems
    )


def usage_problems(attributes: Mapping[str, object]) -> list[str]:
    """Why the token counts on a span cannot be billed (the receiver rejects such a span): one message per bad
    key, naming the key and the fix. Empty when every token count present is a plausible integer."""
    out: list[str] = []
    for key in USAGE_KEYS.intersection(attributes):  # in C: this runs for every GenAI span received
        v = attributes[key]
        if v is None:
            continue
        if type(v) is int and 0 <= v <= MAX_TOKEN_COUNT:
            continue
        _, why = _parse_count(v)
        if why is not None:
            out.append(f"{key} {why}")
    out.sort()
    return out


# --- internals ---------------------------------------------------------------------------------------------------


def _is_genai(a: Mapping[str, Any]) -> bool:
    for k in _MARKER_KEYS:
        if k in a:
            return True
    for k in a:
        if k.startswith(_GENAI_PREFIXES):
            return True
    return False


def _classify(a: Mapping[str, Any], span_name: str) -> tuple[str | None, str | None]:
    """(semconv operation, role); role None when nothing on the span says what it is."""
    op = a.get("gen_ai.operation.name")
    if isinstance(op, str) and op:
        op = op.strip().lower()
        return op, _OPERATION_ROLES.get(op, ROLE_OTHER)
    kind = a.get("openinference.span.kind")
    if isinstance(kind, str) and kind:
        return _OPENINFERENCE_KINDS.get(kind.strip().upper(), (None, ROLE_OTHER))
    kind = a.get("traceloop.span.kind")
    if isinstance(kind, str) and kind:
        return _TRACELOOP_KINDS.get(kind.strip().lower(), (None, ROLE_OTHER))
    req = a.get("llm.request.type")
    if isinstance(req, str) and req:
        mapped = _LLM_REQUEST_TYPES.get(req.strip().lower())
        return mapped, (ROLE_INFERENCE if mapped else ROLE_OTHER)
    # semconv span name "{gen_ai.operation.name} {gen_ai.request.model}".
    first = span_name.partition(" ")[0]
    role = _OPERATION_ROLES.get(first)
    if role is not None:
        return first, role
    return None, None


def _provider(a: Mapping[str, Any], model: str | None) -> str | None:
    raw = None
    for k in _PROVIDER_KEYS:
        v = a.get(k)
        if isinstance(v, str) and v.strip():
            raw = v
            break
    if raw is None:
        return None
    provider = _PROVIDERS.get(raw)
    if provider is None:
        low = raw.strip().lower()
        provider = _PROVIDERS.get(low, low)
    if provider == "openai":
        # OpenLLMetry and openai-v2 say "openai" for Azure OpenAI too; the endpoint tells them apart.
        host = a.get("gen_ai.openai.api_base") or a.get("server.address")
        if isinstance(host, str) and ".openai.azure.com" in host:
            provider = "azure.ai.openai"
    return provider


def _read_usage(a: Mapping[str, Any], problems: list[str]) -> tuple[list[int | None], list[str | None]] | None:
    """Token counts per slot and the key each came from; None when no usage key is present at all."""
    vals: list[int | None] = [None] * 5
    keys: list[str | None] = [None] * 5
    found = False
    for slot, aliases in enumerate(_SLOTS):
        for k in aliases:
            v = a.get(k)
            if v is None:
                continue
            found = True
            if type(v) is int and 0 <= v <= MAX_TOKEN_COUNT:
                n: int | None = v
            else:
                n, why = _parse_count(v)
                if n is None:
                    problems.append(f"{k} {why}: ignored")
                    continue
            vals[slot] = n
            keys[slot] = k
            break
    if not found:
        return None
    for k in _AUDIO_KEYS:
        n, _ = _parse_count(a.get(k))
        if n:
            problems.append(f"{k} is {n}: audio tokens are inside the input/output counts and priced as text here")
    return vals, keys


def _normalise(
    vals: list[int | None],
    keys: list[str | None],
    provider: str | None,
    model: str | None,
    scope: str,
    exclusive_scopes: Container[str],
    inclusive_scopes: Container[str],
    problems: list[str],
) -> None:
    """Apply the input-tokens rule (top of module) in place: input includes cache, output includes reasoning."""
    inp, out, cr, cw, rs = vals
    cache = (cr or 0) + (cw or 0)
    exclusive = False
    if cache:
        if scope in exclusive_scopes:
            exclusive = True
        elif inp is not None and inp < cache:
            exclusive = True
            problems.append(
                f"input tokens ({inp}) < cache read + cache write ({cache}): read as excluding cache "
                f"(Anthropic API style), input taken as {inp + cache}"
            )
        elif (
            scope not in inclusive_scopes
            and (keys[_CR] in _RAW_CACHE_KEYS or keys[_CW] in _RAW_CACHE_KEYS)
            and _raw_input_excludes_cache(provider, model)
        ):
            exclusive = True
        if exclusive:
            vals[_IN] = (inp or 0) + cache
        elif inp is None:
            vals[_IN] = cache
            problems.append(f"no input token count next to {cache} cache tokens: input taken as {cache}")
    if rs is not None and (out is None or rs > out):
        if out is not None:
            problems.append(
                f"reasoning tokens ({rs}) > output tokens ({out}): read as excluding reasoning, output taken as "
                f"{out + rs}"
            )
        vals[_OUT] = (out or 0) + rs


def _raw_input_excludes_cache(provider: str | None, model: str | None) -> bool:
    """Providers whose raw usage reports input without cache tokens: Anthropic Messages (also on Vertex AI),
    Bedrock (Converse inputTokens; InvokeModel with Anthropic bodies)."""
    if provider == "anthropic" or provider == "aws.bedrock":
        return True
    return provider == "gcp.vertex_ai" and model is not None and "claude" in model.lower()


def _parse_count(v: object) -> tuple[int | None, str | None]:
    """(count, None) for a plausible token count; (None, why-and-fix) otherwise; (None, None) when absent."""
    if v is None:
        return None, None
    if isinstance(v, bool):
        return None, f"is a boolean ({v}): send the token count as an integer"
    if isinstance(v, int):
        n = v
    elif isinstance(v, float):
        if math.isnan(v):
            return None, "is NaN: send a finite integer token count"
        if math.isinf(v):
            return None, f"is infinite ({v}): send a finite integer token count"
        if not v.is_integer():
            return None, f"is not a whole number ({v!r}): send an integer token count"
        n = int(v)
    elif isinstance(v, str):
        s = v.strip()
        try:
            n = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                shown = v if len(v) <= 40 else v[:40] + "..."
                return None, f"is not an integer ({shown!r}): send the token count as an integer (OTLP intValue)"
            return _parse_count(f)
    else:
        return None, f"is a {type(v).__name__}, not a number: send the token count as an integer"
    if n < 0:
        return None, f"is negative ({n}): send a count >= 0"
    if n > MAX_TOKEN_COUNT:
        return None, (
            f"is implausibly large ({n} > {MAX_TOKEN_COUNT}): send the real token count (not a cost, byte size "
            "or timestamp)"
        )
    return n, None


def _text(a: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for k in keys:
        v = a.get(k)
        if v is None or isinstance(v, bool | list):
            continue
        s = (v if isinstance(v, str) else str(v)).strip()
        if s:
            return s
    return None


def _truthy(v: object) -> bool:
    if v is True:
        return True
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1")
    return False


def _json_object(raw: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
