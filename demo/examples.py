"""Settings worth a look, each loaded into the controls by one click (Understand tab)."""
from __future__ import annotations

from dataclasses import dataclass

from .settings import DEFAULTS


@dataclass(frozen=True)
class Example:
    title: str
    note: str                   # what to look for
    tab: str                    # "generate" or "compare": the tab the click opens
    class_name: str             # a Fashion-MNIST name; other checkpoints fall back to the default class
    scale: float = DEFAULTS.scale
    unet: str = DEFAULTS.unet
    cfg_scale: float = DEFAULTS.cfg_scale
    steps: int = DEFAULTS.steps
    sampler: str = DEFAULTS.sampler
    eta: float = DEFAULTS.eta
    num_images: int = DEFAULTS.num_images
    seed: int = DEFAULTS.seed
    strengths: str = DEFAULTS.strengths
    compare: str = DEFAULTS.compare


EXAMPLES = (
    Example("Strength sweep", "Row w=0 is the unconditional model: a mix of every class. As w grows "
            "the rows turn into sneakers, the confidence column rises and the diversity column falls.",
            "compare", "Sneaker", strengths="0, 1, 2, 4, 8"),
    Example("Too much guidance", "Far past the useful range the classifier's gradient overwhelms the "
            "model: harsh, saturated shapes that the guidance classifier still rates highly. The "
            "evaluator, a different network, is harder to fool.",
            "compare", "Ankle boot", strengths="0, 10, 30, 100", num_images=6),
    Example("Classifier vs classifier-free", "Each method alone at matched strengths, from the same "
            "noise: classifier guidance on the unconditional UNet against the conditional UNet "
            "pushed away from its unconditional prediction.",
            "compare", "Dress", strengths="1, 3", compare="classifier-vs-free", num_images=6),
    Example("Classifier-free sweep", "w_cfg = 0 is the plain conditional model; larger w_cfg trades "
            "diversity for class fidelity, like classifier guidance but without a classifier's gradient.",
            "compare", "Shirt", scale=0.0, unet="conditional", strengths="0, 1, 3, 6", compare="classifier-free"),
    Example("Watch the class appear", "Follow the chart: the classifier's belief in the class stays low "
            "while x_t is mostly noise, then climbs as x̂_0 settles. Scrub back afterwards.",
            "generate", "Bag", scale=4.0, steps=50),
    Example("Stochastic DDPM", "Ancestral sampling adds fresh noise every step: x_t stays grainy until "
            "the end and the chart jitters, while x̂_0 is already clean.",
            "generate", "Trouser", scale=2.0, steps=100, sampler="ddpm"),
    Example("One step", "A single jump from x_T to x̂_0: the model's blurry average of what the "
            "noise could be. Guidance sharpens it only a little.",
            "compare", "Pullover", steps=1, strengths="0, 4, 16"),
)
