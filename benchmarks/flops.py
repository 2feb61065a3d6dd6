"""The arithmetic of a jitted step, counted from its shapes, and this machine's matrix-product
rate: the two numbers of a roofline line.

    flops = matmul_flops(fn, *args, **kwargs)   # 2 * m * n * k over every product and convolution
    rate = matmul_rate()                        # fp32 GFLOP/s of one jitted 2048x2048 product

`matmul_flops` walks the step's jaxpr (the program JAX hands to XLA, before XLA's own rewrites):
every `dot_general` counts 2 x (output elements) x (contracted size), every convolution
2 x (output elements) x (kernel window x input features per group). Sub-programs count as they
run: a `scan` times its length, a `cond` by its costliest branch (the branch a good step takes),
`jit`, `custom_jvp`/`custom_vjp` and `remat` bodies once. Elementwise work is left out: it is
memory-bound, and the roofline compares the products against the product rate.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np


def _dot_flops(eqn) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    out = eqn.outvars[0].aval.shape
    return 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> int:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
    window = math.prod(rhs[d] for d in spec[2:])
    in_per_group = rhs[spec[1]]
    return 2 * math.prod(out) * window * in_per_group


def jaxpr_flops(jaxpr) -> int:
    """Matrix-product FLOPs of a (closed) jaxpr, sub-programs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
        elif name == "while":
            total += jaxpr_flops(eqn.params["body_jaxpr"])  # trip count unknown: once
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        else:
            for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
                sub = eqn.params.get(key)
                if sub is not None and (hasattr(sub, "eqns") or hasattr(sub, "jaxpr")):
                    total += jaxpr_flops(sub)
                    break
    return total


def matmul_flops(fn, *args, **kwargs) -> int:
    """Matrix-product FLOPs of one call `fn(*args, **kwargs)` (a jitted function is traced, not
    run)."""
    return jaxpr_flops(jax.make_jaxpr(functools.partial(fn, **kwargs))(*args))


def matmul_rate(n: int = 2048, repeats: int = 5, calls: int = 10) -> float:
    """fp32 GFLOP/s of a jitted n x n matrix product on the default device (best of `repeats`
    blocks of `calls`)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    product = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(product(a, a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = product(a, a)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2 * n ** 3 / best / 1e9
