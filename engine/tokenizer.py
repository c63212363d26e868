"""Gemma's tokenizer: a sentencepiece model rebuilt from GGUF metadata, plus control tokens.

Sentencepiece never emits control tokens from text, so ``<start_of_turn>`` and friends are split
out here first and each text span between them is encoded by sentencepiece.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from engine.gguf_loader import Vocabulary

# The generated protobuf module carries no type information.
sp_pb2: Any = sentencepiece_model_pb2

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"


def build_sentencepiece_model(vocab: Vocabulary) -> bytes:
    """Serialize a sentencepiece ``ModelProto`` equivalent to the GGUF's llama-style tokenizer."""
    model = sp_pb2.ModelProto()
    for index, (piece, score, kind) in enumerate(
        zip(vocab.pieces, vocab.scores.tolist(), vocab.types.tolist(), strict=True)
    ):
        entry = model.pieces.add()
        if kind == _USER_DEFINED and piece.strip(" ") == "":
            # Runs of spaces carry literal spaces, where sentencepiece expects U+2581. Matched
            # greedily as user-defined pieces, 33 spaces would become 31 + 2; Gemma merges them
            # by BPE like any other piece (16 + 17), so they become normal pieces.
            piece = piece.replace(" ", _SPACE)
            kind = _NORMAL
        if kind == _NORMAL:
            # Gemma's merge priority is the order of the vocabulary, not the scores in the file
            # (which rank the whitespace runs last); BPE merges the highest score first.
            score = -float(index)
        if index == vocab.unk_id:
            kind = (
                _UNKNOWN  # the file types <unk> as control; sentencepiece needs exactly one unknown
            )
        entry.piece = piece
        entry.score = score
        entry.type = kind
    trainer = model.trainer_spec
    trainer.model_type = sp_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(vocab.pieces)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.split_by_whitespace = False  # merges may cross spaces: '▁▁▁▁' + 'if'
    trainer.allow_whitespace_only_pieces = True
    trainer.unk_id = vocab.unk_id
    trainer.bos_id = vocab.bos_id
    trainer.eos_id = vocab.eos_id
    trainer.pad_id = vocab.pad_id
    # Sentencepiece resolves the special ids through these names, not through the ids above.
    trainer.unk_piece = vocab.pieces[vocab.unk_id]
    trainer.bos_piece = vocab.pieces[vocab.bos_id]
    trainer.eos_piece = vocab.pieces[vocab.eos_id]
    trainer.pad_piece = vocab.pieces[vocab.pad_id]
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return bytes(model.SerializeToString())


class GemmaTokenizer:
    """Encode text to Gemma token ids and back; BOS is added here, not by sentencepiece."""

    def __init__(self, model_proto: bytes) -> None:
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(model_proto)
        self.model_proto = model_proto
        self.vocab_size = len(proto.pieces)
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        self.pad_id = self._sp.pad_id()
        specials = {
            p.piece: i for i, p in enumerate(proto.pieces) if p.type in (_CONTROL, _UNKNOWN)
        }
        self._special_ids = specials
        self._special_id_set = frozenset(specials.values())
        # Longest first, so a control token that prefixes another never wins wrongly.
        alternatives = sorted(specials, key=len, reverse=True)
        self._special_re = re.compile("|".join(re.escape(s) for s in alternatives))
        self._piece_text = [self._text_of(p.piece, p.type) for p in proto.pieces]

    @classmethod
    def from_vocabulary(cls, vocab: Vocabulary) -> GemmaTokenizer:
        """Rebuild from GGUF metadata."""
        return cls(build_sentencepiece_model(vocab))

    @classmethod
    def from_file(cls, path: str | Path) -> GemmaTokenizer:
        """Load a serialized sentencepiece model (``tokenizer.model``)."""
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        """Write the sentencepiece model so later starts skip the rebuild."""
        Path(path).write_bytes(self.model_proto)

    @staticmethod
    def _text_of(piece: str, kind: int) -> str:
        if kind == _BYTE and piece.startswith("<0x"):
            return bytes([int(piece[3:-1], 16)]).decode("latin-1")
        return piece.replace(_SPACE, " ")

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids for ``text``; control-token strings in the text become their ids."""
        ids = [self.bos_id] if add_bos else []
        position = 0
        for match in self._special_re.finditer(text):
            if match.start() > position:
                ids.extend(self._sp.encode(text[position : match.start()]))
            ids.append(self._special_ids[match.group()])
            position = match.end()
        if position < len(text):
            ids.extend(self._sp.encode(text[position:]))
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text for ``ids``; control tokens are dropped unless ``skip_special`` is False."""
        if skip_special:
            return str(self._sp.decode([i for i in ids if i not in self._special_id_set]))
        parts: list[str] = []
        run: list[int] = []
        for token in ids:
            if token in self._special_id_set:
                parts.append(str(self._sp.decode(run)))
                parts.append(self._sp.id_to_piece(token))
                run = []
            else:
                run.append(token)
        parts.append(str(self._sp.decode(run)))
        return "".join(parts)

    def token_text(self, token: int) -> str:
        """One token's own text (a byte token as its Latin-1 character), for logprob tables."""
        return self._piece_text[token]

    def token_bytes(self) -> list[bytes]:
        """Every token's bytes as decoded text carries them; control tokens as their names."""
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(self.model_proto)
        out: list[bytes] = []
        for p in proto.pieces:
            if p.type == _BYTE and p.piece.startswith("<0x"):
                out.append(bytes([int(p.piece[3:-1], 16)]))
            else:
                out.append(p.piece.replace(_SPACE, " ").encode("utf-8"))
        return out

    def is_special(self, token: int) -> bool:
        """True for control tokens (``<eos>``, ``<end_of_turn>``...)."""
        return token in self._special_id_set

    def special_id(self, piece: str) -> int:
        """The id of a control token such as ``<end_of_turn>``."""
        return self._special_ids[piece]
