"""Each speed lever jaxgen adopts, switched off one at a time, timed side by side in one run.

    python benchmarks/levers.py [--model=dcgan] [--steps=10] [--repeats=5] [--levers=a,b]
        [--copies=2]

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
    overlap     the transposed convolution's gradient `stored` once (`layers.overlap_add`;
                off: autodiff's, gathered by XLA in each layout its two products read)

The last lines print each variant's ms per step and its ratio to all-on.

`--copies=N` (default 2) compiles every variant N times, in turn (all, no_a, ..., all, no_a, ...),
and times every copy: two compiles of the same step, timed side by side, differed by up to 5%
here, with the first compiled often the slower (seen 2026-12-01). Each variant's figure is the
best of its copies, and `copy_spread` the ratio of its slowest copy to its fastest: a lever whose
effect is inside that spread is not measured by this run.
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
from jaxgen.errors import UserError  # noqa: E402
from jaxgen.models import layers  # noqa: E402
from jaxgen.trainers import gan  # noqa: E402

GLIBC_DEFAULT_MMAP, GLIBC_DEFAULT_ARENAS = 128 * 1024, 8 * (os.cpu_count() or 1)


# lever -> (off, on): calls that switch a process-wide setting
SWITCHES = {
    "threefry": (backend.roll_threefry_on_cpu, backend.unroll_threefry_on_cpu),
    "malloc": (lambda: backend.keep_freed_memory(GLIBC_DEFAULT_MMAP, GLIBC_DEFAULT_ARENAS),
               backend.keep_freed_memory),
}
# lever -> (module, name, replacement): the function a step calls at trace time without it
PATCHES = {
    "stored": (layers, "stored", lambda x: x),
    "guard": (stability, "guard_update",
              lambda apply, update, old: stability.guard(update(), old, apply)),
    "overlap": (layers, "overlap_add", layers.overlap_add_autodiff),
}
LEVERS = (*SWITCHES, *PATCHES)


@contextlib.contextmanager
def lever_off(name: str):
    """The step as it was without lever `name`, while the context is open."""
    if name in SWITCHES:
        off, on = SWITCHES[name]
        off()
        try:
            yield
        finally:
            on()
    elif name in PATCHES:
        module, attr, replacement = PATCHES[name]
        original = getattr(module, attr)
        setattr(module, attr, replacement)
        try:
            yield
        finally:
            setattr(module, attr, original)
    else:
        raise ValueError(f"unknown lever {name!r}: one of {LEVERS}")

def main(argv: list[str]) -> None:
    flags, _ = parse_flags(argv, ("model", "steps", "repeats", "levers", "copies"))
    model = flags.get("model", "dcgan")
    steps, repeats = int(flags.get("steps", 10)), int(flags.get("repeats", 5))
    copies = int(flags.get("copies", 2))
    levers = tuple(flags["levers"].split(",")) if "levers" in flags else LEVERS
    unknown = [lever for lever in levers if lever not in LEVERS]
    if unknown:
        raise UserError(f"Unknown lever(s) {', '.join(unknown)}. Fix: --levers= takes a "
                        f"comma-separated list of {', '.join(LEVERS)}.")
    config = config_lib.load_config(train_step.CONFIGS[model], train_step.CONFIGS_DIR)
    mesh = sharding.make_mesh(1, jax.devices())
    variants = ("all", *(f"no_{lever}" for lever in levers), "none")
    timers, compile_s = [], {}
    for copy in range(copies):
        for variant in variants:
            off = levers if variant == "none" else (variant[3:],) if variant != "all" else ()
            gan.build.cache_clear()
            with contextlib.ExitStack() as stack:
                for lever in off:
                    stack.enter_context(lever_off(lever))
                start = time.perf_counter()
                timer = train_step.jax_timer(config, mesh, 0)
                timer(2)  # traced and compiled with the levers as set here
                compile_s.setdefault(variant, time.perf_counter() - start)
            timers.append((variant, copy, timer, off))
    best = {(variant, copy): float("inf") for variant, copy, _, _ in timers}
    for _ in range(repeats):
        for variant, copy, timer, off in timers:
            with contextlib.ExitStack() as stack:
                if "malloc" in off:  # the only lever that acts at run time
                    stack.enter_context(lever_off("malloc"))
                timer(1)
                best[variant, copy] = min(best[variant, copy], timer(steps))
    print(f"model={model} backend={jax.default_backend()} jax={jax.__version__} "
          f"steps={steps} repeats={repeats} copies={copies} applied={backend.configure()}")
    per_variant = {v: [best[v, c] for c in range(copies)] for v in variants}
    for variant, seconds in per_variant.items():
        print(f"{variant:14s} ms_per_step={min(seconds) * 1e3:7.1f} "
              f"vs_all={min(seconds) / min(per_variant['all']):.2f}x "
              f"copy_spread={max(seconds) / min(seconds):.2f}x "
              f"warmup_with_compile_s={compile_s[variant]:.1f}")

if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1:]))
