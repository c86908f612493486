"""The Understand tab's text for one model: demo/explain.md without the parts that do not apply.

explain.md marks a part that applies to some models only with two HTML comments, each on a line
of its own:

    <!-- only: latent -->
    ...
    <!-- end -->

The tag is a value of guidescope.bundle.Bundle.space ("pixel", "latent") or Bundle.variance
("small", "learned": a guided-diffusion ADM model that predicts its own variance); the part is
kept when the model has that value. Parts do not nest.
"""
from __future__ import annotations

import re
from pathlib import Path

from guidescope.codec import LatentCodec, PixelCodec
from guidescope.messages import choice
from guidescope.samplers import VARIANCES

SOURCE = Path(__file__).with_name("explain.md")
SPACES = (PixelCodec.space, LatentCodec.space)
TAGS = SPACES + VARIANCES
PART = re.compile(r"^<!-- only: (?P<tag>\S+) -->\n(?P<body>.*?)^<!-- end -->\n", re.MULTILINE | re.DOTALL)


def explanation(space: str, variance: str) -> str:
    """The Markdown (with $...$ and $$...$$ LaTeX) that explains sampling and guidance on a model
    whose Bundle.space is `space` (SPACES) and Bundle.variance `variance` (VARIANCES): the parts of
    explain.md tagged with either value, with every other tagged part and every marker left out.
    Raises ValueError for a value outside those choices, and for a marker in explain.md with an
    unknown tag, without its pair, or nested in another part."""
    choice(space, "space", SPACES)
    choice(variance, "variance", VARIANCES)

    def keep(part: re.Match) -> str:
        return part["body"] if choice(part["tag"], "an explain.md part's tag", TAGS) in (space, variance) else ""

    text = PART.sub(keep, SOURCE.read_text())
    if "<!--" in text:
        raise ValueError("explain.md has a marker without its pair, or one part inside another")
    return re.sub(r"\n{3,}", "\n\n", text)  # a part left out leaves no gap wider than a blank line
