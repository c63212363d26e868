"""Faithful fakes of the upstream wire protocols, each on a real 127.0.0.1 socket."""

from tests.fakes._server import Failure, Recorded, Signal
from tests.fakes.jetstream import FakeJetStream
from tests.fakes.tgi import FakeTGI
from tests.fakes.triton import FakeTriton
from tests.fakes.vllm import FakeVLLM

__all__ = ["Failure", "FakeJetStream", "FakeTGI", "FakeTriton", "FakeVLLM", "Recorded", "Signal"]
