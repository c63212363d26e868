"""A small engine API in the JetStream manner: prefill, insert, generate over fixed decode slots.

All device work is jitted pure functions over an explicit ``DecodeState``; this class only picks
shapes (prefill and KV-cache buckets) and moves results to the host. It is not thread-safe: one
batch loop owns it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from engine import model, topk
from engine.config import EngineConfig, ModelConfig
from engine.continuation import prefill_after
from engine.prefix_cache import PrefixCacheStats, PrefixIndex
from engine.sampling import (
    SamplingState,
    Selection,
    allow_only,
    greedy,
    greedy_selection,
    select,
)
from engine.weights import Params

PROMPT_CHUNK = 64  # rows of prompt logits materialised at once for echo/logprobs


class DecodeState(NamedTuple):
    """Everything the decode step reads and writes, for all slots at once."""

    k: tuple[jax.Array, ...]  # per layer [S, KV, hd, T]: keys position-last (decode_hidden)
    v: tuple[jax.Array, ...]  # per layer [S, T, KV, hd]; T is the current KV bucket
    tokens: jax.Array  # [S] next input token per slot
    positions: jax.Array  # [S] its position (= entries already in the cache)
    active: jax.Array  # [S] bool
    sampling: SamplingState


@dataclass(frozen=True)
class Prefix:
    """A prefilled prompt, ready to be inserted into a slot (possibly several, for ``n``)."""

    k: tuple[jax.Array, ...]  # per layer [B, KV, hd], B the prefill bucket
    v: tuple[jax.Array, ...]
    hidden: jax.Array  # [B, D] final-normed, for prompt logprobs ([0, D] unless whole)
    last_logits: jax.Array  # [1, V]
    tokens: tuple[int, ...]
    cached: int = 0  # leading tokens whose KV came from the prefix cache


@dataclass
class PrefillJob:
    """A prompt being prefilled a chunk at a time (``GemmaEngine.begin_prefill``).

    ``k``/``v`` hold the prompt's KV per layer [span, KV, hd]: positions below ``done`` are
    computed (or came from the prefix cache), the rest is filled by later chunks.
    """

    tokens: tuple[int, ...]
    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    done: int
    cached: int = 0  # leading tokens whose KV came from the prefix cache
    last_logits: jax.Array | None = None

    @property
    def finished(self) -> bool:
        """Every prompt token has been computed."""
        return self.done >= len(self.tokens)


@dataclass(frozen=True)
class SlotSampling:
    """Sampling parameters of one generation, as inserted into a slot."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    key: tuple[int, int] = (0, 0)  # raw threefry key data


@dataclass(frozen=True)
class StepOutput:
    """Host copy of one step's selection for every slot."""

    tokens: np.ndarray
    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray


def seed_key(seed: int, index: int = 0) -> tuple[int, int]:
    """The raw PRNG key a seeded request uses; ``index`` separates the ``n`` choices."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed % (1 << 63)), index)
    data = np.asarray(jax.random.key_data(key), dtype=np.uint32)
    return int(data[0]), int(data[1])


def _bucket(buckets: Sequence[int], n: int) -> int:
    index = bisect.bisect_left(buckets, n)
    if index == len(buckets):
        raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")
    return buckets[index]


class GemmaEngine:
    """Gemma prefill/insert/generate over ``decode_slots`` slots and bucketed shapes."""

    def __init__(self, config: ModelConfig, params: Params, engine_config: EngineConfig) -> None:
        self.config = config
        self.params = params
        self.engine_config = engine_config
        self.max_slots = engine_config.decode_slots  # requests decoded at once
        # Rows a decode step takes: never one where XLA does the products (a one-row bf16/int8
        # matmul is pathologically slow on XLA:CPU, 10x at one slot; a spare row idles
        # instead); one is fine for the int8 kernels, which stream each weight row once.
        self._min_rows = 1 if model.uses_kernels(params) else 2
        self._state_rows = max(self._min_rows, self.max_slots)
        self.prefill_buckets = tuple(sorted(engine_config.prefill_buckets))
        self.kv_buckets = tuple(sorted(engine_config.kv_buckets))
        embed = params["embed"]
        weights_dtype = embed.values.dtype if hasattr(embed, "values") else embed.dtype
        # bfloat16 entries are stored as their uint16 bits (see model.store_kv).
        self.kv_storage = jnp.float32 if weights_dtype == jnp.float32 else jnp.uint16
        self._prefill = jax.jit(partial(_prefill, config, self.kv_storage))
        self._prompt_lp = jax.jit(partial(_prompt_logprobs, config), static_argnums=3)
        self._first = jax.jit(_first_token, static_argnums=2)
        self._insert = jax.jit(_insert, donate_argnums=0)
        self._generate = jax.jit(
            partial(_generate, config), static_argnums=(2, 3), donate_argnums=1
        )
        self._resize = jax.jit(_resize, static_argnums=1)
        self._init_prefix_cache()

    def _init_prefix_cache(self) -> None:
        """The pool of cached prompt blocks ([blocks, block_tokens, KV, hd] per layer)."""
        c, block = self.config, self.engine_config.prefix_block_tokens
        blocks = self.engine_config.prefix_cache_tokens // block
        self.prefix_index = PrefixIndex(blocks, block) if blocks else None
        shape = (blocks, block, c.n_kv_heads, c.head_dim)
        self._pool_k = tuple(jnp.zeros(shape, self.kv_storage) for _ in range(c.n_layers))
        self._pool_v = tuple(jnp.zeros(shape, self.kv_storage) for _ in range(c.n_layers))
        self._gather = jax.jit(_gather_blocks)
        self._chunk = jax.jit(partial(_prefill_chunk, self.config), donate_argnums=(1, 2))
        self._store = jax.jit(partial(_store_blocks, block), donate_argnums=(0, 1))

    # -- state ---------------------------------------------------------------------------

    def init_state(self, capacity: int | None = None) -> DecodeState:
        """Empty slots with the smallest KV bucket (or the one covering ``capacity``)."""
        c = self.config
        t = _bucket(self.kv_buckets, capacity or 1)
        shape = (self._state_rows, t, c.n_kv_heads, c.head_dim)
        keys = (self._state_rows, c.n_kv_heads, c.head_dim, t)
        s = self._state_rows
        sampling = SamplingState(
            temperature=jnp.zeros(s, jnp.float32),
            top_p=jnp.ones(s, jnp.float32),
            top_k=jnp.zeros(s, jnp.int32),
            keys=jnp.zeros((s, 2), jnp.uint32),
            steps=jnp.zeros(s, jnp.int32),
        )
        return DecodeState(
            k=tuple(jnp.zeros(keys, self.kv_storage) for _ in range(c.n_layers)),
            v=tuple(jnp.zeros(shape, self.kv_storage) for _ in range(c.n_layers)),
            tokens=jnp.zeros(s, jnp.int32),
            positions=jnp.zeros(s, jnp.int32),
            active=jnp.zeros(s, jnp.bool_),
            sampling=sampling,
        )

    def capacity(self, state: DecodeState) -> int:
        """Positions per slot in the current KV bucket."""
        return int(state.v[0].shape[model.VALUE_POSITIONS])

    def fit_capacity(self, state: DecodeState, needed: int) -> DecodeState:
        """Grow the KV cache to the bucket holding ``needed`` positions; shrink when far larger."""
        target = _bucket(self.kv_buckets, max(needed, 1))
        current = self.capacity(state)
        if target > current or target * 2 <= current:
            return self._resize(state, target)
        return state

    # -- the engine API --------------------------------------------------------------------

    def prefill(self, tokens: Sequence[int]) -> Prefix:
        """Run the prompt through the model at its bucketed length."""
        n = len(tokens)
        bucket = _bucket(self.prefill_buckets, n)
        padded = np.zeros(bucket, np.int32)
        padded[:n] = tokens
        hidden, k, v, last = self._prefill(self.params, jnp.asarray(padded), jnp.int32(n))
        return Prefix(tuple(k), tuple(v), hidden, last, tuple(tokens))

    def prefill_reusing(self, tokens: Sequence[int], reuse: bool = True) -> Prefix:
        """``prefill`` through the prefix cache: the longest cached block prefix is not computed
        again (unless ``reuse`` is False), and the prompt's blocks are cached for later ones.

        A reused prefix is computed as one chunk after the cached blocks (``begin_prefill``),
        so it has no prompt rows' hidden states (prompt logprobs do not reuse).
        """
        index = self.prefix_index
        if index is None:
            return self.prefill(tokens)
        rows = index.match(tokens) if reuse else []
        if rows:
            job = self._job(tokens, rows)
            self.advance(job, len(tokens) - job.done)
            return self.finish(job)
        prefix = self.prefill(tokens)
        self._cache(prefix, index)
        return prefix

    def begin_prefill(self, tokens: Sequence[int]) -> PrefillJob:
        """Start prefilling ``tokens`` in chunks (``advance``), from the longest cached prefix.

        The result, once finished (``finish``), is what ``prefill_reusing`` returns, without
        the prompt rows' hidden states (chunked prompts never need prompt logprobs).
        """
        index = self.prefix_index
        return self._job(tokens, index.match(tokens) if index is not None else [])

    def _job(self, tokens: Sequence[int], rows: list[int]) -> PrefillJob:
        """A prefill of ``tokens`` whose first blocks are the cached pool ``rows``.

        Its KV buffers have a bucketed length, so few shapes compile, rounded up to whole
        blocks, so the cached rows drop in as they are.
        """
        block = self.engine_config.prefix_block_tokens
        span = -(-_bucket(self.prefill_buckets, len(tokens)) // block) * block
        if rows:
            # Padding rows take pool row 0: later positions are computed over or masked.
            gathered = np.zeros(span // block, np.int32)
            gathered[: len(rows)] = rows
            k, v = self._gather(self._pool_k, self._pool_v, jnp.asarray(gathered))
        else:
            c = self.config
            shape = (span, c.n_kv_heads, c.head_dim)
            k = [jnp.zeros(shape, self.kv_storage) for _ in range(c.n_layers)]
            v = [jnp.zeros(shape, self.kv_storage) for _ in range(c.n_layers)]
        start = len(rows) * block
        return PrefillJob(tuple(tokens), tuple(k), tuple(v), done=start, cached=start)

    def advance(self, job: PrefillJob, chunk_tokens: int) -> None:
        """Compute the next ``chunk_tokens`` of ``job``'s prompt (fewer at its end)."""
        fresh = min(chunk_tokens, len(job.tokens) - job.done)
        padded = np.zeros(_bucket(self.prefill_buckets, chunk_tokens), np.int32)
        padded[:fresh] = job.tokens[job.done : job.done + fresh]
        k, v, last = self._chunk(
            self.params, job.k, job.v, jnp.asarray(padded), jnp.int32(job.done), jnp.int32(fresh)
        )
        job.k, job.v, job.last_logits = tuple(k), tuple(v), last
        job.done += fresh

    def finish(self, job: PrefillJob) -> Prefix:
        """The prefilled prompt of a finished ``job``; its blocks join the prefix cache."""
        assert job.finished and job.last_logits is not None
        empty = jnp.zeros((0, self.config.d_model), jnp.float32)
        prefix = Prefix(job.k, job.v, empty, job.last_logits, job.tokens, cached=job.cached)
        if self.prefix_index is not None:
            self._cache(prefix, self.prefix_index)
        return prefix

    def compile_chunks(self, chunk_tokens: int) -> None:
        """Compile the chunked prefill for every prompt bucket it can serve (one chunk each),
        so that the first long prompt does not stall the running streams while it compiles."""
        for span in self.prefill_buckets:
            if chunk_tokens < span <= self.engine_config.max_context:
                self.advance(self.begin_prefill([0] * span), chunk_tokens)

    def prefix_stats(self) -> PrefixCacheStats:
        """The prefix cache's counts (all zero when it is off)."""
        return self.prefix_index.stats() if self.prefix_index else PrefixCacheStats()

    def _cache(self, prefix: Prefix, index: PrefixIndex) -> None:
        """Count the prompt's lookup and keep its uncached full blocks."""
        index.record(len(prefix.tokens), prefix.cached)
        self._remember(prefix, index)

    def _remember(self, prefix: Prefix, index: PrefixIndex) -> None:
        """Copy the prompt's uncached full blocks into the pool."""
        blocks, rows = index.admit(prefix.tokens)
        if not blocks:
            return
        width = -(-prefix.k[0].shape[0] // index.block_tokens)
        src = np.zeros(width, np.int32)
        dst = np.full(width, self._pool_k[0].shape[0], np.int32)  # past the pool: dropped
        src[: len(blocks)] = blocks
        dst[: len(rows)] = rows
        self._pool_k, self._pool_v = self._store(
            self._pool_k, self._pool_v, prefix.k, prefix.v, jnp.asarray(src), jnp.asarray(dst)
        )

    def first_token(
        self,
        prefix: Prefix,
        sampling: SlotSampling,
        n_top: int,
        allowed: np.ndarray | None = None,
    ) -> StepOutput:
        """Choose the first completion token from the prefill's last logits.

        ``allowed`` ([1, words], see ``allow_all``) limits the choice to the tokens it marks.
        """
        state = _sampling_rows([sampling])
        return _to_host(self._first(prefix.last_logits, state, n_top, allowed))

    def insert(
        self, state: DecodeState, prefix: Prefix, slot: int, token: int, sampling: SlotSampling
    ) -> DecodeState:
        """Copy the prefix's KV entries into ``slot`` and arm it to decode from ``token``."""
        state = self.fit_capacity(state, max(len(prefix.tokens) + 1, self._needed(state)))
        rows = _sampling_rows([sampling])
        return self._insert(
            state,
            prefix.k,
            prefix.v,
            jnp.int32(slot),
            jnp.int32(token),
            jnp.int32(len(prefix.tokens)),
            rows,
        )

    def release(self, state: DecodeState, slot: int) -> DecodeState:
        """Mark ``slot`` free; its cache rows are simply overwritten by the next insert."""
        return state._replace(active=state.active.at[slot].set(False))

    def generate(
        self,
        state: DecodeState,
        n_top: int = 0,
        full: bool = True,
        allowed: np.ndarray | None = None,
    ) -> tuple[DecodeState, StepOutput]:
        """One decode step for every slot; ``full=False`` is greedy without logprobs.

        ``allowed`` (from ``allow_all``, narrowed per constrained slot) limits each slot's
        choice; logprobs are then those of the limited distribution. None costs nothing.
        """
        state = self.fit_capacity(state, self._needed(state))
        rows = self._rows(state)
        state, selection = self._generate(
            self.params,
            state,
            n_top if full else -1,
            rows,
            None if allowed is None else allowed[:rows],
        )
        return state, _to_host(selection)

    def compiled_step_text(self, state: DecodeState) -> str:
        """The compiled greedy step for ``state``'s shape, as XLA's text (for profiling)."""
        rows = self._rows(state)
        return str(self._generate.lower(self.params, state, -1, rows, None).compile().as_text())

    def allow_all(self, rows: int | None = None) -> np.ndarray:
        """A host token bitmask allowing every token, one row per slot (or ``rows`` rows).

        Token ``t`` is bit ``t % 32`` of int32 word ``t // 32``, as llguidance writes masks.
        """
        words = (self.config.vocab_size + 31) // 32
        return np.full((rows or self._state_rows, words), -1, np.int32)

    def _rows(self, state: DecodeState) -> int:
        """Slots to step: a power of two (at least ``_min_rows``) covering the highest active
        slot."""
        active = np.flatnonzero(np.asarray(state.active))
        highest = int(active[-1]) + 1 if active.size else 1
        rows = self._min_rows
        while rows < highest:
            rows *= 2
        return min(rows, self._state_rows)

    def prompt_logprobs(self, prefix: Prefix, n_top: int) -> StepOutput:
        """Logprob of each prompt token given those before it (row i predicts token i + 1)."""
        if prefix.cached:  # its hidden states start after the cached tokens
            raise ValueError("prompt logprobs need a prefill that computed the whole prompt")
        tokens = np.asarray(prefix.tokens, np.int32)
        targets = np.zeros(prefix.hidden.shape[0], np.int32)
        targets[: len(tokens) - 1] = tokens[1:]
        parts: list[StepOutput] = []
        for start in range(0, max(len(tokens) - 1, 1), PROMPT_CHUNK):
            rows = prefix.hidden[start : start + PROMPT_CHUNK]
            chunk_targets = jnp.asarray(targets[start : start + PROMPT_CHUNK])
            if rows.shape[0] < PROMPT_CHUNK:  # keep one compiled shape
                pad = PROMPT_CHUNK - rows.shape[0]
                rows = jnp.pad(rows, ((0, pad), (0, 0)))
                chunk_targets = jnp.pad(chunk_targets, (0, pad))
            parts.append(_to_host(self._prompt_lp(self.params, rows, chunk_targets, n_top)))
        count = len(tokens) - 1
        return StepOutput(
            tokens=tokens[1:],
            logprobs=np.concatenate([p.logprobs for p in parts])[:count],
            top_ids=np.concatenate([p.top_ids for p in parts])[:count],
            top_logprobs=np.concatenate([p.top_logprobs for p in parts])[:count],
        )

    def _needed(self, state: DecodeState) -> int:
        active = np.asarray(state.active)
        if not active.any():
            return 1
        return int(np.asarray(state.positions)[active].max()) + 1


# -- jitted pure functions -----------------------------------------------------------------


def _prefill(
    config: ModelConfig, kv_storage: Any, params: Params, tokens: jax.Array, length: jax.Array
) -> tuple[jax.Array, list[jax.Array], list[jax.Array], jax.Array]:
    hidden, k, v = model.prefill(config, params, tokens, length)
    k = [model.store_kv(layer, kv_storage) for layer in k]
    v = [model.store_kv(layer, kv_storage) for layer in v]
    return hidden, k, v, _last_logits(config, params, hidden, length)


def _last_logits(
    config: ModelConfig, params: Params, hidden: jax.Array, length: jax.Array
) -> jax.Array:
    last = jax.lax.dynamic_slice_in_dim(hidden, length - 1, 1)
    # Two identical rows: a one-row bf16/int8 matmul is pathologically slow on XLA:CPU.
    return model.unembed(config, params, jnp.concatenate([last, last]))[:1]


def _gather_blocks(
    pool_k: tuple[jax.Array, ...], pool_v: tuple[jax.Array, ...], rows: jax.Array
) -> tuple[list[jax.Array], list[jax.Array]]:
    """A prompt's KV buffers [rows x block, KV, hd]: the pool ``rows`` in order."""

    def gather(pool: jax.Array) -> jax.Array:
        picked = pool[rows]  # [blocks, block, KV, hd]
        return picked.reshape(-1, *picked.shape[2:])

    return [gather(p) for p in pool_k], [gather(p) for p in pool_v]


def _prefill_chunk(
    config: ModelConfig,
    params: Params,
    past_k: tuple[jax.Array, ...],
    past_v: tuple[jax.Array, ...],
    tokens: jax.Array,
    start: jax.Array,
    length: jax.Array,
) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
    """Prefill ``length`` of ``tokens`` at ``start`` into the prompt's buffers; the logits
    after the last of them."""
    hidden, k, v = prefill_after(config, params, past_k, past_v, tokens, start)
    return k, v, _last_logits(config, params, hidden, length)


def _store_blocks(
    block: int,
    pool_k: tuple[jax.Array, ...],
    pool_v: tuple[jax.Array, ...],
    k: tuple[jax.Array, ...],
    v: tuple[jax.Array, ...],
    src: jax.Array,
    dst: jax.Array,
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """Write the prompt's blocks ``src`` into pool rows ``dst`` (rows past the pool: none)."""

    def put(pool: jax.Array, entries: jax.Array) -> jax.Array:
        width = src.shape[0] * block
        entries = jnp.pad(entries, ((0, width - entries.shape[0]), (0, 0), (0, 0)))
        blocks = entries.reshape(src.shape[0], block, *entries.shape[1:])
        return pool.at[dst].set(blocks[src], mode="drop")

    return (
        tuple(put(p, e) for p, e in zip(pool_k, k, strict=True)),
        tuple(put(p, e) for p, e in zip(pool_v, v, strict=True)),
    )


def _prompt_logprobs(
    config: ModelConfig, params: Params, hidden: jax.Array, targets: jax.Array, n_top: int
) -> Selection:
    logits = model.unembed(config, params, hidden)
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    chosen = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0] - lse[:, 0]
    top_vals, top_ids = topk.top_k(logits, max(n_top, 1))
    return Selection(
        targets, chosen, top_ids[:, :n_top], (top_vals - lse)[:, :n_top]
    )


def _first_token(
    logits: jax.Array, sampling: SamplingState, n_top: int, allowed: jax.Array | None
) -> Selection:
    if allowed is not None:
        logits = allow_only(logits, allowed)
    return select(logits, sampling, n_top)


def _insert(
    state: DecodeState,
    k: tuple[jax.Array, ...],
    v: tuple[jax.Array, ...],
    slot: jax.Array,
    token: jax.Array,
    length: jax.Array,
    sampling: SamplingState,
) -> DecodeState:
    capacity = state.v[0].shape[model.VALUE_POSITIONS]
    start = (slot, 0, 0, 0)

    def put(cache: jax.Array, entries: jax.Array, keys: bool) -> jax.Array:
        # The host made sure the prompt fits; bucket padding past capacity is cut off. Keys
        # go position-last, as the decode step keeps them ([T, KV, hd] -> [KV, hd, T]).
        fitted = entries[:capacity]
        return jax.lax.dynamic_update_slice(
            cache, (fitted.transpose(1, 2, 0) if keys else fitted)[None], start
        )

    rows = jax.tree.map(
        lambda all_rows, row: all_rows.at[slot].set(row[0]), state.sampling, sampling
    )
    return DecodeState(
        k=tuple(put(c, e, keys=True) for c, e in zip(state.k, k, strict=True)),
        v=tuple(put(c, e, keys=False) for c, e in zip(state.v, v, strict=True)),
        tokens=state.tokens.at[slot].set(token),
        positions=state.positions.at[slot].set(length),
        active=state.active.at[slot].set(True),
        sampling=rows._replace(steps=rows.steps.at[slot].set(1)),
    )


def _generate(
    config: ModelConfig,
    params: Params,
    state: DecodeState,
    n_top: int,
    rows: int,
    allowed: jax.Array | None,
) -> tuple[DecodeState, Selection]:
    tokens, positions, active = state.tokens[:rows], state.positions[:rows], state.active[:rows]
    sampling = jax.tree.map(lambda a: a[:rows], state.sampling)
    hidden, k, v = model.decode_hidden(config, params, state.k, state.v, tokens, positions)
    if n_top < 0 and allowed is None:  # greedy, unconstrained: no full row of logits is built
        selection = greedy_selection(model.greedy_tokens(params, hidden))
    else:
        logits = model.unembed(config, params, hidden)
        if allowed is not None:  # traced only for steps with a constrained slot
            logits = allow_only(logits, allowed)
        selection = greedy(logits) if n_top < 0 else select(logits, sampling, n_top)
    step = active.astype(jnp.int32)
    new_tokens = jnp.where(active, selection.tokens, tokens)
    steps = state.sampling.steps.at[:rows].add(step)
    new_state = DecodeState(
        k=tuple(k),
        v=tuple(v),
        tokens=state.tokens.at[:rows].set(new_tokens),
        positions=state.positions.at[:rows].add(step),
        active=state.active,
        sampling=state.sampling._replace(steps=steps),
    )
    return new_state, selection


def _resize(state: DecodeState, capacity: int) -> DecodeState:
    def fit(cache: jax.Array, axis: int) -> jax.Array:
        current = cache.shape[axis]
        if capacity > current:
            widths = [(0, 0)] * cache.ndim
            widths[axis] = (0, capacity - current)
            return jnp.pad(cache, widths)
        return jax.lax.slice_in_dim(cache, 0, capacity, axis=axis)

    return state._replace(
        k=tuple(fit(c, model.KEY_POSITIONS) for c in state.k),
        v=tuple(fit(c, model.VALUE_POSITIONS) for c in state.v),
    )


def _sampling_rows(rows: Sequence[SlotSampling]) -> SamplingState:
    return SamplingState(
        temperature=jnp.asarray([r.temperature for r in rows], jnp.float32),
        top_p=jnp.asarray([r.top_p for r in rows], jnp.float32),
        top_k=jnp.asarray([r.top_k for r in rows], jnp.int32),
        keys=jnp.asarray([r.key for r in rows], jnp.uint32),
        steps=jnp.zeros(len(rows), jnp.int32),
    )


def _to_host(selection: Selection) -> StepOutput:
    tokens, logprobs, top_ids, top_lp = jax.device_get(tuple(selection))
    return StepOutput(
        np.asarray(tokens), np.asarray(logprobs), np.asarray(top_ids), np.asarray(top_lp)
    )
