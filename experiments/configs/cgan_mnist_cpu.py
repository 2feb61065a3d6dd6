"""The conditional GAN study at the scale a 2-core CPU runs in about half an hour: the published
jaxgen answer until a full-scale run replaces it.

Command:
    python experiments/run.py --exp=cgan_mnist_cpu --workdir=runs/cgan_mnist_cpu
    python experiments/report.py --workdir=runs/cgan_mnist_cpu \\
        --publish=experiments/results/cgan_mnist_cpu

Conditioning {one-hot, embedding 4, 64} x G width {32, 64} x b1 {0.5, 0.9}: 12 variants x 2 seeds
= 24 runs, lr 0.0002, batch 100, 3 epochs over the first 10,000 training images (100 steps
each: 300 steps per run, 2.7% of the full study's 11,000), evaluated every epoch on 2,000
samples (200 asked of each digit) against the 10,000 MNIST test images. Every variant of a
width trains as one vmapped sweep (the conditioning and b1 change the compiled setup, so in
practice each variant is a sweep of its two seeds).

Runtime: 2-core CPU, 58 minutes for the 24 runs (measured while the StyleGAN study and tests
shared the CPU; about half that alone, by the step benchmark). One GPU: not measured (none was
available).
Expected result (experiments/results/cgan_mnist_cpu/report.md; the early phase only): G's width
matters most (every width-64 setting reaches eval/fd < 50, none of width 32, where D overpowers
G from step 40); b1 0.5 beats 0.9 at width 64; the conditioning size is within noise; no setting
draws the asked-for digit yet (eval/cond_acc at chance, 0.1).
"""

import os

from jaxgen.config import load_config

here = os.path.dirname(os.path.abspath(__file__))


def get_config():
    c = load_config("cgan_mnist", here)
    c.epochs = 3
    c.train_examples = 10000
    c.seeds = (0, 1)
    c.eval_examples = 1000
    c.eval_samples = 2000
    c.fd_threshold = 50.0
    c.log_every_steps = 20
    c.variants = _variants()
    return c


def _variants():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cgan_mnist_variants",
                                                  os.path.join(here, "cgan_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.variants(("onehot", "emb4", "emb64"), (64, 32), (0.5, 0.9))
