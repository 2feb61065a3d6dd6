"""Sample-quality and mode-coverage metrics on the evaluator classifier's features.

For a set of generated images against a reference set (the protocol of Lucic et al. 2018:
10,000 generated images against the 10,000 MNIST test images):

- `eval/fd`: the Fréchet distance between Gaussians fitted to the 128-d penultimate features of
  the jaxgen MNIST classifier (the FID formula of Heusel et al. 2017 on these features, so not
  comparable with FID values computed with Inception), means and covariances in float64;
- `eval/kid`: the kernel distance (Binkowski et al. 2018): the unbiased MMD^2 estimate with the
  cubic polynomial kernel (x.y/d + 1)^3, averaged over 100 random subsets of 1,000;
- `eval/precision`, `eval/recall`: the k-nearest-neighbour manifold estimates (Kynkäänniemi et
  al. 2019, k = 3): the share of generated samples inside the reference manifold, and the share
  of reference samples inside the generated manifold;
- `eval/coverage`: how many digits receive at least 1% of the samples (a tenth of a fair share)
  by the classifier's prediction; `eval/class_kl`: KL(predicted class histogram || uniform);
- `eval/mean_gap`, `eval/var_gap`: sum over pixels of |difference| of per-pixel means and
  variances against the reference set, in float64;
- for a conditional generator, given the digit each sample was asked to be: `eval/cond_acc`, the
  share the classifier reads as that digit (`eval/cond_acc_<d>` per digit), and `eval/fd_<d>`,
  the Fréchet distance between the samples asked to be d and the reference images of d
  (`eval/fd_class_mean` their mean): does G draw the digit it is asked for, and draw it well?

Everything but the final float64 reductions runs on device in batches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.evaluator import classifier

K_NEAREST = 3
COVERAGE_MIN_SHARE = 0.01
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
CHUNK = 1000


def embed(images: jax.Array, variables=None, batch: int = 500) -> tuple[jax.Array, jax.Array]:
    """Classifier (features, logits) of images in [-1, 1], NHWC, in batches on device."""
    variables = classifier.load() if variables is None else variables
    feats, logits = [], []
    for i in range(0, len(images), batch):
        f, lg = classifier.predict(variables, images[i:i + batch])
        feats.append(f)
        logits.append(lg)
    return jnp.concatenate(feats), jnp.concatenate(logits)


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features, in float64."""
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with tr (S1 S2)^(1/2) computed as
    tr (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric form whose eigenvalues are real."""
    w, v = np.linalg.eigh(sigma1)
    sqrt1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(sqrt1 @ sigma2 @ sqrt1)
    trace_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def _cubic_kernel(a: jax.Array, b: jax.Array) -> jax.Array:
    return (a @ b.T / a.shape[1] + 1) ** 3


@functools.partial(jax.jit, static_argnames=("n_x", "n_y", "subsets", "size"))
def _draw_subsets(key: jax.Array, n_x: int, n_y: int, subsets: int,
                  size: int) -> tuple[jax.Array, jax.Array]:
    def one(k):
        kx, ky = jax.random.split(k)
        return (jax.random.choice(kx, n_x, (size,), replace=False),
                jax.random.choice(ky, n_y, (size,), replace=False))

    return jax.vmap(one)(jax.random.split(key, subsets))


_SUBSETS_DRAWN: dict[tuple, tuple[jax.Array, jax.Array]] = {}


def kid_subsets(key: jax.Array, n_x: int, n_y: int, subsets: int = KID_SUBSETS,
                size: int = KID_SUBSET_SIZE) -> tuple[jax.Array, jax.Array]:
    """The indices, each `(subsets, size)`, of KID's random subsets of x and of y, drawn
    without replacement from `key`. Subset s of y depends only on `key`, `n_y` and `size`, so
    a reference set's own kernel term can be computed once (`kernel_distance`'s `y_terms`).
    Kept per process (the last 16 draws): the draws, 200 permutations, cost more than the rest
    of KID (426 ms against 90 for 2,000 samples against 10,000, `benchmarks/README.md`)."""
    name = (np.asarray(jax.random.key_data(key)).tobytes(), n_x, n_y, subsets, size)
    if name not in _SUBSETS_DRAWN:
        if len(_SUBSETS_DRAWN) >= 16:
            _SUBSETS_DRAWN.clear()
        _SUBSETS_DRAWN[name] = _draw_subsets(key, n_x, n_y, subsets, size)
    return _SUBSETS_DRAWN[name]


@jax.jit
def _blocks(a: jax.Array, b: jax.Array, ia: jax.Array, ib: jax.Array) -> jax.Array:
    return jax.lax.map(lambda i: _cubic_kernel(a[i[0]], b[i[1]]).sum(), (ia, ib))


@functools.partial(jax.jit, static_argnames="n")
def _indicator(idx: jax.Array, n: int) -> jax.Array:
    rows = jnp.arange(idx.shape[0])[:, None]
    return jnp.zeros((idx.shape[0], n), jnp.float32).at[rows, idx].add(1.0)


@jax.jit
def _indicated_rows(a_chunk: jax.Array, b: jax.Array, sa_chunk: jax.Array) -> jax.Array:
    return sa_chunk @ _cubic_kernel(a_chunk, b)


def subset_sums(a: jax.Array, b: jax.Array, ia: jax.Array, ib: jax.Array,
                form: str = "auto") -> jax.Array:
    """Per subset s, the sum of the cubic kernel over the pairs `a[ia[s]] x b[ib[s]]`.

    By whichever of two exact forms costs fewer multiply-adds: the kernel block of each subset
    (`subsets * size^2 * d`), or the whole kernel matrix, in chunks of `CHUNK` rows, summed over
    each subset as `1_a^T K 1_b` with rows counting each index (`n_a * n_b * (d + subsets)`). For
    KID's 100 subsets of 1,000 and 128-d features the whole matrix is cheaper up to about 5,600
    by 10,000 points (a CPU-scale evaluation's 2,000 samples: 7x fewer), the blocks beyond.
    `form`: "auto", or "blocks" or "matrix" to choose."""
    (subsets, size), d = ia.shape, a.shape[1]
    if form not in ("auto", "blocks", "matrix"):
        raise ValueError(f"form={form!r}: use 'auto', 'blocks' or 'matrix'")
    if form == "auto":
        form = ("blocks" if subsets * size * size * d <= len(a) * len(b) * (d + subsets)
                else "matrix")
    if form == "blocks":
        return _blocks(a, b, ia, ib)
    sa, sb = _indicator(ia, len(a)), _indicator(ib, len(b))
    rows = sum(_indicated_rows(a[i:i + CHUNK], b, sa[:, i:i + CHUNK])
               for i in range(0, len(a), CHUNK))
    return (rows * sb).sum(1)


def subset_self_terms(a: jax.Array, ia: jax.Array) -> jax.Array:
    """Per subset, the mean of the cubic kernel over the distinct pairs of `a[ia[s]]`: the
    unbiased estimate's within-set term."""
    size = ia.shape[1]
    diagonal = ((a * a).sum(1) / a.shape[1] + 1) ** 3
    return (subset_sums(a, a, ia, ia) - diagonal[ia].sum(1)) / (size * (size - 1))


def kernel_distance(x: jax.Array, y: jax.Array, key: jax.Array, subsets: int = KID_SUBSETS,
                    size: int = KID_SUBSET_SIZE, y_terms: jax.Array | None = None) -> jax.Array:
    """The unbiased MMD^2 with the kernel (x.y/d + 1)^3, averaged over random subsets of `size`
    (at most the smaller set's size) of each set (`kid_subsets`).

    `y_terms`: y's within-set terms for these subsets (`subset_self_terms(y, iy)`), when y is a
    reference set evaluated against again and again (`Reference.kid_terms`)."""
    size = min(size, x.shape[0], y.shape[0])
    ix, iy = kid_subsets(key, x.shape[0], y.shape[0], subsets, size)
    if y_terms is None:
        y_terms = subset_self_terms(y, iy)
    cross = subset_sums(x, y, ix, iy) / (size * size)
    return (subset_self_terms(x, ix) + y_terms - 2 * cross).mean()


@jax.jit
def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def knn_radii(features: jax.Array, k: int = K_NEAREST) -> jax.Array:
    """Squared distance from each point to its k-th nearest other point of the same set."""
    out = [-jax.lax.top_k(-_sq_dists(features[i:i + CHUNK], features), k + 1)[0][:, k]
           for i in range(0, len(features), CHUNK)]
    return jnp.concatenate(out)


def _inside(points: jax.Array, centers: jax.Array, radii: jax.Array) -> jax.Array:
    """Share of points within the k-NN ball of at least one center."""
    hits = [(_sq_dists(points[i:i + CHUNK], centers) <= radii[None, :]).any(1).sum()
            for i in range(0, len(points), CHUNK)]
    return sum(hits) / len(points)


def precision_recall(real: jax.Array, fake: jax.Array, k: int = K_NEAREST,
                     real_radii: jax.Array | None = None) -> tuple[float, float]:
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    precision = _inside(fake, real, real_radii)
    recall = _inside(real, fake, knn_radii(fake, k))
    return float(precision), float(recall)


def class_coverage(logits: jax.Array, min_share: float = COVERAGE_MIN_SHARE) -> tuple[int, float]:
    """(digits with at least `min_share` of the predictions, KL(histogram || uniform))."""
    counts = np.bincount(np.asarray(jnp.argmax(logits, -1)), minlength=10).astype(np.float64)
    share = counts / counts.sum()
    nonzero = share[share > 0]
    return int((share >= min_share).sum()), float((nonzero * np.log(nonzero * 10)).sum())


def moment_matched_noise(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Images whose pixels are independent, each with exactly the per-pixel distribution of
    `images` (so their per-pixel mean and variance): every pixel position shuffled across the
    set on its own. This is the moment term's own optimum, with no digit in it."""
    rng = np.random.default_rng(seed)
    flat = np.asarray(images).reshape(len(images), -1)
    shuffled = np.take_along_axis(flat, rng.permuted(
        np.broadcast_to(np.arange(len(flat))[:, None], flat.shape), axis=0), axis=0)
    return shuffled.reshape(np.shape(images))


def pixel_moments(images) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    return x.mean(0), x.var(0)


@dataclass(frozen=True)
class Reference:
    """Everything about the reference set that the metrics need, computed once."""

    features: jax.Array
    mu: np.ndarray
    sigma: np.ndarray
    radii: jax.Array
    pixel_mean: np.ndarray
    pixel_var: np.ndarray
    labels: np.ndarray | None = None  # the reference images' digits, for conditional metrics
    # KID's within-set terms of the reference's subsets, by (seed, subset size): computed by
    # the first evaluation that needs them (`reference_kid`), then reused.
    kid_terms: dict = field(default_factory=dict, compare=False, repr=False)


def reference_kid(features: jax.Array, reference: Reference, seed: int = 0) -> float:
    """`kernel_distance(features, reference.features, PRNGKey(seed))`, with the reference's own term
    computed once per seed and subset size and kept in `reference.kid_terms`."""
    key, y = jax.random.PRNGKey(seed), reference.features
    size = min(KID_SUBSET_SIZE, len(features), len(y))
    if (seed, size) not in reference.kid_terms:
        _, iy = kid_subsets(key, len(features), len(y), KID_SUBSETS, size)
        reference.kid_terms[seed, size] = subset_self_terms(y, iy)
    return float(kernel_distance(features, y, key, y_terms=reference.kid_terms[seed, size]))


def make_reference(images: jax.Array, labels=None) -> Reference:
    """`images` in [-1, 1], NHWC (the MNIST test set, in the protocol), and their `labels`."""
    features, _ = embed(images)
    mu, sigma = gaussian_stats(features)
    return Reference(features, mu, sigma, knn_radii(features), *pixel_moments(images),
                     labels=None if labels is None else np.asarray(labels))


def conditional_metrics(features, logits, labels, reference: Reference) -> dict[str, float]:
    """Per requested digit: the classifier's agreement with the request and the Fréchet
    distance to the reference images of that digit (unprefixed keys)."""
    if reference.labels is None:
        raise ValueError("conditional metrics need the reference images' labels: build the "
                         "reference with make_reference(images, labels)")
    labels = np.asarray(labels)
    predicted = np.asarray(jnp.argmax(logits, -1))
    features, ref_features = np.asarray(features), np.asarray(reference.features)
    metrics = {"cond_acc": float((predicted == labels).mean())}
    fds = []
    for digit in np.unique(labels):
        mine = labels == digit
        metrics[f"cond_acc_{digit}"] = float((predicted[mine] == digit).mean())
        if mine.sum() > 1 and (reference.labels == digit).sum() > 1:
            fds.append(frechet_distance(*gaussian_stats(features[mine]),
                                        *gaussian_stats(ref_features[reference.labels == digit])))
            metrics[f"fd_{digit}"] = fds[-1]
    if fds:
        metrics["fd_class_mean"] = float(np.mean(fds))
    return metrics


def evaluate(images: jax.Array, reference: Reference, prefix: str = "eval/",
             seed: int = 0, labels=None) -> dict[str, float]:
    """Every metric of generated `images` (in [-1, 1], NHWC) against the reference set; with
    `labels` (the digit each image was asked to be), the conditional metrics too."""
    features, logits = embed(images)
    mu, sigma = gaussian_stats(features)
    precision, recall = precision_recall(reference.features, features,
                                         real_radii=reference.radii)
    coverage, class_kl = class_coverage(logits)
    mean, var = pixel_moments(images)
    metrics = {
        "fd": frechet_distance(mu, sigma, reference.mu, reference.sigma),
        "kid": reference_kid(features, reference, seed),
        "precision": precision, "recall": recall, "coverage": coverage, "class_kl": class_kl,
        "mean_gap": float(np.abs(mean - reference.pixel_mean).sum()),
        "var_gap": float(np.abs(var - reference.pixel_var).sum()),
        # Diversity, 1 for a set as varied as the reference, 0 for one image repeated: the
        # classifier features' total variance (covariance trace) and the pixels', as ratios.
        "trace_ratio": float(np.trace(sigma) / np.trace(reference.sigma)),
        "pixel_var_ratio": float(var.sum() / reference.pixel_var.sum()),
    }
    if labels is not None:
        metrics.update(conditional_metrics(features, logits, labels, reference))
    return {prefix + k: v for k, v in metrics.items()}
