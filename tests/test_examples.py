"""Every example on every shipped model: a click loads that model's defaults with the example's
changes, and its note holds by the numbers the page shows (the table's confidence and diversity
columns, the belief chart), sampled as the page samples it (each model's own bundle, in process)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from app_fixtures import chart_table
from demo import ui
from demo.examples import EXAMPLES
from demo.handlers import Handlers
from demo.models import models_of
from demo.settings import LIMITS, SETTING_NAMES, SHIPPED_CHECKPOINTS, SHIPPED_LATENT
from guidescope.bundle import load_bundle

TITLES = [example.title for example in EXAMPLES]
MODELS = ("latent", "pixel")


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> Handlers:
    bundles = [load_bundle(SHIPPED_LATENT, need_evaluator=True), load_bundle(SHIPPED_CHECKPOINTS, need_evaluator=True)]
    # No time bound here: what a note claims must not depend on how fast this machine runs.
    return Handlers(models_of(bundles), downloads=tmp_path_factory.mktemp("downloads"),
                    limits=replace(LIMITS, max_seconds=math.inf))


@pytest.fixture(scope="module")
def shown(handlers):
    """(model, title) -> the last frame of the example's run, sampled once per module."""
    cache = {}

    def run(model: str, title: str):
        if (model, title) not in cache:
            example = EXAMPLES[TITLES.index(title)]
            values = ui._load_example(handlers, example, model)  # what a click puts in the controls
            settings = dict(zip(SETTING_NAMES, values))
            if example.tab == "compare":
                strengths, mode = values[len(SETTING_NAMES):len(SETTING_NAMES) + 2]
                frames = handlers.compare(**settings, strengths=strengths, mode=mode, model=model)
            else:
                frames = handlers.generate(**settings, model=model)
            cache[model, title] = list(frames)[-1]
        return cache[model, title]
    return run


def columns(frame) -> dict[str, dict[str, float]]:
    """column -> row label -> value, as the table shows them."""
    table = frame.table
    return {name: {row: float(v) for row, v in zip(table["row"], table[name])} for name in table.columns[1:]}


def belief(frame) -> np.ndarray:
    """The belief chart's line (one row): mean p(c | x_t) per step."""
    return chart_table(frame.chart).sort_values("step")["probability"].to_numpy()


def strength_sweep(frame) -> bool:
    c = columns(frame)
    return c["evaluator"]["w=0"] < 0.3 and c["evaluator"]["w=8"] > 0.9 and c["diversity"]["w=8"] < c["diversity"]["w=0"]


def past_the_useful_range(frame) -> bool:
    c = columns(frame)
    return all(c[net][f"w={w}"] >= 0.99 for net in ("classifier", "evaluator") for w in (10, 30, 100))


def classifier_vs_free(frame) -> bool:
    e = columns(frame)["evaluator"]
    return e["free w_cfg=1"] > e["classifier w=1"] and e["classifier w=3"] > e["classifier w=1"]


def free_sweep(frame) -> bool:
    c = columns(frame)
    return c["evaluator"]["w_cfg=6"] > c["evaluator"]["w_cfg=0"] + 0.3 and \
        c["diversity"]["w_cfg=6"] < c["diversity"]["w_cfg=0"]


def every_class(frame) -> bool:
    e = columns(frame)["evaluator"]
    return min(e.values()) > 0.5 and min(e, key=e.get) == "Shirt"


def when_to_guide(frame) -> bool:
    e = columns(frame)["evaluator"]
    return abs(e["500-999"] - e["full"]) < 0.05 and e["0-499"] < 0.5


def class_appears(frame) -> bool:
    line = belief(frame)
    return line[0] < 0.5 and line[-1] > 0.9


def ddpm_jitters(frame) -> bool:
    return int((np.diff(belief(frame)) < 0).sum()) >= 3  # the belief falls back at least three times


def ten_steps(frame) -> bool:
    return next(iter(columns(frame)["evaluator"].values())) > 0.85


def one_step(frame) -> bool:
    return max(columns(frame)["evaluator"].values()) < 0.5


NOTES = {"Strength sweep": strength_sweep, "Past the useful range": past_the_useful_range,
         "Classifier vs classifier-free": classifier_vs_free, "Classifier-free sweep": free_sweep,
         "One noise, every class": every_class, "When to guide": when_to_guide,
         "Watch the class appear": class_appears, "Stochastic DDPM": ddpm_jitters,
         "DPM-Solver++ in ten steps": ten_steps, "One step": one_step}


def test_every_example_has_a_check_of_its_note():
    assert set(NOTES) == set(TITLES)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("title", TITLES)
def test_the_note_holds_by_the_numbers_the_page_shows(shown, model, title):
    frame = shown(model, title)
    assert "done" in frame.status
    assert NOTES[title](frame), (model, title, frame.table.to_dict("list"))


@pytest.mark.parametrize("model", MODELS)
def test_a_click_loads_the_defaults_of_the_model_shown(handlers, model):
    defaults = handlers.pick(model).defaults
    example = EXAMPLES[TITLES.index("Strength sweep")]  # changes the class and the rows, nothing else
    values = dict(zip(SETTING_NAMES, ui._load_example(handlers, example, model)))
    assert (values["sampler"], values["steps"], values["scale"], values["threshold"]) == \
        (defaults.sampler, defaults.steps, defaults.scale, defaults.threshold)
    other = handlers.pick(next(m for m in MODELS if m != model)).defaults
    assert (values["sampler"], values["steps"]) != (other.sampler, other.steps)  # the shipped models differ
