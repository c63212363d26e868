"""Hand-written CPU kernels for the decode step, as XLA FFI custom calls.

``int8_matmul.cc`` is compiled on first use (g++ with explicit instruction-set attributes, never
``-march=native``) into the cache directory, keyed by its source and jaxlib's version, and its
handlers registered with XLA. Where it cannot be built or run (no compiler, no AVX2, another
architecture, ``TOLLGATE_KERNELS=off``) ``available()`` is false and the model keeps XLA's dot.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import threading
from pathlib import Path

import jax
import jax.numpy as jnp

from engine.config import default_cache_dir

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("int8_matmul.cc")
_TARGETS = ("tollgate_int8_matmul", "tollgate_int8_matmul_fine")
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-exceptions", "-pthread")
_lock = threading.Lock()
_isa: str | None = None  # "" once tried and unavailable


def _library_path() -> Path:
    digest = hashlib.sha256(_SOURCE.read_bytes())
    digest.update(jax.__version__.encode())
    digest.update(" ".join(_FLAGS).encode())
    return default_cache_dir() / "kernels" / digest.hexdigest()[:16] / "libtollgate_kernels.so"


def _build(target: Path) -> None:
    """Compile into a temporary name and rename: concurrent builders never load half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    command = [
        os.environ.get("CXX", "g++"),
        *_FLAGS,
        f"-I{jax.ffi.include_dir()}",
        str(_SOURCE),
        "-o",
        str(partial),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    partial.replace(target)


def build() -> Path:
    """The compiled library, compiling it first where the cache lacks it."""
    path = _library_path()
    if not path.exists():
        log.info("compiling the engine's int8 kernels (%s)", path.parent)
        _build(path)
    return path


def _load() -> str:
    if os.environ.get("TOLLGATE_KERNELS", "on") == "off" or platform.machine() != "x86_64":
        return ""
    try:
        library = ctypes.cdll.LoadLibrary(str(build()))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        log.warning("engine kernels unavailable, using XLA's dot: %s %s", error, detail[-400:])
        return ""
    library.tollgate_kernel_isa.restype = ctypes.c_char_p
    isa = library.tollgate_kernel_isa().decode()
    if isa:
        for name in _TARGETS:
            capsule = jax.ffi.pycapsule(getattr(library, name))
            jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    return isa


def isa() -> str:
    """The instruction set the kernels run on here ("avx512vnni", "avx2"), "" if none."""
    global _isa
    with _lock:
        if _isa is None:
            _isa = _load()
        return _isa


def available() -> bool:
    return bool(isa())


def int8_matmul(x: jax.Array, values: jax.Array, scales: jax.Array, *, fine: bool) -> jax.Array:
    """``x [B, K] @ (values * scales[:, None]).T`` -> float32 [B, N], ``x`` rounded to int8
    per row inside the kernel (with ``fine``, its remainder too), as ``model.linear`` does."""
    if not available():  # registers the handlers on first use
        raise RuntimeError("the engine's kernels are not available on this machine")
    target = _TARGETS[1] if fine else _TARGETS[0]
    result = jax.ShapeDtypeStruct((x.shape[0], values.shape[0]), jnp.float32)
    call = jax.ffi.ffi_call(target, result, vmap_method="broadcast_all")
    out: jax.Array = call(x.astype(jnp.float32), values, scales)
    return out
