"""`python -m guidescope.train`: training the UNet, the classifiers and the evaluator (guidescope.training.command says how)."""
import sys

from .training.command import main

if __name__ == "__main__":
    sys.exit(main())
