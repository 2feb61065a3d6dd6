"""Each speed lever jaxgen adopts, switched off one at a time, timed side by side in one run.

    python benchmarks/levers.py [--model=dcgan] [--steps=10] [--repeats=5] [--levers=a,b]

Every variant is the study's train step compiled with all levers on except the one named (and
`none`: all off), then all variants are timed in interleaved blocks, so that each sees the same
machine; each figure is the best of `--repeats` blocks of `--steps` steps. The levers:

    threefry    `backend.unroll_threefry_on_cpu` (off: JAX's rolled CPU lowering)
    malloc      `backend.keep_freed_memory` (off: glibc's default mmap/trim thresholds; it is
                process-wide, so its variant is timed with the thresholds reset around it)
    stored      `layers.stored` for random draws: the dropout mask, the StyleGAN's noise (off:
                each draw fused into its uses)
    guard       `stability.guard_update` as a conditional that computes the optimizer step
                (off: the step's updates selected leaf by leaf, `stability.guard`)

The last lines print each variant's ms per step and its ratio to all-on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402

from jaxgen import backend, sharding, stability  # noqa: E402
from jaxgen import config as config_lib  # noqa: E402
from jaxgen.cli import guarded, parse_flags  # noqa: E402
from jaxgen.models import layers  # noqa: E402
from jaxgen.trainers import gan  # noqa: E402

GLIBC_DEFAULT_MMAP, GLIBC_DEFAULT_ARENAS = 128 * 1024, 8 * (os.cpu_count() or 1)


@contextlib.contextmanager
def lever_off(name: str):
    """The step as it was without lever `name`, while the context is open."""
    if name == "threefry":
        backend.roll_threefry_on_cpu()
        try:
            yield
        finally:
            backend.unroll_threefry_on_cpu()
    elif name == "malloc":
        backend.keep_freed_memory(GLIBC_DEFAULT_MMAP, GLIBC_DEFAULT_ARENAS)
        try:
            yield
        finally:
            backend.keep_freed_memory()
    elif name == "stored":
        original = layers.stored
        layers.stored = lambda x: x
        try:
            yield
        finally:
            layers.stored = original
    elif name == "guard":
        original = stability.guard_update
        stability.guard_update = lambda apply, update, old: stability.guard(update(), old, apply)
        try:
            yield
        finally:
            stability.guard_update = original
    else:
        yield


LEVERS = ("threefry", "malloc", "stored", "guard")


def main(argv: list[str]) -> None:
    flags, _ = parse_flags(argv, ("model", "steps", "repeats", "levers"))
    model = flags.get("model", "dcgan")
    steps, repeats = int(flags.get("steps", 10)), int(flags.get("repeats", 5))
    levers = tuple(flags["levers"].split(",")) if "levers" in flags else LEVERS
    config = config_lib.load_config(train_step.CONFIGS[model], train_step.CONFIGS_DIR)
    mesh = sharding.make_mesh(1, jax.devices())
    timers, compile_s = {}, {}
    for variant in ("all", *(f"no_{lever}" for lever in levers), "none"):
        off = levers if variant == "none" else (variant[3:],) if variant != "all" else ()
        gan._compiled.cache_clear()
        with contextlib.ExitStack() as stack:
            for lever in off:
                stack.enter_context(lever_off(lever))
            start = time.perf_counter()
            timers[variant] = train_step.jax_timer(config, mesh, 0)
            timers[variant](2)  # traced and compiled with the levers as set here
            compile_s[variant] = time.perf_counter() - start
        timers[variant] = (timers[variant], off)
    best = {k: float("inf") for k in timers}
    for _ in range(repeats):
        for variant, (timer, off) in timers.items():
            with contextlib.ExitStack() as stack:
                if "malloc" in off:  # the only lever that acts at run time
                    stack.enter_context(lever_off("malloc"))
                timer(1)
                best[variant] = min(best[variant], timer(steps))
    print(f"model={model} backend={jax.default_backend()} jax={jax.__version__} "
          f"steps={steps} repeats={repeats} applied={backend.configure()}")
    for variant, seconds in best.items():
        print(f"{variant:14s} ms_per_step={seconds * 1e3:7.1f} "
              f"vs_all={seconds / best['all']:.2f}x warmup_with_compile_s={compile_s[variant]:.1f}")


if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1:]))
