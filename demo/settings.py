"""Every number the app runs on, each said once: what a fresh page shows, what one request may
ask for, how frames are drawn and streamed, and how the server is run. The library's own limits
(guidescope.request: MAX_SCALE, MAX_CFG_SCALE, MAX_SEED) are not repeated here."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from guidescope.bundle import default_value, read_defaults
from guidescope.guide import Threshold
from guidescope.guide.training_free import LIBRARY_SETTING, METHODS
from guidescope.request import MAX_CFG_SCALE, MAX_SCALE, SAMPLING_DEFAULTS
from guidescope.samplers import SAMPLERS, sampler_title

SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints" / "fashion-mnist"
SHIPPED_LATENT = SHIPPED_CHECKPOINTS.with_name("fashion-mnist-latent")

# Widget choices as (label, value); the values are what the API takes.
MODEL_LABELS = {"pixel": "pixel space: x_t", "latent": "latent space: z_t"}  # by Bundle.space
SAMPLER_CHOICES = tuple((sampler_title(name), name) for name in SAMPLERS)
UNET_CHOICES = (("unconditional ε(x_t, ∅)", "unconditional"), ("class-conditional ε(x_t, c)", "conditional"))
SCHEDULE_CHOICES = (("constant", "constant"), ("ramp up", "ramp-up"), ("ramp down", "ramp-down"))
THRESHOLD_CHOICES = (("clip (pixels: to [-1, 1]; latents: to their measured range)", "clip"), ("dynamic", "dynamic"),
                     ("none", "none"))
GUIDE_CHOICES = (("noise-aware classifier p(c | x_t, t)", "noise-aware"),
                 ("clean classifier through x̂_0 (training-free)", "training-free"))
PAGE_METHOD_PARAMETERS = ("rho", "mu", "recurrences", "iterations", "gamma", "stop_at")  # TFG's numbers on the page
METHOD_CHOICES = tuple((f"{v.title} ({v.paper})", name) for name, v in METHODS.items())
COMPARE_CHOICES = (("classifier guidance w", "classifier"),
                   ("classifier-free w_cfg", "classifier-free"),
                   ("classifier vs classifier-free", "classifier-vs-free"),
                   ("guidance interval", "interval"),
                   ("schedule shape", "schedule"),
                   ("x̂_0 threshold", "threshold"),
                   ("target class", "class"),
                   ("guide: noise-aware vs clean classifier methods", "methods"),
                   ("guide: each at its evaluated setting, or at equal time", "evaluated"))


class RowValues(NamedTuple):
    """What the Compare tab's text box takes for one "rows vary" mode."""
    label: str
    example: str                # the value the box gets when the mode is picked
    info: str


ROW_VALUES = {
    "classifier": RowValues("classifier guidance strengths w, one row each", "0, 1, 2, 4, 8",
                            f"numbers from 0 to {MAX_SCALE:g}; the UNet and w_cfg as set on the left"),
    "classifier-free": RowValues("classifier-free strengths w_cfg, one row each", "0, 1, 3, 6",
                                 f"numbers from 0 to {MAX_CFG_SCALE:g}, on the class-conditional UNet; w as set on the left"),
    "classifier-vs-free": RowValues("strengths, two rows each", "1, 3",
                                    f"numbers from 0 to {min(MAX_SCALE, MAX_CFG_SCALE):g}; per strength s, classifier "
                                    "guidance w = s on the unconditional UNet, then classifier-free w_cfg = s alone"),
    "interval": RowValues("guidance intervals, one row each", "full, 0-500, 200-800, 500-999",
                          "'full' or LO-HI in original timesteps (0 is the clean end); guidance is off "
                          "outside the interval"),
    "schedule": RowValues("schedule shapes, one row each", "all",
                          "'all' or some of constant, ramp-up, ramp-down, over the interval on the left"),
    "threshold": RowValues("x̂_0 thresholds, one row each", "all",
                           "'all' or some of clip, dynamic, none"),
    "class": RowValues("target classes, one row each", "all",
                       "'all' or class names or indices separated by commas, e.g. Bag, Sneaker, Coat: "
                       "the same noise guided toward each class"),
    "methods": RowValues("guides, one row each", "noise-aware, tfg, mpgd",
                         f"noise-aware (at w) or the clean classifier's methods: {', '.join(METHODS)}, each at the "
                         "parameters on the left that it takes; on the DDIM or DDPM sampler"),
    "evaluated": RowValues("guides at this model's evaluated settings, one row each", "noise-aware, training-free, equal-time",
                           "noise-aware or training-free, each at the setting the evaluation chose for this model (its own "
                           "sampler, steps, strengths, threshold and interval: about the same fidelity, at their own "
                           "costs), or equal-time, the training-free setting at the steps the noise-aware one's time "
                           "buys; from the same noise, at the class, images and seed on the left (the other settings "
                           "there are not used)"),
}


@dataclass(frozen=True)
class AppDefaults:
    """What a fresh page shows, and what the API uses for an argument left out. A checkpoint
    folder's defaults.json (what the evaluation chose, with its reasons) overrides any of these
    by field name (see app_defaults); the values here serve folders without one."""
    class_index: int = 7            # "Sneaker" in Fashion-MNIST; 0 when a checkpoint has fewer classes
    scale: float = 5.0              # classifier guidance w (Dhariwal & Nichol's CIFAR-size models work near here)
    unet: str = "unconditional"     # the classifier guidance setting of Dhariwal & Nichol
    cfg_scale: float = 0.0          # classifier-free w_cfg (used with the conditional UNet)
    steps: int = SAMPLING_DEFAULTS.steps  # the library's table (guidescope.request.SamplingDefaults)
    sampler: str = SAMPLING_DEFAULTS.sampler  # for what the evaluation has not chosen
    eta: float = SAMPLING_DEFAULTS.eta
    num_images: int = 8             # per row
    seed: int = SAMPLING_DEFAULTS.seed
    strengths: str = ROW_VALUES["classifier"].example  # the Compare rows' values, for `compare`
    compare: str = "classifier"     # what the Compare rows vary; see COMPARE_CHOICES
    interval: str = "full"          # guide at every step, or "LO-HI" in original timesteps
    schedule: str = "constant"      # w(t) = w inside the interval
    threshold: str = "clip"         # x-hat_0 clamped to [-1, 1], as in DDPM
    threshold_percentile: float = Threshold.percentile  # of |x-hat_0|, for the dynamic threshold
    guide: str = "noise-aware"      # or "training-free": a clean classifier through x-hat_0 (GUIDE_CHOICES)
    # The training-free parameters on the page: the evaluated setting (defaults.json's training_free
    # record) where there is one, else the library's; the method's other parameters are its own.
    method: str = LIBRARY_SETTING.method
    rho: float = LIBRARY_SETTING.rho
    mu: float = LIBRARY_SETTING.mu
    recurrences: int = LIBRARY_SETTING.recurrences
    iterations: int = LIBRARY_SETTING.iterations
    strength_schedule: str = LIBRARY_SETTING.mu_schedule  # rho_t's and mu_t's (the page sets both alike)
    gamma: float = LIBRARY_SETTING.gamma
    stop_at: float = LIBRARY_SETTING.stop_at
    # What the page switches to with the training-free guide (its recurrence needs a one-step sampler).
    training_free_sampler: str = "ddim"
    training_free_steps: int = 20
    training_free_threshold: str = "clip"
    training_free_interval: str = "full"
    training_free_schedule: str = "constant"
    training_free_num_images: int = 2  # a clean classifier's step costs several plain ones (docs/TRAINING_FREE_SPEED.md
                                    # gives the seconds per image of the shipped settings): a few images keep a
                                    # run within Limits.max_seconds beside a browser on the same 2 cores

    def class_name(self, class_names: tuple[str, ...]) -> str:
        return class_names[self.class_index if self.class_index < len(class_names) else 0]

    def settings(self, class_names: tuple[str, ...]) -> Settings:
        """The settings column's values (the class by name)."""
        return Settings(class_name=self.class_name(class_names),
                        **{name: getattr(self, name) for name in SETTING_NAMES if name != "class_name"})


@dataclass(frozen=True)
class Settings:
    """The settings column that Generate and Compare share, by name: the raw values an endpoint
    receives (JSON, checked later by demo/arguments.py), or the page's components that hold them
    (demo/ui.py). The field order is the order of the endpoints' arguments (docs/APP.md), written
    here only; the fields after seed came after the first release, so the API defaults them."""
    class_name: Any
    scale: Any
    unet: Any
    cfg_scale: Any
    steps: Any
    sampler: Any
    eta: Any
    num_images: Any
    seed: Any
    interval: Any = AppDefaults.interval
    schedule: Any = AppDefaults.schedule
    threshold: Any = AppDefaults.threshold
    threshold_percentile: Any = AppDefaults.threshold_percentile
    guide: Any = AppDefaults.guide
    method: Any = AppDefaults.method
    rho: Any = AppDefaults.rho
    mu: Any = AppDefaults.mu
    recurrences: Any = AppDefaults.recurrences
    iterations: Any = AppDefaults.iterations
    strength_schedule: Any = AppDefaults.strength_schedule
    gamma: Any = AppDefaults.gamma
    stop_at: Any = AppDefaults.stop_at

    def values(self) -> list:
        """The values (or components) in the endpoints' order."""
        return [getattr(self, name) for name in SETTING_NAMES]


SETTING_NAMES = tuple(f.name for f in fields(Settings))
COMPARE_ROWS = ("strengths", "mode")  # /compare's own arguments: what the rows vary, after the class
GENERATE_ARGUMENTS = SETTING_NAMES
COMPARE_ARGUMENTS = (SETTING_NAMES[0], *COMPARE_ROWS, *SETTING_NAMES[1:])


@dataclass(frozen=True)
class Limits:
    """What one request may ask for beyond the library's own checks (guidescope.request.check)."""
    max_images_per_row: int = 16
    max_rows: int = 10              # rows compared at once (classifier vs free makes 2 per strength)
    max_images: int = 80            # rows x images per row
    max_image_steps: int = 4000     # images x steps, whatever the machine (the API's hard cap)
    max_seconds: float = 10.0       # the longest one request may hold the server here, by the measured
                                    # cost of a step (timing.Timings.check_bound): others wait no longer
    max_text_chars: int = 200       # the Compare rows' text and the interval text


@dataclass(frozen=True)
class Display:
    """How frames look and how often they go out."""
    upscale: int = 4                # nearest-neighbour factor of a one-row run's frames (Generate) and
                                    # the GIF: the page shows them at this size, 28 px tiles at 112 CSS px
    compare_upscale: int = 2        # ... of a run of several rows (Compare): 56 CSS px tiles, 8 a row
                                    # beside two other panels at 1400 px
    png_upscale: int = 4            # the downloadable PNG of the samples
    pad: int = 2                    # pixels between tiles, before upscaling
    frame_interval_s: float = 0.5   # at most two frames a second from the start, and the last: encoding
                                    # stays a small cost, and a run quicker than this sends its samples
                                    # alone; 0 sends x_T and every step (`python app.py --frame-interval`)
    gif_max_frames: int = 60        # the GIF keeps evenly spaced steps, always the last
    gif_seconds: float = 4.0        # playing time of the denoising, then the last frame holds
    gif_hold_s: float = 1.5
    scale_slider_max: float = 30.0  # slider tops; the API and Compare accept up to the library's limits
    cfg_slider_max: float = 10.0
    strength_slider_max: float = 256.0  # rho and mu of the training-free methods, above each shipped default (the API takes up to the library's)
    repeat_slider_max: int = 8      # N_recur and N_iter
    gamma_slider_max: float = 1.0   # gamma-bar (the API takes up to the library's)
    live_max_seconds: float = 1.0   # live mode is offered where one run at the defaults takes at most this


@dataclass(frozen=True)
class ServerSettings:
    """How app.py serves the demo; the command line overrides the first four."""
    host: str = "127.0.0.1"         # local only unless asked (Spaces set GRADIO_SERVER_NAME=0.0.0.0)
    port: int = 7860
    concurrency_limit: int = 1      # sampling runs at once; each uses every torch thread
    threads: int | None = None      # torch threads; None = CPU count / concurrency_limit
    max_queue: int = 16             # requests waiting beyond the running ones
    max_file_size: str = "1mb"      # the app takes no uploads; refuse large ones
    cache_cleanup_s: int = 3600     # Gradio deletes its copies of frames and downloads after an hour


def defaults_record(folder: str | Path | None) -> dict:
    """folder/defaults.json as a dict; {} when there is none, or it is unreadable or not an object
    (the library's one reader of it, guidescope.bundle.read_defaults)."""
    return read_defaults(folder)


def app_defaults(folder: str | Path | None) -> AppDefaults:
    """AppDefaults with the values of folder/defaults.json (which `python -m guidescope.evaluate`
    writes for its checkpoints, with its reasons) put in by field name. Keys that name no field,
    and values of the wrong type, are ignored; a missing or unreadable file changes nothing.
    Whether the values make a valid request is checked where the app starts (demo/launch.py)."""
    chosen = defaults_record(folder)
    training_free = chosen.get("training_free") if isinstance(chosen.get("training_free"), dict) else {}
    guide = training_free.get("guide") if isinstance(training_free.get("guide"), dict) else {}
    chosen = {**{f"training_free_{name}": training_free[name]
                 for name in ("sampler", "steps", "threshold", "interval", "schedule") if name in training_free},
              **{name: guide[name] for name in ("method", *PAGE_METHOD_PARAMETERS) if name in guide},
              **({"strength_schedule": guide["mu_schedule"]} if "mu_schedule" in guide else {}),
              **chosen}
    names = {f.name for f in fields(AppDefaults)}
    values = {name: default_value(name, value, type(getattr(AppDefaults, name)))
              for name, value in chosen.items() if name in names}
    return replace(AppDefaults(), **{name: value for name, value in values.items() if value is not None})


DEFAULTS = app_defaults(SHIPPED_CHECKPOINTS)  # the shipped checkpoints' defaults, for the scripts
LIMITS = Limits()
DISPLAY = Display()
SERVER = ServerSettings()
