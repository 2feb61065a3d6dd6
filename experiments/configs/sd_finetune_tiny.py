"""`sd_finetune` at CPU scale: a tiny random Stable Diffusion pipeline
(`jaxgen.sd.make_tiny_pipeline`: a 184k-parameter UNet, 15k-parameter VAE, 10k-parameter text
encoder) fine-tuned at 16x16 on generated coloured shapes ("a red square", ...;
`jaxgen.image_folder.write_shapes_folder`). Its images mean nothing: it runs the whole of the
real code path (loading with `from_pretrained`, caching, the train step, validation, sampling,
checkpoints, the saved pipeline) in seconds.

Command:
    python -c "from jaxgen import sd, image_folder; sd.make_tiny_pipeline('runs/tiny_sd'); \\
        image_folder.write_shapes_folder('runs/shapes', n=40)"
    python experiments/run.py --exp=sd_finetune_tiny --workdir=runs/sd_finetune_tiny

Runtime: 2-core CPU, about 50 ms per train step (batch 4, measured) after about 10 s of
compilation (`fast_compile`); the default 4 epochs of 9 steps take under a minute in all. GPU:
not measured.

Expected result: the train loss falls from about 1 toward 0.5 within a few dozen steps and the
validation loss with it (a random UNet first learns the noise's scale); the samples are
coloured noise. `runs/sd_finetune_tiny/lr0.001_seed0/pipeline/` loads with
`FlaxStableDiffusionPipeline.from_pretrained(..., safety_checker=None, feature_extractor=None)`.
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("sd_finetune", os.path.dirname(os.path.abspath(__file__)))
    c.pretrained = "runs/tiny_sd"
    c.data_dir = "runs/shapes"
    c.resolution = 16
    c.random_flip = True  # exercises the per-step VAE encoding
    c.val_examples = 4
    c.batch_size = 4
    c.epochs = 4
    c.learning_rates = (1e-3,)
    c.optimizer.schedule.warmup_steps = 2
    c.optimizer.schedule.decay_steps = 1000  # its own length: runs of any length share a step
    c.ema_decay = 0.9
    c.bf16 = False
    c.fast_compile = True
    c.sample_prompts = ("a red square", "a blue circle")
    c.num_inference_steps = 2
    c.guidance_scale = 2.0
    c.log_every_steps = 2
    c.eval_every_steps = 0  # at the end only
    c.checkpoint_every_steps = 4
    c.tensorboard = False
    return c
