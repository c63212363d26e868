"""JetStream's stream shape: one response per decode step, holding a sample per requested sample.

As ``process_result_tokens`` and the orchestrator's ``Decode`` make it (JetStream acd4f5a): a
step gives each open sample its token id and, for text prompts, its text; a step whose text is
still part of a character is held and sent with the next; a sample that ends on a stop token
carries that token's id and no text; a finished sample is empty in later steps; and when the
last samples end at ``max_tokens`` one more response of empty samples closes the stream (JetStream
sees the length one step later).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.serving import Chunk


@dataclass
class Sample:
    """One sample of one response: its text (text prompts only) and its token ids."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)


Step = list[Sample]


class StepAssembler:
    """Groups a request's ``Chunk`` values into the responses JetStream would send."""

    def __init__(self, samples: int, with_text: bool) -> None:
        self._samples = samples
        self._with_text = with_text
        self._open = set(range(samples))
        self._pending: dict[int, Chunk] = {}
        self._held: Step | None = None

    @property
    def done(self) -> bool:
        """Every sample has finished."""
        return not self._open

    def add(self, chunk: Chunk) -> list[Step]:
        """The responses ready once ``chunk`` is in: none until each open sample has its token."""
        if chunk.index in self._pending:  # a step can hold one token per sample only
            raise ValueError(f"sample {chunk.index} got two tokens in one step")
        self._pending[chunk.index] = chunk
        if not self._open <= self._pending.keys():
            return []
        pending, self._pending = self._pending, {}
        step = [self._sample(pending.get(index)) for index in range(self._samples)]
        ended = {index for index, c in pending.items() if c.finish_reason is not None}
        self._open -= ended
        # Text held back by the detokenizer: part of a character, sent with the next step.
        partial = any(c.token_ids and not c.text and not c.finish_reason for c in pending.values())
        if self._held is not None:
            step = [_joined(before, now) for before, now in zip(self._held, step, strict=True)]
            self._held = None
        if self._with_text and partial and not self.done:
            self._held = step
            return []
        if self.done and any(pending[i].finish_reason == "length" for i in ended):
            return [step, [Sample() for _ in range(self._samples)]]
        return [step]

    def _sample(self, chunk: Chunk | None) -> Sample:
        if chunk is None:
            return Sample()
        return Sample(chunk.text if self._with_text else "", list(chunk.token_ids))


def _joined(before: Sample, now: Sample) -> Sample:
    return Sample(before.text + now.text, before.token_ids + now.token_ids)
