"""The decode-step profile's bookkeeping: thunks matched to instructions and summed into parts."""

from __future__ import annotations

import pytest

from bench.engine_profile import PARTS, instructions, split

HLO = """
ENTRY %main {
  %ynn_fusion.2 = s32[2,512]{1,0} fusion(%a, %b), metadata={op_name="jit(f)/dot_general"}
  %ynn_fusion.7 = s32[2,4096]{1,0} fusion(%c, %d), metadata={op_name="jit(f)/dot_general"}
  %custom-call.1 = (f32[2,16]{1,0}, s32[2,16]{1,0}) custom-call(%e), metadata={op_name="top_k"}
  %add_rsqrt_fusion = f32[2,64]{1,0} fusion(%f), kind=kLoop, metadata={op_name="jit(f)/rsqrt"}
  ROOT %copy.3 = f32[2,64]{1,0} copy(%add_rsqrt_fusion)
}
"""


def test_instructions_read_shapes_and_ops() -> None:
    found = instructions(HLO)
    assert found["ynn_fusion.2"] == ((2, 512), "dot_general")
    assert found["custom-call.1"] == ((2, 16), "top_k")  # a tuple: its first element
    assert found["add_rsqrt_fusion"] == ((2, 64), "rsqrt")
    assert found["copy.3"] == ((2, 64), "")  # XLA's own: no JAX op behind it


def test_split_sums_thunks_per_step_by_part() -> None:
    events = [
        {"ph": "X", "name": "ynn_fusion.2", "dur": 6000.0},  # the logits (vocabulary 512)
        {"ph": "X", "name": "ynn_fusion.7", "dur": 3000.0},
        {"ph": "X", "name": "ynn_fusion.7", "dur": 3000.0},
        {"ph": "X", "name": "custom-call.1", "dur": 1000.0},
        {"ph": "X", "name": "add_rsqrt_fusion", "dur": 1500.0},
        {"ph": "X", "name": "copy.3", "dur": 500.0},
        {"ph": "X", "name": "PjitFunction(_generate)", "dur": 9000.0},  # not a thunk
        {"ph": "i", "name": "ynn_fusion.2", "dur": 9000.0},  # not a complete event
    ]
    parts = split(events, instructions(HLO), vocab=512, steps=2, wall_s=0.020)
    assert list(parts) == list(PARTS)
    assert parts["logits dot"] == pytest.approx(3.0)
    assert parts["layer dots"] == pytest.approx(3.0)
    assert parts["top-k"] == pytest.approx(0.5)
    assert parts["other device work"] == pytest.approx(1.0)
    assert parts["between thunks"] == pytest.approx(10.0 - 7.5)  # the step's wall, less thunks
