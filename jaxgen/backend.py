"""The runtime settings jaxgen adopts for speed, all in one place; `import jaxgen` applies them.

Each was measured on the studies' steps (`benchmarks/levers.py`, figures in
`benchmarks/README.md`) and none changes a number: the golden-metric tests pass with and
without them. `JAXGEN_BACKEND_TUNING=0` in the environment switches all of them off.

- **Threefry unrolled on CPU.** JAX lowers its counter-based RNG (threefry2x32) on CPU as a
  rolled loop of five iterations, which XLA:CPU runs as separate passes over memory, while
  every other backend gets the unrolled form, fused into one loop. The DCGAN's three dropout
  masks (100 x 12,544 each) took 17.5 ms each that way, 0.8 ms unrolled: the same algorithm,
  bit for bit the same numbers (`tests/test_backend.py`). The cost is compile time (measured
  in the same benchmark).
- **glibc malloc keeps freed memory.** A 13M-parameter layer's gradient and Adam temporaries
  are 51 MB each; glibc serves blocks above its mmap threshold (at most 32 MB by default) with
  a fresh `mmap` and unmaps them on free, and XLA's worker threads allocate from per-thread
  arenas whose heaps hold at most 64 MB, so every DCGAN step page-faulted 150-280 MB back in
  (38,000-68,000 faults, 70-175 ms of system time a step; an elementwise op on one such array
  took 19.8 ms, against 4.2 ms with the memory kept). `mallopt` raises the mmap and trim
  thresholds to 1 GiB and keeps one arena: 3,800 faults and 8 ms of system time a step. It
  acts on allocations from then on, so it is applied when jaxgen is imported. glibc only;
  elsewhere it is skipped. A process also running PyTorch benefits as much.

Measured on the DCGAN step, side by side (`benchmarks/levers.py`): 290 ms with both off and the
dropout mask unstored, 187 ms with all on; without the malloc setting alone, 246 ms.
A user's own `XLA_FLAGS` are left as they are: no XLA flag measured faster on these models
(`benchmarks/README.md` lists the ones tried).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_KEEP_BYTES = 1 << 30

_applied: dict[str, bool] = {}


def _lower_threefry_on_cpu(rule_name: str, **kwargs) -> bool:
    """Register JAX's lowering rule `rule_name` for threefry2x32 on CPU; False where this JAX
    version lays out its internals differently."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32
        rule = getattr(threefry2x32, rule_name)
        primitive = threefry2x32.threefry2x32_p
    except (ImportError, AttributeError):
        return False
    mlir.register_lowering(primitive, rule, platform="cpu", **kwargs)
    return True


def unroll_threefry_on_cpu() -> bool:
    """Lower threefry2x32 on CPU as JAX does on every other backend (unrolled). Returns whether
    it was applied."""
    return _lower_threefry_on_cpu("_threefry2x32_lowering_rule", inline=False)


def roll_threefry_on_cpu() -> bool:
    """Undo `unroll_threefry_on_cpu` (JAX's own CPU lowering), for side-by-side benchmarks."""
    return _lower_threefry_on_cpu("_threefry2x32_cpu_lowering_rule")


def keep_freed_memory(nbytes: int = _KEEP_BYTES, arenas: int = 1) -> bool:
    """Raise glibc's mmap and trim thresholds to `nbytes` and keep to `arenas` arenas, so that
    large freed blocks are reused instead of unmapped and faulted in again. (XLA's worker
    threads otherwise allocate from per-thread arenas, whose heaps hold at most 64 MB, so a
    51 MB buffer still gets a fresh mapping.) Returns whether glibc accepted all three."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(_M_MMAP_THRESHOLD, nbytes), mallopt(_M_TRIM_THRESHOLD, nbytes),
                mallopt(_M_ARENA_MAX, arenas)])


def configure() -> dict[str, bool]:
    """Apply every setting once per process (unless `JAXGEN_BACKEND_TUNING=0`); returns which
    took effect."""
    if not _applied:
        on = os.environ.get("JAXGEN_BACKEND_TUNING", "1") != "0"
        _applied["threefry_unrolled"] = on and unroll_threefry_on_cpu()
        _applied["malloc_keep"] = on and keep_freed_memory()
    return dict(_applied)
