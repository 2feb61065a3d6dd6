"""Stable Diffusion 1.x fine-tuned on a folder of captioned images (`jaxgen.trainers.sd_finetune`):
the UNet trains, the VAE and CLIP text encoder stay frozen; diffusers' Flax classes.

Command (a local copy of the pipeline in diffusers' layout, Flax or PyTorch weights; an image
folder with a metadata.jsonl of {"file_name", "text"} lines):
    python experiments/run.py --exp=sd_finetune --workdir=runs/sd_finetune \\
        --config.pretrained=PATH/TO/stable-diffusion-v1-5 --data_dir=PATH/TO/images

Scale: 512x512 images, batch 1 per device (set --config.batch_size to the device count or a
multiple), AdamW at 1e-4 (weight decay 1e-2, as diffusers' script), 500 warmup steps then cosine
decay to 0 over the rest of the run, gradient clipping at 1, bf16 compute, EMA 0.9999 of the
UNet; validation loss on 8 held-out pairs and 4 sample prompts (25 DDIM steps, guidance 7.5)
every 500 steps; 10 epochs.

Runtime: not measured (no GPU and no weights were available to jaxgen so far); a GPU of the
A100/H100 class is the intended machine. The tiny pipeline's step takes about 50 ms on a 2-core
CPU (`sd_finetune_tiny`).
Memory: about 22-26 GB of device memory at batch 1 with EMA (README's Stable
Diffusion section gives the arithmetic).

Expected result: the validation loss falls slowly (fine-tuning moves a pretrained model a
little; the loss is dominated by its noise floor, around 0.1 for SD 1.x) and the samples take on
the style and subjects of the folder within a few thousand steps; `<workdir>/<run>/pipeline/`
holds the fine-tuned pipeline. `sd_finetune_tiny` runs the same code on a tiny random pipeline.
"""

from jaxgen import optim


def get_config():
    from ml_collections import ConfigDict

    c = ConfigDict()
    c.trainer = "sd_finetune"
    c.pretrained = ""  # a local pipeline folder in diffusers' layout (required)
    c.data_dir = ""  # the image folder (or --data_dir)
    c.resolution = 0  # the training images' size; 0: the pipeline's own (its VAE's sample_size)
    c.crop = "center"  # or "random" (along the longer side)
    c.random_flip = False
    c.val_examples = 8  # pairs held out for the validation loss
    c.data_seed = 0  # the held-out pairs, the data order and the augmentation
    c.batch_size = 1
    c.epochs = 10
    c.learning_rates = (1e-4,)
    c.seeds = (0,)
    c.optimizer = optim.default_config("adamw")
    c.optimizer.weight_decay = 1e-2
    c.optimizer.clip_norm = 1.0
    c.optimizer.schedule.name = "cosine"
    c.optimizer.schedule.warmup_steps = 500
    c.optimizer.schedule.decay_steps = 0  # the rest of the run
    c.ema_decay = 0.9999  # 0: no moving average
    c.bf16 = True  # compute dtype of the UNet and VAE; parameters and Adam moments stay fp32
    c.fast_compile = False  # True: XLA backend optimizations off (tiny models on CPU)
    # Also write PyTorch weights into the saved pipeline (needs torch), for diffusers' PyTorch
    # StableDiffusionPipeline.from_pretrained(PATH) (diffusers 0.39's from_flax=True fails).
    c.export_pytorch = False
    c.max_skipped_steps = 10  # non-finite steps before the run is stopped as diverged
    c.sample_prompts = ("a photo of a cat", "a painting of a lighthouse at dusk",
                        "a red bicycle leaning on a wall", "a bowl of fruit on a table")
    c.num_inference_steps = 25
    c.guidance_scale = 7.5
    c.sample_seed = 0  # the fixed noise of the samples and of the validation loss
    c.log_every_steps = 50
    c.eval_every_steps = 500  # validation loss and samples (and at the end)
    c.checkpoint_every_steps = 500  # (and at the end)
    c.keep_checkpoints = 2
    c.tensorboard = True
    c.sweep_mode = "sequential"
    c.mesh_sweep = 1
    c.variants = ()
    return c
