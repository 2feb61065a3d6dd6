"""Retrains the evaluator's MNIST classifier (about 10 minutes on a 2-core CPU) and saves its
weights: python experiments/train_classifier.py --data_dir=../shared/datasets [--out=PATH]
[--epochs=8]. Without --out it overwrites the shipped weights."""

import sys

from jaxgen.cli import classifier_main, guarded

if __name__ == "__main__":
    guarded(lambda: classifier_main(sys.argv[1:]))
