"""The StyleGAN study at the scale a 2-core CPU runs in about half an hour: the published jaxgen
answer until a full-scale run replaces it.

Command:
    python experiments/run.py --exp=stylegan_mnist_cpu --workdir=runs/stylegan_mnist_cpu
    python experiments/report.py --workdir=runs/stylegan_mnist_cpu \\
        --publish=experiments/results/stylegan_mnist_cpu

`stylegan_mnist`'s losses and optimizer with a narrower model (G channels (32, 32, 16, 8), D
channels (8, 16, 32, 32), w 64: about 4x cheaper per step); lr {0.0002, 0.001, 0.0025} x batch
{32, 64} x seeds {0, 1}: 12 runs, 4 epochs over the first 3,200 training images (100 steps per
epoch at batch 32, 50 at 64: the same images seen, half the updates at 64), evaluated every
epoch on 1,920 samples against the 10,000 MNIST test images, so that the collapse alerts have
four evaluations to compare. G's average uses a half-life of 10,000 images with the 0.05
ramp-up, which at 12,800 images seen leaves it at 640 images.

Runtime: 2-core CPU, 53 minutes for the 12 runs (measured while the conditional GAN study and
tests shared the CPU). One GPU: not measured (none was available).
Expected result (experiments/results/stylegan_mnist_cpu/report.md; the early phase only): no
setting draws clean digits yet (final eval/fd 67 to 111, recall near 0); lr 0.0025 at batch 64
ranks first (67.5 +- 1.4) and the source's lr 0.001 at batch 32 second (73.4 +- 2.8); lr 0.001
at batch 64 collapses to one digit in both seeds; 10 of the 12 runs raise a mode-collapse alert.
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("stylegan_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.epochs = 4
    c.train_examples = 3200
    c.model.g_channels = (32, 32, 16, 8)
    c.model.d_channels = (8, 16, 32, 32)
    c.model.w_dim = 64
    c.seeds = (0, 1)
    c.eval_examples = 960
    c.eval_samples = 1920
    c.fd_threshold = 100.0
    c.log_every_steps = 20
    return c
