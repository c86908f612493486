"""Bad Compare calls and what the error must say, in one table for the two places that check them:
the handlers called directly (test_app_handlers.py) and the real server through gradio_client
(test_hardening_input.py). Each case changes a valid call's arguments; both endpoints translate them
alike (demo/arguments.py) and the library checks them once (guidescope.request.check), so a message holds wherever the call comes from. The tiny checkpoints
of app_fixtures: four classes, T = 1000."""
from __future__ import annotations

from demo.settings import LIMITS
from guidescope.request import MAX_CFG_SCALE, MAX_SCALE

SCHEDULE = "schedule must be one of constant, ramp-up, ramp-down"
CLASS = "class must be one of T-shirt/top, Trouser, Sneaker, Bag"
TOO_LONG = f"at most {LIMITS.max_text_chars} characters"
W = f"classifier guidance w must be a number from 0 to {MAX_SCALE:g}"  # a row's strength: the request's rule
W_CFG = f"classifier-free scale w_cfg must be a number from 0 to {MAX_CFG_SCALE:g}"

# (changes to a valid Compare call, what the error must say)
BAD_COMPARE = [
    (dict(strengths=""), "classifier guidance strengths is empty"),
    (dict(strengths=", ,"), "classifier guidance strengths is empty"),
    (dict(strengths=", ".join(str(k) for k in range(LIMITS.max_rows + 1))),
     f"at most {LIMITS.max_rows} rows at once; got {LIMITS.max_rows + 1}"),
    (dict(strengths="1, two"), "'two' is not a number"),
    (dict(strengths="0, 2, 2.0"), "must differ from each other; 2 appears twice"),
    (dict(strengths="1, nan"), W + ", got nan (row 2 of 2)"),
    (dict(strengths="inf"), W),
    (dict(strengths="-1"), W),
    (dict(strengths="1e400"), W),
    (dict(strengths="0, 40", mode="classifier-free"), W_CFG),
    (dict(strengths="1" + " " * 300), TOO_LONG),
    (dict(strengths="1" * (LIMITS.max_text_chars + 1)), TOO_LONG),
    (dict(strengths=3), TOO_LONG),
    (dict(strengths=None), TOO_LONG),
    (dict(mode="both"), "compare must be one of classifier, classifier-free, classifier-vs-free, interval, "
                        "schedule, threshold, class"),
    (dict(mode="../classifier"), "compare must be one of"),
    (dict(strengths="0, 1, 2, 3, 4, 5", mode="classifier-vs-free"), f"at most {LIMITS.max_rows} rows at once; got 12"),
    (dict(strengths="0, 1, 2, 3, 4, 5, 6", num_images=16), f"at most {LIMITS.max_images} images per request"),
    (dict(strengths="0, 1", num_images=10, steps=LIMITS.max_image_steps // 20 + 1),
     f"images x steps must be at most {LIMITS.max_image_steps}"),
    (dict(scale=-1, mode="classifier-free"), W),
    (dict(mode="interval", strengths="full, 0-2000"), "a guidance interval needs 0 <= t_lo <= t_hi <= 999"),
    (dict(mode="interval", strengths="full, all"), "intervals must differ from each other; full appears twice"),
    (dict(mode="interval", strengths="full, 10"), "a guidance interval is 'full' or two timesteps"),
    (dict(mode="interval", strengths="x" * (LIMITS.max_text_chars + 1)), TOO_LONG),
    (dict(mode="schedule", strengths="linear"), SCHEDULE),
    (dict(mode="schedule", strengths="all, constant"), f"{SCHEDULE}; got 'all'"),
    (dict(mode="schedule", strengths="ramp-up, ramp-up"), "schedules must differ from each other"),
    (dict(mode="threshold", strengths=" ; "), "thresholds is empty"),
    (dict(mode="threshold", strengths=None), f"thresholds must be text of {TOO_LONG}"),
    (dict(mode="threshold", strengths="clip, clip"), "thresholds must differ from each other"),
    (dict(mode="class", strengths="Bag, Coat"), CLASS),
    (dict(mode="class", strengths="Bag, ../../etc/passwd"), CLASS),
    (dict(mode="class", strengths=["Bag"]), f"classes must be text of {TOO_LONG}"),
    (dict(mode="class", strengths="Bag, bag"), "classes must differ from each other; 'bag' appears twice"),
    (dict(mode="class", strengths="Bag, Trouser; Sneaker, Bag"), "classes must differ from each other"),
    (dict(mode="class", strengths="all", num_images=16, steps=100),
     f"images x steps must be at most {LIMITS.max_image_steps}"),
    (dict(mode="class", class_name="Nope"), "class must be one of"),  # checked though the rows set the class
]
