"""The engine's chunks regrouped as JetStream responds: a sample per requested sample per step."""

from __future__ import annotations

from engine.server.samples import StepAssembler
from engine.serving import Chunk, FinishReason

EOS = 1


def _chunk(index: int, text: str, token: int, finish: FinishReason | None = None) -> Chunk:
    return Chunk(index=index, text=text, token_ids=(token,), finish_reason=finish)


def _all(assembler: StepAssembler, chunks: list[Chunk]) -> list[list[tuple[str, list[int]]]]:
    steps = [step for chunk in chunks for step in assembler.add(chunk)]
    return [[(s.text, s.token_ids) for s in step] for step in steps]


def test_reaching_max_tokens_ends_with_an_empty_sample() -> None:
    steps = _all(StepAssembler(1, True), [_chunk(0, "Hi", 5), _chunk(0, " you", 6, "length")])
    assert steps == [[("Hi", [5])], [(" you", [6])], [("", [])]]


def test_a_stop_token_ends_with_its_id_and_no_text() -> None:
    assembler = StepAssembler(1, True)
    steps = _all(assembler, [_chunk(0, "Hi", 5), _chunk(0, "", EOS, "stop")])
    assert steps == [[("Hi", [5])], [("", [EOS])]]
    assert assembler.done


def test_part_of_a_character_is_held_for_the_next_step() -> None:
    steps = _all(
        StepAssembler(1, True),
        [
            _chunk(0, "", 240),
            _chunk(0, "", 159),
            _chunk(0, "é!", 169),
            _chunk(0, "", EOS, "stop"),
        ],
    )
    assert steps == [[("é!", [240, 159, 169])], [("", [EOS])]]


def test_token_prompts_get_ids_only_and_nothing_is_held() -> None:
    steps = _all(StepAssembler(1, False), [_chunk(0, "", 240), _chunk(0, "é", 169, "length")])
    assert steps == [[("", [240])], [("", [169])], [("", [])]]


def test_samples_share_steps_and_a_finished_one_stays_empty() -> None:
    steps = _all(
        StepAssembler(2, True),
        [
            _chunk(0, "a", 10),
            _chunk(1, "b", 11),
            _chunk(1, "c", 12),
            _chunk(0, "", EOS, "stop"),
            _chunk(1, "d", 13, "length"),
        ],
    )
    assert steps == [
        [("a", [10]), ("b", [11])],
        [("", [EOS]), ("c", [12])],
        [("", []), ("d", [13])],
        [("", []), ("", [])],
    ]
