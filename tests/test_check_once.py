"""Check once, at the boundary (issue 17): one bad value of each kind, sent through the app's
handler, passes through validators of which exactly one raises; a good request passes through
no validator twice for the same value.

The validators are the library's value checks (guidescope.messages), the class reference and the
interval rule of guidescope.request, and guidescope.request.check itself. Each is wrapped wherever a
module holds it, so a check added anywhere in guidescope/ or demo/ is counted. A rule is the
validator with its bounds or choices (not its wording), so a repeat under another name counts too.
"""
from __future__ import annotations

import sys
from collections import Counter
from typing import NamedTuple

import gradio as gr
import pytest

from app_fixtures import NUM_TIMESTEPS, bundle, checkpoint_dir  # noqa: F401
from demo.handlers import Handlers
from guidescope import messages, parsing
from guidescope import request as library_request
from guidescope.request import MAX_SCALE

VALIDATORS = {
    messages: ("number", "exact_integer", "integer", "choice"),
    library_request: ("check_interval", "check"),
    parsing: ("class_index",),
}


class Call(NamedTuple):
    rule: tuple         # (kind, bounds or choices): what is checked, whatever the message calls it
    value: str          # repr of the value checked
    raised: bool


# Training-free guidance's parameters share their bounds (rho and mu, the schedules, N_recur and the draws): each
# is its own setting, so its name is part of its rule and two of them at one value are not a repeat.
SHARED_BOUNDS = ("rho", "mu", "rho schedule", "mu schedule", "recurrences", "Monte Carlo samples")


def _rule(name: str, args: tuple) -> tuple:
    """integer and exact_integer are one kind (an integer in bounds); the name argument is left out
    (a value checked twice under two wordings is still checked twice), but for SHARED_BOUNDS."""
    if len(args) > 1 and args[1] in SHARED_BOUNDS:
        return (*_rule(name, (args[0], None, *args[2:])), args[1])
    kind = "integer" if name in ("integer", "exact_integer") else name
    if name in ("number", "integer", "exact_integer"):
        return kind, args[2], args[3]
    if name == "choice":
        return kind, tuple(args[2])
    if name == "check_interval":
        return kind, args[1]
    return (kind,)  # class_index, check: one rule each


class Recorder:
    """Every call of a validator, in order."""

    def __init__(self):
        self.calls: list[Call] = []

    def wrap(self, name: str, fn):
        def counted(*args, **kwargs):
            value = repr(args[0])[:80]
            try:
                result = fn(*args, **kwargs)
            except ValueError:
                self.calls.append(Call(_rule(name, args), value, True))
                raise
            self.calls.append(Call(_rule(name, args), value, False))
            return result
        return counted

    def raised(self) -> list[Call]:
        """The validators that refused; check passes on what its rules raise, so it is left out."""
        return [c for c in self.calls if c.raised and c.rule != ("check",)]

    def repeats(self) -> list[tuple]:
        """(rule, value) pairs checked more than once."""
        counts = Counter((c.rule, c.value) for c in self.calls)
        return [key for key, n in counts.items() if n > 1]


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    recorder = Recorder()
    for home, names in VALIDATORS.items():
        for name in names:
            original = getattr(home, name)
            counted = recorder.wrap(name, original)
            for module in list(sys.modules.values()):  # every module that imported it by name
                if getattr(module, "__name__", "").startswith(("guidescope", "demo")) and \
                        getattr(module, name, None) is original:
                    monkeypatch.setattr(module, name, counted)
    return recorder


@pytest.fixture
def handlers(bundle, tmp_path) -> Handlers:  # noqa: F811
    return Handlers(bundle, downloads=tmp_path / "downloads")


GENERATE = dict(class_name="Trouser", scale=2.0, unet="unconditional", cfg_scale=0.0, steps=2, sampler="ddim",
                eta=0.0, num_images=1, seed=3, interval="full", schedule="constant", threshold="clip",
                threshold_percentile=0.995)
# The left column's w (2) and w_cfg (1.5) differ from the rows' values, so that a left value a
# mode replaces (checked by the app) and a row's value (checked by the request) never coincide.
COMPARE = dict(GENERATE, row_values="4", mode="classifier", unet="conditional", cfg_scale=1.5)


def generate(handlers: Handlers, changes: dict) -> list:
    return list(handlers.generate(**{**GENERATE, **changes}))


def compare(handlers: Handlers, changes: dict) -> list:
    args = {**COMPARE, **changes}
    args["strengths"] = args.pop("row_values")  # the API's name
    return list(handlers.compare(**args))


# (endpoint, one bad value, the message that reaches the caller)
BAD = [
    (generate, dict(class_name="Nope"), "class must be one of"),
    (generate, dict(scale=-1.0), "classifier guidance w must be a number from 0 to 100"),
    (generate, dict(scale="2"), "classifier guidance w must be a number from 0 to 100"),
    (generate, dict(unet="both"), "unet must be one of"),
    (generate, dict(cfg_scale=-1.0), "classifier-free scale w_cfg must be a number from 0 to 30"),
    (generate, dict(unet="conditional", cfg_scale=40.0), "classifier-free scale w_cfg must be a number from 0 to 30"),
    (generate, dict(steps=0), f"steps must be an integer from 1 to {NUM_TIMESTEPS}"),
    (generate, dict(steps=2.5), f"steps must be an integer from 1 to {NUM_TIMESTEPS}"),
    (generate, dict(sampler="euler"), "sampler must be one of"),
    (generate, dict(eta=1.5), "eta must be a number from 0 to 1"),
    (generate, dict(num_images=0), "number of images must be an integer from 1 to 16"),
    (generate, dict(seed=-1), "seed must be an integer from 0 to"),
    (generate, dict(interval="800-200"), "a guidance interval needs 0 <= t_lo <= t_hi <= 999"),
    (generate, dict(schedule="linear"), "schedule must be one of"),
    (generate, dict(threshold="static"), "threshold must be one of"),
    (generate, dict(threshold_percentile=0.2), "threshold percentile must be a number from 0.5 to 1"),
    (compare, dict(mode="both"), "compare must be one of"),
    (compare, dict(row_values="1, 200"), "classifier guidance w must be a number from 0 to 100"),
    (compare, dict(scale=-1.0), "classifier guidance w must be a number from 0 to 100"),  # replaced, still checked
    (compare, dict(mode="classifier-free", row_values="0, 40"), "w_cfg must be a number from 0 to 30"),
    (compare, dict(mode="interval", row_values="full, 0-2000"), "a guidance interval needs 0 <= t_lo <= t_hi"),
    (compare, dict(mode="schedule", row_values="constant, steep"), "schedule must be one of"),
    (compare, dict(mode="class", row_values="Bag, Coat"), "class must be one of"),
]


@pytest.mark.parametrize("send, changes, message", BAD, ids=[f"{s.__name__}-{c}"[:60] for s, c, _ in BAD])
def test_one_bad_value_is_refused_by_exactly_one_validator(handlers, recorder, send, changes, message):
    with pytest.raises(gr.Error) as caught:
        send(handlers, changes)
    assert message in caught.value.message
    raised = recorder.raised()
    assert len(raised) == 1, raised


GOOD = [
    (generate, dict()),
    (generate, dict(sampler="ddim", eta=0.5, interval="100-900", schedule="ramp-up", threshold="dynamic",
                    threshold_percentile=0.9)),
    (generate, dict(unet="conditional", cfg_scale=1.5, sampler="ddpm", steps=3.0, seed=7.0, num_images=2.0)),
    (generate, dict(class_name=3, scale=0, sampler="unipc")),
    (compare, dict()),
    (compare, dict(mode="classifier-free", row_values="3")),
    (compare, dict(mode="class", row_values="Bag")),
]
# One row each, so a value checked twice is a rule checked twice. (The interval, schedule and
# threshold modes give each row a new Schedule or Threshold made from the left column's values,
# whose invariants then hold for each new object; they are not a second layer of checks.)


@pytest.mark.parametrize("send, changes", GOOD, ids=[f"{s.__name__}-{c}"[:60] for s, c in GOOD])
def test_a_good_request_meets_each_validator_once(handlers, recorder, send, changes):
    frames = send(handlers, changes)
    assert frames[-1].recording.state == "finished"
    assert not recorder.raised()
    assert not recorder.repeats(), recorder.repeats()
    assert [c.rule for c in recorder.calls].count(("check",)) == 1  # the request check, once in all


def test_the_count_catches_the_library_checking_the_apps_request_again(handlers, recorder, monkeypatch):
    """The count can fail: were generation to check the app's request again as it samples it..."""
    from guidescope import generation

    checked = generation._checked  # given the plain Request, it checks again
    monkeypatch.setattr(generation, "_checked", lambda bundle, request: checked(bundle, getattr(request, "request", request)))
    generate(handlers, {})
    assert any(rule == ("check",) for rule, _ in recorder.repeats())


def test_the_count_catches_the_app_checking_w_itself(handlers, recorder, monkeypatch):
    """...or the app to check w before the request check does (as it did), the repeat would show."""
    from demo import arguments

    translate = arguments._real
    monkeypatch.setattr(arguments, "_real", lambda value: translate(messages.number(value, "w", 0, MAX_SCALE)))
    generate(handlers, {})
    assert (("number", 0, MAX_SCALE), "2.0") in recorder.repeats()
