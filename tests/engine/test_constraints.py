"""Constrained decoding on a tiny random Gemma: answers keep to their grammar, others unmoved."""

from __future__ import annotations

import json
import math
import queue
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine.chat import render_gemma_chat
from engine.config import EngineConfig
from engine.constraints import Constraint, compile_grammar
from engine.loading import LoadedModel
from engine.runtime import run_to_end, start_server
from engine.serving import Chunk, GenerationParams, GenerationServer

PROMPTS = ["Hello there, how are", "def add(a, b):\n", "The quick brown fox", "1 2 3"]
ANSWER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


def submit(server: GenerationServer, prompt: str, params: GenerationParams) -> queue.Queue:
    inbox: queue.Queue[Chunk | BaseException] = queue.Queue()
    server.submit(prompt, params, inbox.put)
    return inbox


def drain(inbox: queue.Queue, choices: int = 1) -> list[Chunk]:
    chunks: list[Chunk] = []
    while choices:
        item = inbox.get(timeout=120)
        assert not isinstance(item, BaseException), item
        chunks.append(item)
        choices -= item.finish_reason is not None
    return chunks


def text_of(chunks: list[Chunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index)


def tokens_of(chunks: list[Chunk], index: int = 0) -> list[int]:
    return [t for c in chunks if c.index == index for t in c.token_ids]


def finish_of(chunks: list[Chunk], index: int = 0) -> str | None:
    return next(c.finish_reason for c in chunks if c.index == index and c.finish_reason)


def bounded_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A random schema whose every answer is short, so a random model finishes it."""
    kinds = ["integer", "number", "string", "enum", "boolean", "array"]
    if depth < 1:
        kinds.append("object")
    kind = rng.choice(kinds)
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 500)}
    if kind == "number":
        return {"type": "number", "minimum": -10, "maximum": 10}
    if kind == "string":
        return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(3, 6)}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", 7, None, True], rng.randint(1, 4))}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "array":
        items = rng.choice([{"type": "boolean"}, {"enum": ["x", "y"]}])
        return {"type": "array", "items": items, "minItems": rng.randint(0, 1), "maxItems": 3}
    names = rng.sample(["id", "name", "price", "ok", "size", "kind"], rng.randint(1, 3))
    properties = {name: bounded_schema(rng, depth + 1) for name in names}
    required = [n for n in names if rng.random() < 0.7]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def seeded_schemas(count: int, seed: int = 16) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    schemas = []
    while len(schemas) < count:
        schema = bounded_schema(rng)
        if schema.get("type") == "object":
            schemas.append(schema)
    return schemas


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "foo"}, "Invalid type"),
        ({"not": {"type": "string"}}, "Unimplemented keys"),
        ({"type": "string", "pattern": "(unclosed"}, "regex"),
        ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "does not exist"),
        ({"minimum": "zero"}, "minimum"),
        ({"enum": [float("nan")]}, "not JSON"),
    ],
)
def test_an_unusable_schema_is_refused_with_its_reason(
    tiny_server: GenerationServer, schema: dict[str, Any], reason: str
) -> None:
    params = GenerationParams(constraint=Constraint(schema))
    with pytest.raises(ValueError, match=reason):
        tiny_server.submit(PROMPTS[0], params, lambda _: None)
    with pytest.raises(ValueError, match=reason):
        compile_grammar(Constraint(schema, or_text=True))
    assert tiny_server.load().waiting == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_constrained_answers_are_valid_against_their_schemas(
    tiny_server: GenerationServer,
) -> None:
    schemas = seeded_schemas(6)
    inboxes = []
    for i, schema in enumerate(schemas):
        # Greedy and sampled both, two choices of one request, all sharing the batch.
        params = GenerationParams(
            max_tokens=120,
            temperature=0.0 if i % 2 else 1.0,
            seed=i,
            n=2 if i == 0 else 1,
            constraint=Constraint(schema),
        )
        inboxes.append((schema, params.n, submit(tiny_server, PROMPTS[i % 4], params)))
    for schema, choices, inbox in inboxes:
        chunks = drain(inbox, choices)
        for index in range(choices):
            text = text_of(chunks, index)
            assert finish_of(chunks, index) == "stop", text
            jsonschema.validate(json.loads(text), schema)
            # Complete answers end without a stop token: the grammar allowed nothing more.
            assert tiny_server.tokenizer.decode(tokens_of(chunks, index)) == text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unconstrained_neighbours_get_the_same_tokens(tiny_server: GenerationServer) -> None:
    plain = [
        GenerationParams(max_tokens=20, temperature=0.0),
        GenerationParams(max_tokens=20, temperature=1.0, seed=7, logprobs=2),
    ]
    alone = [tokens_of(run_to_end(tiny_server, PROMPTS[i], p)) for i, p in enumerate(plain)]
    # Twenty items cannot fit in 30 tokens: the constrained rows, started first, outlive the
    # plain ones, so every decode step of the plain rows is a masked step.
    many = {"type": "array", "items": {"type": "boolean"}, "minItems": 20}
    constrained = GenerationParams(max_tokens=30, seed=3, constraint=Constraint(many))
    neighbours = [submit(tiny_server, PROMPTS[i + 2], constrained) for i in range(2)]
    inboxes = [submit(tiny_server, PROMPTS[i], p) for i, p in enumerate(plain)]
    together = [tokens_of(drain(inbox)) for inbox in inboxes]
    for inbox in neighbours:
        chunks = drain(inbox)
        assert finish_of(chunks) == "length" and text_of(chunks).startswith("[")
    assert together == alone


@pytest.mark.timeout(120)
def test_a_complete_answer_stops_before_max_tokens(tiny_server: GenerationServer) -> None:
    schema = {"enum": ["yes", "no"]}
    params = GenerationParams(
        max_tokens=50, temperature=0.0, stop_token_ids=(), constraint=Constraint(schema)
    )
    chunks = run_to_end(tiny_server, PROMPTS[0], params)
    assert chunks[-1].finish_reason == "stop"
    assert json.loads(text_of(chunks)) in ("yes", "no")
    assert chunks[-1].completion_tokens < 50


@pytest.mark.timeout(120)
def test_running_out_of_tokens_ends_with_length(tiny_server: GenerationServer) -> None:
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    params = GenerationParams(max_tokens=6, temperature=0.0, constraint=Constraint(schema))
    chunks = run_to_end(tiny_server, PROMPTS[2], params)
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 6
    assert text_of(chunks).startswith('{"story": "')


@pytest.mark.timeout(120)
def test_logprobs_are_of_the_masked_distribution(tiny_server: GenerationServer) -> None:
    # One allowed value: every token is forced, so it is certain and has no alternatives.
    params = GenerationParams(
        max_tokens=10,
        temperature=1.0,
        seed=1,
        logprobs=3,
        constraint=Constraint({"enum": ["tollgate"]}),
    )
    chunks = run_to_end(tiny_server, PROMPTS[1], params)
    assert text_of(chunks) == '"tollgate"'
    infos = [info for c in chunks for info in c.logprobs or ()]
    assert infos and all(math.isclose(i.logprob or 0.0, 0.0, abs_tol=1e-5) for i in infos)
    assert all(len(i.top) == 1 and i.top[0][0] == i.token_id for i in infos)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_or_text_lets_free_text_through_unchanged(tiny_server: GenerationServer) -> None:
    tokenizer = tiny_server.tokenizer
    free = GenerationParams(max_tokens=12, temperature=0.0)
    either = GenerationParams(
        max_tokens=12, temperature=0.0, constraint=Constraint(ANSWER, or_text=True)
    )
    checked = 0
    for prompt in PROMPTS:
        plain = run_to_end(tiny_server, prompt, free)
        tokens = tokens_of(plain)
        # A random model may pick control tokens, which no text answer contains.
        if text_of(plain).startswith("{") or any(map(tokenizer.is_special, tokens)):
            continue
        assert tokens_of(run_to_end(tiny_server, prompt, either)) == tokens
        checked += 1
    assert checked


def allows(server: GenerationServer, constraint: Constraint, text: str) -> bool:
    """Whether the grammar lets ``text``'s tokens through one by one."""
    answer = server.grammars.start(compile_grammar(constraint), frozenset({1}))
    for token in server.tokenizer.encode(text, add_bos=False):
        mask = server.engine.allow_all(1)
        server.grammars.fill([(answer, 0)], mask)
        if not (int(mask[0, token >> 5]) >> (token & 31)) & 1:
            return False
        answer.advance(token)
    return True


@pytest.mark.parametrize(
    ("text", "or_text", "allowed"),
    [
        ('{"name": "Ada", "age": 36, "tags": ["a"]}', False, True),
        ('{"name": "Ada", "age": 36, "tags": ["a"]}', True, True),
        ("I would rather not say.", True, True),
        ("I would rather not say.", False, False),
        ('{"name": 36', True, False),  # begins like JSON, so it must be that JSON
        ('{"name": "Ada", "age": 200', True, False),
        ('{"name":"Ada"', False, False),  # the layout is json.dumps's
    ],
)
def test_what_a_grammar_lets_through(
    tiny_server: GenerationServer, text: str, or_text: bool, allowed: bool
) -> None:
    assert allows(tiny_server, Constraint(ANSWER, or_text=or_text), text) is allowed


# -- the real Gemma 3 270M ----------------------------------------------------------------------

# Twenty varied schemas (nested objects, arrays, enums, numbers, booleans, optional fields,
# patterns), each with what to describe. All are bounded (string lengths, item counts, number
# ranges and steps, no extra properties), so an answer fits in max_tokens: unbounded, the small
# model runs away in the ways the grammar allows ("price": 1000000000...) and is cut at length.
REAL_SCHEMAS = [
    (item["subject"], item["schema"])
    for item in json.loads((Path(__file__).parent / "json_schemas.json").read_text())
]


@pytest.fixture(scope="module")
def real_server(real_f32: LoadedModel) -> Iterator[GenerationServer]:
    """The real weights (the session's one load) in a batch loop of 8 slots."""
    config = EngineConfig(weight_format="f32", decode_slots=8, max_context=512)
    server, _ = start_server(config, real_f32, warm_up=False)
    yield server
    server.close()


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_gemma_answers_twenty_schemas_with_valid_json(real_server: GenerationServer) -> None:
    assert len(REAL_SCHEMAS) == 20
    inboxes = []
    for i, (subject, schema) in enumerate(REAL_SCHEMAS):
        ask = f"Describe {subject} as JSON matching this JSON schema:\n{json.dumps(schema)}"
        prompt = render_gemma_chat([ChatMessage("user", ask)])
        # Greedy for most, seeded sampling for every fourth: both keep to the schema.
        params = GenerationParams(
            max_tokens=160,
            temperature=1.0 if i % 4 == 3 else 0.0,
            seed=i,
            constraint=Constraint(schema),
        )
        inboxes.append(submit(real_server, prompt, params))
    failures = []
    for (subject, schema), inbox in zip(REAL_SCHEMAS, inboxes, strict=True):
        chunks = drain(inbox)
        text = text_of(chunks)
        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError) as error:
            failures.append(f"{subject}: {finish_of(chunks)}: {text!r}: {error}")
    assert not failures, "\n".join(failures)
