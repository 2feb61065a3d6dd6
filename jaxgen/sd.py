"""Stable Diffusion through diffusers' Flax classes: loading a pipeline folder, saving a fine-tuned
one, and a tiny pipeline for tests, notebooks and trying the code without weights.

A pipeline folder has diffusers' layout (`model_index.json` and the subfolders `unet`, `vae`,
`text_encoder`, `tokenizer`, `scheduler`, and optionally `safety_checker` and
`feature_extractor`), with Flax weights (`*.msgpack`, as `FlaxStableDiffusionPipeline`
saves them) or PyTorch weights (`*.safetensors` / `*.bin`, as the Stable Diffusion 1.x releases
ship them, loaded with `from_pt=True`, which needs torch); `weights_are_pytorch` tells which.

The pins: `diffusers==0.39.*` and `transformers>=4.57,<5`, the last releases with Flax classes
(`FlaxUNet2DConditionModel`, `FlaxAutoencoderKL`, `FlaxDDPMScheduler`, `FlaxCLIPTextModel`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import UserError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
FLAX_WEIGHTS = ("diffusion_flax_model.msgpack", "flax_model.msgpack")
PT_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
              "model.safetensors", "pytorch_model.bin")
GET_WEIGHTS = (
    "Fix: on a machine with internet, download a Stable Diffusion 1.x pipeline in diffusers' "
    "layout, e.g. `huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 "
    "--include '*.json' '*.txt' '*.safetensors' --exclude '*ema*' '*fp16*' --local-dir "
    "sd15` (or in Python: `FlaxStableDiffusionPipeline.from_pretrained(NAME, from_pt=True)` "
    "then `pipeline.save_pretrained(PATH, params=params)`), copy it here, and pass "
    "--config.pretrained=PATH. To try the code without weights, write the tiny pipeline with "
    "`python -c \"from jaxgen import sd; sd.make_tiny_pipeline('tiny_sd')\"`.")


@contextlib.contextmanager
def quiet():
    """Silences diffusers' and transformers' deprecation and loading chatter (the Flax classes
    warn on every use that they will be removed in diffusers 0.40, which the pin avoids)."""
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def weights_are_pytorch(path: str) -> bool:
    """Whether the pipeline folder's UNet has PyTorch weights only (then every component is
    loaded with `from_pt=True`); raises `UserError` if the folder is not a pipeline."""
    if not path:
        raise UserError("No pretrained pipeline given (--config.pretrained is empty). "
                        + GET_WEIGHTS)
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise UserError(f"{path} is not a diffusers pipeline folder (no model_index.json). "
                        + GET_WEIGHTS)
    missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(path, c))]
    if missing:
        raise UserError(f"The pipeline folder {path} lacks {', '.join(missing)}/. " + GET_WEIGHTS)
    files = set(os.listdir(os.path.join(path, "unet")))
    if files & set(FLAX_WEIGHTS):
        return False
    if files & set(PT_WEIGHTS):
        return True
    raise UserError(f"{path}/unet holds no weights ({', '.join(FLAX_WEIGHTS + PT_WEIGHTS)}). "
                    + GET_WEIGHTS)


def _component_config(path: str, component: str) -> dict:
    file = os.path.join(path, component, "config.json")
    try:
        with open(file) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"Cannot read {file} ({e}): {path} is not a complete pipeline folder in "
                        "diffusers' layout. Fix: point --config.pretrained at one.") from None


def native_resolution(path: str) -> int:
    """The image size a pipeline was made for: its VAE's `sample_size` (512 for SD 1.x)."""
    return int(_component_config(path, "vae")["sample_size"])


def training_resolution(config) -> int:
    """A fine-tuning run's image size: `config.resolution`, or (0) the pipeline's own
    (`native_resolution`)."""
    return config.resolution or native_resolution(config.pretrained)


def attention_bytes(path: str, resolution: int, batch: int) -> int:
    """An estimate of the memory of the UNet's largest self-attention at `resolution`, for a
    batch of `batch` latents: the attention scores and their softmax, fp32, of the first level
    with attention, whose tokens are every pixel of its latents (a number that grows with the
    fourth power of the resolution)."""
    vae, unet = _component_config(path, "vae"), _component_config(path, "unet")
    side = resolution // 2 ** (len(vae["block_out_channels"]) - 1)
    heads = unet.get("num_attention_heads") or unet.get("attention_head_dim") or 8
    for level, block in enumerate(unet["down_block_types"]):
        if "Attn" in block:
            tokens = (side // 2 ** level) ** 2
            level_heads = heads[level] if isinstance(heads, (list, tuple)) else heads
            return 2 * 4 * batch * int(level_heads) * tokens ** 2
    return 0


def available_memory() -> int:
    """Bytes the first device may use (its allocator's limit), or the host's memory on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def load_pipeline(path: str, dtype=jnp.float32):
    """(pipeline, params): `FlaxStableDiffusionPipeline.from_pretrained` of a local folder, each
    component loaded by its class's `from_pretrained` (`FlaxUNet2DConditionModel`,
    `FlaxAutoencoderKL`, `FlaxCLIPTextModel`, the folder's scheduler, `CLIPTokenizer`), from
    PyTorch weights if the folder has no Flax ones. `dtype` is the UNet's and VAE's compute
    dtype; the parameters stay as stored (fp32 in the releases)."""
    from diffusers import FlaxStableDiffusionPipeline

    from_pt = weights_are_pytorch(path)
    with quiet():
        return FlaxStableDiffusionPipeline.from_pretrained(
            path, dtype=dtype, from_pt=from_pt, **absent_components(path))


def absent_components(path: str) -> dict:
    """`{name: None}` for the optional components that the folder's model_index.json lists as
    null (a pipeline saved without a safety checker): the Flax pipeline's `from_pretrained`
    must be passed them, or it refuses the folder."""
    with open(os.path.join(path, "model_index.json")) as f:
        index = json.load(f)
    return {name: None for name in ("safety_checker", "feature_extractor")
            if (index.get(name) or [None])[0] is None}


def load_noise_scheduler(path: str):
    """(FlaxDDPMScheduler, its state) from the folder's `scheduler/` config: the noise schedule
    the UNet was trained with (SD 1.x: scaled_linear betas 0.00085 to 0.012 over 1000 steps),
    whichever sampler class the folder names."""
    from diffusers import FlaxDDPMScheduler

    with quiet():
        return FlaxDDPMScheduler.from_pretrained(path, subfolder="scheduler")


def save_pipeline(pipeline, params: dict, unet_params, path: str) -> str:
    """Saves `pipeline` in diffusers' layout with `unet_params` in place of its UNet's
    (`save_pretrained`; fp32 weights); returns `path`. Loadable by
    `FlaxStableDiffusionPipeline.from_pretrained(path)` and, with torch,
    `add_pytorch_weights(path)` (PyTorch's `StableDiffusionPipeline.from_pretrained(path)`)."""
    params = {**params, "unet": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), unet_params)}
    with quiet():
        pipeline.save_pretrained(path, params=jax.device_get(params))
    return path


def add_pytorch_weights(path: str) -> str:
    """Writes PyTorch weights (safetensors) beside the Flax ones of a saved pipeline folder, for
    diffusers' PyTorch `StableDiffusionPipeline.from_pretrained(path)`; needs torch. The Flax
    classes still load the folder (they read the `.msgpack` files). Needed because diffusers
    0.39's own `from_pretrained(..., from_flax=True)` converts a model's Flax weights and then
    reads the `.msgpack` file as a PyTorch checkpoint, which fails."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.modeling_pytorch_flax_utils import (
        load_flax_checkpoint_in_pytorch_model as load_diffusers,
    )
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.modeling_flax_pytorch_utils import (
        load_flax_checkpoint_in_pytorch_model as load_transformers,
    )

    with quiet():
        for cls, name in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
            model = cls.from_config(cls.load_config(path, subfolder=name))
            load_diffusers(model, os.path.join(path, name, FLAX_WEIGHTS[0])).save_pretrained(
                os.path.join(path, name))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(path, subfolder="text_encoder"))
        load_transformers(text, os.path.join(path, "text_encoder", FLAX_WEIGHTS[1])
                          ).save_pretrained(os.path.join(path, "text_encoder"))
    return path


# The tiny pipeline: a character-level CLIP tokenizer (no merges: each word is its letters, the
# last one marked "</w>" as CLIP marks word ends) and components of a few thousand to ~100k
# parameters. Its images mean nothing; it exercises the same code as SD 1.x.
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'-!?"
TINY_MAX_LENGTH = 16


def _write_tiny_tokenizer(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(_CHARS) + [c + "</w>" for c in _CHARS]
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")


def make_tiny_pipeline(path: str, resolution: int = 16, seed: int = 0) -> str:
    """Writes a tiny, randomly initialized Stable Diffusion pipeline to `path` in diffusers'
    layout (Flax weights, a DDIM scheduler with SD 1.x's noise schedule, no safety checker) and
    returns `path`. The VAE halves the resolution (SD's divides it by 8); the UNet works on
    (resolution / 2)^2 latents of 4 channels; text embeddings are 16 tokens of 32 numbers."""
    from diffusers import (
        FlaxAutoencoderKL,
        FlaxDDIMScheduler,
        FlaxStableDiffusionPipeline,
        FlaxUNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTokenizer, FlaxCLIPTextModel

    if resolution % 8:
        raise ValueError(f"resolution {resolution} is not a multiple of 8 (the pipeline's rule)")
    with quiet():
        _write_tiny_tokenizer(os.path.join(path, "tokenizer"))
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer"),
                                                  model_max_length=TINY_MAX_LENGTH)
        text_encoder = FlaxCLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32,
            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=TINY_MAX_LENGTH,
            bos_token_id=0, eos_token_id=1, pad_token_id=1), _do_init=False)
        vae = FlaxAutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                                down_block_types=("DownEncoderBlock2D",) * 2,
                                up_block_types=("UpDecoderBlock2D",) * 2,
                                block_out_channels=(8, 8), layers_per_block=1,
                                norm_num_groups=4, sample_size=resolution)
        # diffusers' Flax UNet normalizes in 32 groups, so 32 channels is its narrowest; one
        # level with cross-attention and no middle block keeps its compile time at seconds.
        unet = FlaxUNet2DConditionModel(
            sample_size=resolution // 2, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
            block_out_channels=(32,), layers_per_block=1, mid_block_type=None,
            attention_head_dim=8, cross_attention_dim=32)
        scheduler = FlaxDDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                      beta_schedule="scaled_linear", clip_sample=False,
                                      set_alpha_to_one=False, steps_offset=1)
        key = jax.random.PRNGKey(0)  # shapes only: nothing is drawn from it
        params = {
            "text_encoder": _random_like(jax.eval_shape(
                lambda k: text_encoder.init_weights(k, (1, TINY_MAX_LENGTH)), key), seed),
            "vae": _random_like(jax.eval_shape(vae.init_weights, key), seed + 1),
            "unet": _random_like(jax.eval_shape(unet.init_weights, key), seed + 2),
            "scheduler": scheduler.create_state()}
        pipeline = FlaxStableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None)
        pipeline.save_pretrained(path, params=params)
    return path


def _random_like(shapes, seed: int):
    """Parameters of the shapes of `shapes` as Flax initializes them by default (scales 1,
    biases 0, kernels and embeddings LeCun-normal), drawn with NumPy without running the model:
    `init` would compile it (seconds) or run it op by op (tens of seconds), and `jax.random`
    compiles once per shape."""
    rng = np.random.default_rng(seed)

    def init(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name == "bias" or len(leaf.shape) < 2:
            return np.zeros(leaf.shape, np.float32)
        fan_in = math.prod(leaf.shape[:-1])
        return (rng.standard_normal(leaf.shape) / math.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(init, shapes)


def num_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def load_sampler(path: str):
    """(FlaxDDIMScheduler, its state) from the folder's `scheduler/` config: the sampler for
    sample images while training (SD 1.x's config sets steps_offset 1, no clipping)."""
    from diffusers import FlaxDDIMScheduler

    with quiet():
        return FlaxDDIMScheduler.from_pretrained(path, subfolder="scheduler")


PIPELINE_DIR = "pipeline"  # <run>/pipeline: a fine-tuned run's pipeline, in diffusers' layout


def sample_steps(run_dir: str) -> list[int]:
    """The steps of a fine-tuning run's saved samples (`<run>/samples/step_XXXXXX.png`)."""
    folder = os.path.join(run_dir, "samples")
    if not os.path.isdir(folder):
        return []
    return sorted(int(f[5:11]) for f in os.listdir(folder)
                  if f.startswith("step_") and f.endswith(".png"))
