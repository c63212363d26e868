"""Faithful fakes of the upstream wire protocols, each on a real 127.0.0.1 socket."""

from tests.fakes._server import Failure, Recorded, Signal
from tests.fakes.jetstream import FakeJetStream
from tests.fakes.llama_cpp import FakeLlamaCpp
from tests.fakes.tgi import FakeTGI
from tests.fakes.triton import FakeTriton
from tests.fakes.vllm import FakeVLLM

__all__ = [
    "Failure",
    "FakeJetStream",
    "FakeLlamaCpp",
    "FakeTGI",
    "FakeTriton",
    "FakeVLLM",
    "Recorded",
    "Signal",
]
