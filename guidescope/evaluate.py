"""`python -m guidescope.evaluate`: the evaluation that measures guidance and chooses the app's defaults (guidescope.evaluation.command says how)."""
import sys

from .evaluation.command import main

if __name__ == "__main__":
    sys.exit(main())
