"""Settings worth a look, each loaded into the controls by one click (Understand tab). An example
names only what it changes; everything else is the page's defaults (settings.AppDefaults, from
the loaded checkpoints)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .settings import AppDefaults


@dataclass(frozen=True)
class Example:
    title: str
    note: str                   # what to look for
    tab: str                    # "generate" or "compare": the tab the click opens
    changes: dict = field(default_factory=dict)  # AppDefaults fields; a class_name from Fashion-MNIST
                                                 # (other checkpoints keep their default class)
    tuned: dict = field(default_factory=dict)    # space ("pixel", "latent") -> changes for that model only

    def settings(self, defaults: AppDefaults, class_names: tuple[str, ...], space: str = "pixel") -> AppDefaults:
        """The example on a model: its defaults (what its evaluation chose), then the changes, then
        those tuned for its space."""
        changes = {**self.changes, **self.tuned.get(space, {})}
        name = changes.pop("class_name", None)
        if name in class_names:
            changes["class_index"] = class_names.index(name)
        return replace(defaults, **changes)


EXAMPLES = (
    Example("Strength sweep", "Row w=0 is the unconditional model: a mix of every class. As w grows "
            "the rows turn into sneakers: the evaluator's confidence column climbs from near 0 at w=0 "
            "to above 0.9 at w=8, and the diversity column falls.",
            "compare", dict(class_name="Sneaker", compare="classifier", strengths="0, 1, 2, 4, 8")),
    Example("Past the useful range", "More w stops buying anything: from w=10 both networks are all but "
            "sure of the class (both confidence columns at 0.99 or more), and w=30 or 100 adds nothing, "
            "because the x̂₀ threshold holds every prediction in range. Set the threshold to none and "
            "compare again to see large w drive the images out of range.",
            "compare", dict(class_name="Ankle boot", compare="classifier", strengths="0, 10, 30, 100",
                            num_images=6)),
    Example("Classifier vs classifier-free", "Each method alone at matched strengths, from the same "
            "noise: classifier guidance on the unconditional UNet against the conditional UNet "
            "pushed away from its unconditional prediction. At s = 1 classifier-free guidance is "
            "already surer of the class than classifier guidance; classifier guidance needs s = 3 to "
            "close most of the gap.",
            "compare", dict(class_name="Dress", strengths="1, 3", compare="classifier-vs-free", num_images=6)),
    Example("Classifier-free sweep", "w_cfg = 0 is the plain conditional model; larger w_cfg trades "
            "diversity for class fidelity, like classifier guidance but without a classifier's "
            "gradient: the evaluator's confidence climbs with w_cfg while the diversity column falls.",
            "compare", dict(class_name="Shirt", scale=0.0, unet="conditional", strengths="0, 1, 3, 6",
                            compare="classifier-free"),
            tuned={"pixel": dict(num_images=4)}),  # classifier-free rows run the UNet twice: within 10 s
    Example("One noise, every class", "The same x_T guided toward each class in turn: what the "
            "classifier's gradient changes, and what the noise already decided. Every row reaches its "
            "class by the evaluator (confidence above 0.5); Shirt, which looks like a T-shirt, a "
            "pullover or a coat, is the hardest.",
            "compare", dict(compare="class", strengths="all", scale=8.0, num_images=4)),
    Example("When to guide", "Guidance only in part of the denoising. At the noisy end (high t, "
            "500-999) it picks the shape: as sure of the class as guiding throughout. At the clean end "
            "(0-499) it can only touch up details: the confidence stays low.",
            "compare", dict(class_name="Bag", compare="interval", strengths="full, 500-999, 0-499", scale=8.0)),
    Example("Watch the class appear", "Follow the chart: the classifier's belief in the class stays low "
            "while x_t is mostly noise, then climbs as x̂_0 settles. The push column shows where the "
            "classifier pushes each pixel; scrub back afterwards.",
            "generate", dict(class_name="Bag", scale=4.0, steps=50)),
    Example("Stochastic DDPM", "Ancestral sampling adds fresh noise every step: x_t stays grainy until "
            "the end and the belief chart jitters, while x̂_0 is already clean.",
            "generate", dict(class_name="Trouser", scale=2.0, steps=100, sampler="ddpm", eta=0.0)),
    Example("DPM-Solver++ in ten steps", "A second-order solver of the same ODE as DDIM: ten steps "
            "already give clean images of the class (the evaluator's confidence near 0.9 or above).",
            "generate", dict(class_name="Coat", steps=10, sampler="dpm++2m", eta=0.0)),
    Example("One step", "A single jump from x_T to x̂_0: the model's blurry average of what the "
            "noise could be. Guidance cannot make it a pullover in one step: the evaluator's "
            "confidence stays below one half at every w.",
            "compare", dict(class_name="Pullover", steps=1, compare="classifier", strengths="0, 4, 16")),
)
