"""A conditional DCGAN for 28x28x1 MNIST: G and D both see the digit label (Mirza & Osindero 2014),
or D scores it by projection (Miyato & Koyama 2018).

c(y): a learned embedding `Embed(10, embed_dim)` (cond="embed") or a one-hot vector (cond="onehot")
G: [z, c(y)] -> Dense 7*7*2w -> BN -> act -> (7, 7, 2w) -> ConvT w (3x3, /2) -> BN -> act
     -> (depth - 1) x [Conv w (3x3) -> BN -> act] at 14x14 -> ConvT 1 (3x3, /2) -> tanh
D: x -> [Conv c_i (3x3, /2) -> BN -> act] for c_i in channels -> flatten -> Dropout -> h
     concat:     [h, c(y)] -> Dense 1 (a logit)
     projection: Dense 1 (h) + <Embed(10, dim h)(y), h>

`default_model_config` (z_dim 100, one-hot, w 64, depth 1, channels (32, 64), concat D): G 783,233
parameters, D 22,155; with cond="embed" (embed_dim 16), G 821,025 and D 22,321; with the
projection, D 53,505. G's first batch norm normalizes each of the Dense's 7*7*2w units before
the reshape (the order of TF's DCGAN tutorial), where `dcgan.Generator` normalizes per channel
after it. Batch norm is TF's layer (momentum 0.99, epsilon 1e-3); D's always uses batch
statistics, as in `dcgan.Discriminator`.

The projection's embedding has h's size (7*7*channels[-1] for two convolutions), so `cond` and
`embed_dim` do not apply to it: with `projection=True` they shape G's conditioning only. It
starts from the named kernel initializer, so that <embed(y), h> starts on the scale of
Dense 1 (h); the conditioning embedding starts from Flax's default (N(0, 1) entries).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen.models import layers
from jaxgen.models.dcgan import NORMS, _norm_layer

CONDS = ("embed", "onehot")


def _condition(labels: jax.Array | None, batch: int, cond: str, num_classes: int,
               embed_dim: int) -> jax.Array:
    """(B,) int labels -> (B, embed_dim) learned embeddings or (B, num_classes) one-hot vectors.
    Call inside an `nn.compact` method: the embedding becomes the caller's `label_embed`."""
    if labels is None:
        raise ValueError("a conditional GAN needs labels: an int array (batch,) of digit classes")
    if labels.shape != (batch,):
        raise ValueError(f"labels of shape {labels.shape}: expected ({batch},), one per image")
    if cond == "embed":
        return nn.Embed(num_classes, embed_dim, name="label_embed")(labels)
    if cond == "onehot":
        return jax.nn.one_hot(labels, num_classes)
    raise ValueError(f"unknown conditioning {cond!r}; choose one of {CONDS}")


class Generator(nn.Module):
    num_classes: int = 10
    cond: str = "embed"
    embed_dim: int = 16
    width: int = 64
    depth: int = 1
    activation: str = "leaky_relu"
    slope: float = 0.2
    kernel_init: str = "glorot_uniform"
    bias_init: float = 0.0
    norm: str = "batch"
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, z: jax.Array, train: bool, labels: jax.Array) -> jax.Array:
        """(B, z_dim) noise and (B,) int labels -> (B, 28, 28, 1) images in [-1, 1]. `train=True`
        normalizes with batch statistics, `train=False` with the moving averages."""
        init = layers.kernel_and_bias_init(self.kernel_init, self.bias_init)
        act = layers.activation(self.activation, self.slope)
        norm = _norm_layer(self.norm, use_running_average=not train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon)
        c = _condition(labels, z.shape[0], self.cond, self.num_classes, self.embed_dim)
        x = nn.Dense(7 * 7 * 2 * self.width, **init)(jnp.concatenate([z, c], axis=-1))
        x = act(norm()(x)).reshape(-1, 7, 7, 2 * self.width)
        x = act(norm()(layers.ConvTranspose(self.width, (3, 3), strides=(2, 2), **init)(x)))
        for _ in range(self.depth - 1):
            x = act(norm()(layers.Conv(self.width, (3, 3), **init)(x)))
        return jnp.tanh(layers.ConvTranspose(1, (3, 3), strides=(2, 2), **init)(x))


class Discriminator(nn.Module):
    num_classes: int = 10
    cond: str = "embed"  # concat D only; the projection's embedding has h's size
    embed_dim: int = 16
    channels: tuple[int, ...] = (32, 64)
    dropout: float = 0.3
    projection: bool = False
    activation: str = "leaky_relu"
    slope: float = 0.2
    kernel_init: str = "glorot_uniform"
    bias_init: float = 0.0
    norm: str = "batch"
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = False,
                 labels: jax.Array | None = None) -> jax.Array:
        """(B, 28, 28, 1) images and (B,) int labels -> (B,) logits. Batch norm always uses
        batch statistics (make `batch_stats` mutable); dropout is on unless `deterministic`."""
        if labels is None:  # checked here too: the projection path never calls `_condition`
            raise ValueError("the conditional discriminator needs labels: an int array (batch,)")
        init = layers.kernel_and_bias_init(self.kernel_init, self.bias_init)
        act = layers.activation(self.activation, self.slope)
        norm = _norm_layer(self.norm, use_running_average=False, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon)
        for channels in self.channels:
            x = act(norm()(layers.Conv(channels, (3, 3), strides=(2, 2), **init)(x)))
        h = layers.Dropout(self.dropout, deterministic=deterministic)(x.reshape(x.shape[0], -1))
        if not self.projection:
            c = _condition(labels, h.shape[0], self.cond, self.num_classes, self.embed_dim)
            return nn.Dense(1, **init)(jnp.concatenate([h, c], axis=-1))[:, 0]
        if labels.shape != (h.shape[0],):
            raise ValueError(f"labels of shape {labels.shape}: expected ({h.shape[0]},)")
        # Projection (Miyato & Koyama 2018, eq. 3): psi(h) + <V y, h>, y one-hot, V an embedding
        v = nn.Embed(self.num_classes, h.shape[-1], embedding_init=init["kernel_init"],
                     name="projection")(labels)
        return nn.Dense(1, **init)(h)[:, 0] + jnp.sum(v * h, axis=-1)


def sample(generator: Generator, variables, key: jax.Array, labels: jax.Array, z_dim: int,
           train: bool = False) -> jax.Array:
    """One image per requested label, z ~ U(-1, 1) as the trainer draws it: (n,) -> (n, 28, 28, 1).
    `train=False` normalizes with batch norm's moving averages; `train=True` with the batch's
    statistics (the updated averages are dropped)."""
    z = jax.random.uniform(key, (labels.shape[0], z_dim), minval=-1.0, maxval=1.0)
    if train and "batch_stats" in variables:
        return generator.apply(variables, z, True, labels, mutable=["batch_stats"])[0]
    return generator.apply(variables, z, train, labels)


def default_model_config() -> ml_collections.ConfigDict:
    """The `model` sub-config of a conditional DCGAN small enough to train on a 2-core CPU."""
    m = ml_collections.ConfigDict()
    m.arch = "cgan"
    m.num_classes = 10
    m.cond = "onehot"  # "onehot" (num_classes inputs, Mirza & Osindero) or "embed" (learned)
    m.embed_dim = 16  # the conditioning input size when cond="embed"
    m.g_width = 64  # G: Dense 7*7*2w, ConvT w, then ConvT 1
    m.g_depth = 1  # number of width-w layers at 14x14 (>= 1: the ConvT, then depth-1 convs)
    m.d_channels = (32, 64)
    m.d_dropout = 0.3
    m.projection = False  # D: projection (Miyato & Koyama 2018) instead of concatenation
    m.activation = "leaky_relu"
    m.slope = 0.2
    m.kernel_init = "glorot_uniform"
    m.bias_init = 0.0
    m.norm = "batch"  # "batch" (G and D) or "none"
    m.bn_momentum = 0.99  # TF's batch norm
    m.bn_epsilon = 1e-3
    return m


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_model_config(model: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field of the `model` sub-config and its allowed
    values."""
    num_classes = model.get("num_classes", 10)
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(f"model.num_classes={num_classes!r}: must be an int >= 2")
    if model.cond not in CONDS:
        raise ValueError(f"model.cond={model.cond!r}: choose one of {', '.join(CONDS)}")
    for field in ("embed_dim", "g_width", "g_depth"):
        if not _is_int(model[field]) or model[field] < 1:
            raise ValueError(f"model.{field}={model[field]!r}: must be an int >= 1")
    channels = model.d_channels
    if (not isinstance(channels, tuple | list) or not channels
            or not all(_is_int(c) and c >= 1 for c in channels)):
        raise ValueError(f"model.d_channels={channels!r}: must be a non-empty tuple of ints >= 1")
    if not isinstance(model.d_dropout, int | float) or not 0.0 <= model.d_dropout < 1.0:
        raise ValueError(f"model.d_dropout={model.d_dropout!r}: must be a float in [0, 1)")
    if not isinstance(model.projection, bool):
        raise ValueError(f"model.projection={model.projection!r}: must be True or False")
    if model.norm not in NORMS:
        raise ValueError(f"model.norm={model.norm!r}: choose one of {', '.join(NORMS)}")
    if not 0.0 <= model.bn_momentum < 1.0:
        raise ValueError(f"model.bn_momentum={model.bn_momentum!r}: must be in [0, 1)")
    if not model.bn_epsilon > 0.0:
        raise ValueError(f"model.bn_epsilon={model.bn_epsilon!r}: must be > 0")
    for field, check in (("activation", lambda v: layers.activation(v, model.slope)),
                         ("kernel_init", layers.kernel_init)):
        try:
            check(model[field])
        except ValueError as e:
            raise ValueError(f"model.{field}: {e}") from None


def make_models(model: ml_collections.ConfigDict) -> tuple[Generator, Discriminator]:
    """G and D from the `model` sub-config (`default_model_config` lists its fields)."""
    check_model_config(model)
    shared = dict(num_classes=model.get("num_classes", 10), cond=model.cond,
                  embed_dim=model.embed_dim, activation=model.activation, slope=model.slope,
                  kernel_init=model.kernel_init, bias_init=model.bias_init, norm=model.norm,
                  bn_momentum=model.bn_momentum, bn_epsilon=model.bn_epsilon)
    g = Generator(width=model.g_width, depth=model.g_depth, **shared)
    d = Discriminator(channels=tuple(model.d_channels), dropout=model.d_dropout,
                      projection=model.projection, **shared)
    return g, d
