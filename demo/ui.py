"""The layout and its wiring: shared settings on the left; Generate, Compare and Understand tabs
on the right. Only generate and compare are public API endpoints."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from guidescope.guide import TrainingFreeGuidance
from guidescope.guide.training_free import MIN_STOP_AT, STRENGTH_SCHEDULES
from guidescope.request import MAX_SCALE, MAX_SEED

from . import render
from .examples import EXAMPLES, Example
from .explain import explanation
from .handlers import AfterRun, Detail, FrameView, Handlers, StreamOutputs
from .models import Model
from .settings import (COMPARE_ARGUMENTS, COMPARE_CHOICES, DISPLAY, GENERATE_ARGUMENTS, GUIDE_CHOICES, LIMITS,
                       METHOD_CHOICES, MODEL_LABELS, ROW_VALUES, SAMPLER_CHOICES, SCHEDULE_CHOICES, SERVER,
                       THRESHOLD_CHOICES, UNET_CHOICES, AppDefaults, Settings)

LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
CSS = """
.pixelated img { image-rendering: pixelated; }
/* Frames at their own size: tiles come upscaled by whole factors (Display.upscale), which a scaled
   <img> would blur or stretch unevenly; a grid wider than its panel scrolls. */
.pixelated .image-container, .pixelated .image-frame { overflow-x: auto; height: auto !important; }
.pixelated .image-frame { display: block !important; }  /* scroll from the first column, not centred */
.pixelated, .pixelated .image-container, .pixelated .image-frame, .pixelated button { min-width: 0 !important;
  max-width: 100% !important; }  /* a grid wider than the screen scrolls in its panel, not the page */
.pixelated img { width: auto !important; height: auto !important; max-width: none !important;
                 max-height: none !important; object-fit: none !important; }
.labelled-grid { flex-wrap: nowrap !important; gap: 4px !important; }
.row-label-column { flex: 0 1 auto !important; min-width: 0 !important; width: auto !important; }
.labelled-grid > .pixelated { flex: 0 0 auto !important; width: fit-content !important; max-width: 70% !important; }  /* the grid at its size, the
                                    labels in the rest: at least 30% */
.row-labels { font-size: 13px; white-space: nowrap; text-align: right; overflow: hidden; }
.row-label { overflow: hidden; text-overflow: ellipsis; }  /* a long name yields to its grid; its title shows it whole */
/* A narrow screen puts the tabs (the run button and the images) above the settings. */
@media (max-width: 760px) {
  .main-row { flex-direction: column-reverse !important; }
  .image-row, .chart-row, .push-row { flex-direction: column !important; }  /* x_t above x-hat_0, charts one above
                                    the other, the status and table below the push: the table's numbers need the width */
  .main-row .tabs, .main-row .tabitem, .main-row .column, .main-row .row { min-width: 0 !important;
                                                                            max-width: 100% !important; }
}
"""
PRIVATE = dict(show_progress="hidden", api_visibility="private")  # the page's own events: no endpoint, no spinner
UNQUEUED = dict(queue=False, **PRIVATE)  # ... that run at once, outside the queue
TITLE = "Classifier guidance, step by step"
INTRO = ("A diffusion model draws images of the class you pick, steered by a noise-aware classifier "
         "with strength **w** (and, on the class-conditional UNet, by classifier-free guidance "
         "**w_cfg**). Watch the noisy $x_t$, the predicted clean $\\hat x_0$ and the classifier's push "
         "as they form (click an image to see it large), compare settings from the same noise, and read how "
         "it works under **Understand**.")


Controls = Settings  # the settings column's components, by name (settings.Settings holds their order)
ADVERSARIAL = Path(__file__).with_name("adversarial.png")  # made by scripts/adversarial_example.py
ADVERSARIAL_NOTE = ("A test image of the shipped pixel model, noised, pushed toward another class by the clean "
                    "classifier in two ways, the same number of steps of the same size. At $x_t$, the classifier "
                    "grows surer while the image the model makes of $x_t$ (below) stays as it was: an adversarial "
                    "example. Through $\\hat x_0$, the image itself changes, and the evaluator, which never guides, "
                    "agrees.")


class OutputPanel(NamedTuple):
    x_t: gr.Image
    pred_xstart: gr.Image
    push: gr.Image
    push_note: gr.Markdown
    status: gr.Markdown
    chart: gr.Plot
    norm_chart: gr.Plot
    table: gr.Dataframe
    scrub: gr.Slider
    gif: gr.DownloadButton
    png: gr.DownloadButton
    recording: gr.State
    row_labels: gr.HTML
    detail: gr.Image            # one image large, on a click on a grid
    detail_note: gr.Markdown
    clean_chart: gr.Plot        # what the clean classifier sees: p(c | x-hat_0) per step

    def outputs(self, record: type[tuple]) -> list:
        """The components a handler's typed result fills, named by the fields of its NamedTuple
        (handlers.StreamOutputs, FrameView, AfterRun): the tuple's field order is the one place the
        order of the outputs is written."""
        return [getattr(self, name) for name in record._fields]

    @property
    def stream(self) -> list:
        """The outputs of a streaming handler."""
        return self.outputs(StreamOutputs)

    @property
    def frame_view(self) -> list:
        """The outputs of Playback.show_frame."""
        return self.outputs(FrameView)

    @property
    def after_run(self) -> list:
        """The outputs of Playback.finish and LiveMode.after_live."""
        return self.outputs(AfterRun)

    @property
    def grids(self) -> list:
        return [self.x_t, self.pred_xstart, self.push]


def _controls(defaults: AppDefaults, class_names: tuple[str, ...], num_timesteps: int) -> tuple[Controls, gr.Group]:
    d = defaults
    class_name = gr.Dropdown(list(class_names), value=d.class_name(class_names), label="class c", elem_id="class",
                             filterable=True)  # type to search: ImageNet has 1000 classes
    guide = gr.Radio(list(GUIDE_CHOICES), value=d.guide, label="guide", elem_id="guide",
                     info="the classifier that steers: one trained on noisy x_t at strength w, or one trained on "
                          "clean images, applied to the predicted x̂_0 (no noisy training)")
    with gr.Group(visible=d.guide == "training-free", elem_classes="method-group") as method_group:
        method = gr.Dropdown(list(METHOD_CHOICES), value=d.method, label="training-free method", elem_id="method",
                             info="TFG's step or one of its special cases; each takes some of the numbers below")
        rho = gr.Slider(0, DISPLAY.strength_slider_max, value=d.rho, step=0.25, label="ρ: gradient through the UNet",
                        elem_id="rho", info="∇_{x_t} log p(c | x̂_0(x_t)); TFG, DPS, LGD, FreeDoM, UG")
        mu = gr.Slider(0, DISPLAY.strength_slider_max, value=d.mu, step=0.25, label="μ: steps on x̂_0", elem_id="mu",
                       info="∇_{x̂_0} log p(c | x̂_0), no backward pass through the UNet; TFG, MPGD, UG")
        recurrences = gr.Slider(1, DISPLAY.repeat_slider_max, value=d.recurrences, step=1, elem_id="recurrences",
                                label="N_recur: repeat each step", info="re-noise and redo it (time travel); TFG, FreeDoM, UG")
        iterations = gr.Slider(0, DISPLAY.repeat_slider_max, value=d.iterations, step=1, elem_id="iterations",
                               label="N_iter: steps on x̂_0 per step", info="TFG, UG")
        strength_schedule = gr.Radio(list(STRENGTH_SCHEDULES), value=d.strength_schedule, elem_id="strength-schedule",
                                     label="ρ_t, μ_t over the steps",
                                     info="constant, or weighted by α_t (increase) or 1 - α_t (decrease), mean 1; "
                                          "TFG, FreeDoM")
        gamma = gr.Slider(0, DISPLAY.gamma_slider_max, value=d.gamma, step=0.01, elem_id="gamma",
                          label="γ̄: smoothing of p(c | x̂_0)",
                          info="a Monte Carlo mean over x̂_0 + γ_t δ, γ_t = γ̄ sqrt(1 - ᾱ_t); TFG")
        stop_at = gr.Slider(MIN_STOP_AT, 1, value=d.stop_at, step=0.05, elem_id="stop-at",
                            label="stop at p(c | x̂_0)",
                            info="no push on an image the clean classifier already believes this much, which keeps "
                                 "the samples varied; 1 = always push (TFG's)")
    scale = gr.Slider(0, DISPLAY.scale_slider_max, value=d.scale, step=0.25, label="classifier guidance w",
                      info=f"the noise-aware classifier's; 0 = off; Compare and the API accept up to {MAX_SCALE:g}",
                      elem_id="scale")
    unet = gr.Radio(list(UNET_CHOICES), value=d.unet, label="UNet")
    cfg_scale = gr.Slider(0, DISPLAY.cfg_slider_max, value=d.cfg_scale, step=0.25,
                          label="classifier-free scale w_cfg", interactive=d.unet == "conditional",
                          info="needs the class-conditional UNet")
    steps = gr.Slider(1, num_timesteps, value=d.steps, step=1, label="steps",
                      info=f"1 to T = {num_timesteps}", elem_id="steps")
    sampler = gr.Radio(list(SAMPLER_CHOICES), value=d.sampler, label="sampler", elem_id="sampler",
                       info="how each step moves from x_t toward x̂_0: DDIM and DDPM (one model call a step), or "
                            "the higher-order DPM-Solver++(2M) and UniPC, which need fewer steps")
    eta = gr.Slider(0, 1, value=d.eta, step=0.05, label="eta (DDIM noise)", interactive=d.sampler == "ddim")
    num_images = gr.Slider(1, LIMITS.max_images_per_row, value=d.num_images, step=1,
                           label="images (per row in Compare)", elem_id="images")
    with gr.Row():
        seed = gr.Number(d.seed, precision=0, minimum=0, maximum=MAX_SEED, label="seed", scale=3)
        randomize = gr.Button("new seed", size="sm", scale=1, min_width=80, elem_id="randomize")
    interval = gr.Textbox(d.interval, label="guidance interval", max_lines=1, elem_id="interval",
                          max_length=LIMITS.max_text_chars,
                          info=f"'full', or LO-HI in original timesteps 0 to {num_timesteps - 1} "
                               "(0 is the clean end): guidance is off outside it")
    schedule = gr.Radio(list(SCHEDULE_CHOICES), value=d.schedule, label="schedule",
                        info="w(t) over the interval: constant, or a linear ramp between 0 and w")
    threshold = gr.Radio(list(THRESHOLD_CHOICES), value=d.threshold, label="x̂_0 threshold", elem_id="threshold",
                         info="keeps each step's guess of the clean image in range, so a strong push cannot "
                              "drive the pixels past black and white")
    threshold_percentile = gr.Slider(0.5, 1, value=d.threshold_percentile, step=0.005,
                                     label="threshold percentile", interactive=d.threshold == "dynamic",
                                     info="of |x̂_0|, for the dynamic threshold")
    randomize.click(None, None, seed, js=f"() => Math.floor(Math.random() * {MAX_SEED + 1})")
    unet.change(partial(_only_when, "conditional", 0.0), unet, cfg_scale, **UNQUEUED)
    sampler.change(partial(_only_when, "ddim", 0.0), sampler, eta, **UNQUEUED)
    threshold.change(partial(_only_when, "dynamic", None), threshold, threshold_percentile, **UNQUEUED)
    return Controls(class_name=class_name, scale=scale, unet=unet, cfg_scale=cfg_scale, steps=steps, sampler=sampler,
                    eta=eta, num_images=num_images, seed=seed, interval=interval, schedule=schedule,
                    threshold=threshold, threshold_percentile=threshold_percentile, guide=guide, method=method, rho=rho,
                    mu=mu, recurrences=recurrences, iterations=iterations, strength_schedule=strength_schedule,
                    gamma=gamma, stop_at=stop_at), method_group


def _guide_chosen(handlers: Handlers, name: str, guide: str) -> tuple:
    """What picking a guide changes: the training-free parameters shown or hidden, and the
    sampler, steps, threshold, guidance interval and schedule and number of images to the model's
    defaults for that guide (the clean classifier's recurrence needs a one-step sampler; the
    evaluation chose its steps and interval; its steps cost several plain ones, so fewer images fit
    the time one request may take)."""
    d = handlers.pick(name).defaults
    if guide == "training-free":
        return (gr.Group(visible=True), d.training_free_sampler, d.training_free_steps, d.training_free_threshold,
                gr.Slider(interactive=d.training_free_sampler == "ddim"), d.training_free_num_images,
                d.training_free_interval, d.training_free_schedule)
    return (gr.Group(visible=False), d.sampler, d.steps, d.threshold, gr.Slider(interactive=d.sampler == "ddim"),
            d.num_images, d.interval, d.schedule)


def _only_when(wanted: str, reset: float | None, chosen: str) -> gr.Slider:
    """A slider that applies to one choice only: w_cfg to the conditional UNet, eta to DDIM, the
    percentile to the dynamic threshold. Leaving that choice resets it (unless reset is None)."""
    if chosen == wanted:
        return gr.Slider(interactive=True)
    return gr.Slider(interactive=False) if reset is None else gr.Slider(value=reset, interactive=False)


def _row_values(mode: str) -> gr.Textbox:
    """The Compare text box as `mode` reads it."""
    return gr.Textbox(label=ROW_VALUES[mode].label, info=ROW_VALUES[mode].info)


def _mode_chosen(handlers: Handlers, name: str, mode: str, sampler: str) -> tuple:
    """Comparing guides puts a multistep sampler back to the model's training-free one (a clean
    classifier's recurrence needs a one-step sampler); comparing them at their evaluated settings
    sets the images to the training-free guide's few (its steps cost several plain ones); otherwise
    nothing changes. (sampler, eta, images)"""
    d = handlers.pick(name).defaults
    if mode == "evaluated":
        return gr.update(), gr.update(), d.training_free_num_images
    if mode != "methods" or sampler in TrainingFreeGuidance.samplers:
        return gr.update(), gr.update(), gr.update()
    return d.training_free_sampler, gr.Slider(interactive=d.training_free_sampler == "ddim"), gr.update()


# Picking a Compare mode puts its example in the box in the browser, at once: a round trip to the
# server could land after a Compare click that follows it, which would then run the last mode's rows.
ROW_EXAMPLE_JS = f"(mode) => ({json.dumps({mode: values.example for mode, values in ROW_VALUES.items()})})[mode]"


SAMPLE_CAPTIONS = {"pixel": "$x_t$, the current noisy images",
                   "latent": "$z_t$, the current noisy latent: its channels as maps (the samples, decoded, "
                             "at the last step)"}
XSTART_CAPTIONS = {"pixel": "$\\hat x_0$, the clean images predicted from $x_t$",
                   "latent": "$D(\\hat z_0)$, the clean latent predicted from $z_t$, decoded"}
PUSH_CAPTIONS = {"pixel": "the guidance's push at this step: $k_t\\, w(t)\\, \\nabla_{x_t} \\log p_\\phi(c \\mid x_t)$ "
                          "(noise-aware), or the clean classifier's shift of $x_{t-1}$",
                 "latent": "the guidance's push at this step, in latent space, per channel: $k_t\\, w(t)\\, "
                           "\\nabla_{z_t} \\log p_\\phi(c \\mid z_t)$ (noise-aware), or the clean classifier's shift of $z_{t-1}$"}


class Captions(NamedTuple):
    sample: gr.Markdown
    xstart: gr.Markdown
    push: gr.Markdown


def _output_panel(prefix: str, with_evaluator: bool, space: str = "pixel") -> tuple[OutputPanel, Captions]:
    # Captions above the images rather than Gradio's label badge, which would hide the first row's
    # label; the labels still name the API outputs.
    images = dict(format="png", type="pil", interactive=False, show_label=False, elem_classes="pixelated",
                  buttons=["download", "fullscreen"])
    with gr.Row(equal_height=True, elem_classes="image-row"):
        with gr.Column(scale=11, min_width=200):  # a little wider: the row labels sit beside its grid
            sample_caption = gr.Markdown(SAMPLE_CAPTIONS[space], latex_delimiters=LATEX)
            with gr.Row(equal_height=False, elem_classes="labelled-grid"):
                row_labels = gr.HTML(elem_id=f"{prefix}-row-labels", elem_classes="row-label-column", padding=False)
                x_t = gr.Image(label="x_t", elem_id=f"{prefix}-xt", **images)
        with gr.Column(scale=10, min_width=200):
            xstart_caption = gr.Markdown(XSTART_CAPTIONS[space], latex_delimiters=LATEX)
            pred_xstart = gr.Image(label="x̂_0 (predicted from x_t)", elem_id=f"{prefix}-x0", **images)
    with gr.Row(elem_classes="push-row"):
        with gr.Column(min_width=200):
            push_caption = gr.Markdown(PUSH_CAPTIONS[space], latex_delimiters=LATEX)
            push = gr.Image(label="push k_t w(t) g", elem_id=f"{prefix}-push", **images)
            push_note = gr.Markdown(elem_id=f"{prefix}-push-scale")
        with gr.Column(min_width=200):
            status = gr.Markdown(label="status", elem_id=f"{prefix}-status")
            detail_note = gr.Markdown(elem_id=f"{prefix}-detail-note")
            detail = gr.Image(label="one image, large", visible=False, elem_id=f"{prefix}-detail", **images)
            columns = render.table_columns(with_evaluator)  # a row's name wraps; its numbers stay in view
            table = gr.Dataframe(headers=columns, interactive=False, wrap=True,
                                 column_widths=["40%", *[f"{60 / (len(columns) - 1):.0f}%"] * (len(columns) - 1)],
                                 label="per row: mean p(c | x) under each network, diversity and seconds per image",
                                 elem_id=f"{prefix}-table")
    with gr.Row(elem_classes="chart-row"):
        chart = gr.Plot(label="guidance classifier's belief in the class", elem_id=f"{prefix}-chart")
        clean_chart = gr.Plot(label="clean classifier's belief, p(c | x̂_0): what a training-free guide sees",
                              elem_id=f"{prefix}-clean-chart")
    with gr.Row(elem_classes="chart-row"):
        norm_chart = gr.Plot(label="size of the guidance's push, per image", elem_id=f"{prefix}-norm-chart")
    scrub = gr.Slider(0, 1, value=0, step=1, label="scrub the recorded steps (0 = x_T)", visible=False,
                      elem_id=f"{prefix}-scrub")
    with gr.Row():
        gif = gr.DownloadButton("Download denoising (GIF)", visible=False, size="sm")
        png = gr.DownloadButton("Download samples (PNG with parameters)", visible=False, size="sm")
    return (OutputPanel(x_t, pred_xstart, push, push_note, status, chart, norm_chart, table, scrub, gif, png,
                        gr.State(), row_labels, detail, detail_note, clean_chart),
            Captions(sample_caption, xstart_caption, push_caption))


class RunTab(NamedTuple):
    """The Generate or the Compare tab: its buttons, its live box and its outputs."""
    button: gr.Button
    stop: gr.Button
    live: gr.Checkbox
    panel: OutputPanel
    captions: Captions


class Page(NamedTuple):
    """The components the events read or change."""
    model: gr.Radio
    controls: Controls
    info: gr.Markdown
    tabs: gr.Tabs
    generate: RunTab
    live_note: gr.Markdown      # why live mode is (not) offered for the model shown
    compare: RunTab
    mode: gr.Radio              # what the Compare rows vary
    strengths: gr.Textbox       # the Compare rows' values
    examples: list              # a gr.Button per EXAMPLES entry, in its order
    explanation: gr.Markdown    # the Understand tab's text, for the model shown
    opening: gr.Markdown        # why the page opens on its first model (shown with that model only)
    method_group: gr.Group      # the training-free parameters, shown with that guide

    def inputs(self, names: tuple[str, ...]) -> list:
        """The components of an endpoint's arguments `names` (settings.GENERATE_ARGUMENTS or
        COMPARE_ARGUMENTS), then the model."""
        own = {"strengths": self.strengths, "mode": self.mode}
        return [own[name] if name in own else getattr(self.controls, name) for name in names] + [self.model]


def _settings_column(handlers: Handlers) -> tuple[gr.Radio, gr.Markdown, Controls, gr.Group, gr.Markdown]:
    """The left column: the model choice (shown when there are several), why the page opens on
    the first (shown while it is the one shown), the settings Generate and Compare share, and the
    model's facts."""
    first, bundle = handlers.model, handlers.bundle
    model = gr.Radio([(MODEL_LABELS.get(m.bundle.space, m.name), m.name) for m in handlers.models.values()],
                     value=first.name, label="model", elem_id="model", visible=len(handlers.models) > 1,
                     info="the diffusion model and its classifier: on the images, or on an autoencoder's "
                          "latents (the API's `model` argument)")
    opening = gr.Markdown(handlers.opening, elem_id="opening", visible=bool(handlers.opening))
    controls, method_group = _controls(handlers.defaults, bundle.class_names, bundle.num_timesteps)
    info = gr.Markdown(_info(first, handlers.timings.step_seconds.get(first.name)), elem_id="info")
    return model, opening, controls, method_group, info


def _generate_tab(handlers: Handlers, live_on: bool, live_note: str) -> tuple[RunTab, gr.Markdown]:
    """The Generate tab, and the line saying whether live mode is offered."""
    with gr.Row():
        button = gr.Button("Generate", variant="primary", elem_id="generate-button")
        stop = gr.Button("Stop", variant="stop", elem_id="generate-stop")
    with gr.Row():
        live = gr.Checkbox(False, label="live: redraw from the same noise as you move "
                           "w (or ρ, μ), w_cfg, the class or the seed", interactive=live_on,
                           elem_id="generate-live", scale=1)
        note = gr.Markdown(live_note, elem_id="live-note")
    panel, captions = _output_panel("generate", handlers.with_evaluator, handlers.bundle.space)
    return RunTab(button, stop, live, panel, captions), note


def _compare_tab(handlers: Handlers, live_on: bool) -> tuple[RunTab, gr.Radio, gr.Textbox]:
    """The Compare tab, with what its rows vary (mode) and their values (strengths)."""
    defaults = handlers.defaults
    with gr.Row():
        mode = gr.Radio(list(COMPARE_CHOICES), value=defaults.compare, label="the rows vary",
                        scale=3, elem_id="compare-mode",
                        info="every other setting comes from the left column")
        rows = ROW_VALUES[defaults.compare]
        strengths = gr.Textbox(defaults.strengths, label=rows.label, info=rows.info,
                               max_length=LIMITS.max_text_chars, scale=2, elem_id="compare-rows")
    with gr.Row():
        button = gr.Button("Compare", variant="primary", elem_id="compare-button")
        stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
    live = gr.Checkbox(False, label="live strip: one image per row, redrawn as you move "
                       "w_cfg, the class, the seed or edit the rows", interactive=live_on,
                       elem_id="compare-live")
    panel, captions = _output_panel("compare", handlers.with_evaluator, handlers.bundle.space)
    return RunTab(button, stop, live, panel, captions), mode, strengths


def _understand_tab(handlers: Handlers) -> tuple[list, gr.Markdown]:
    """The examples, a button and a note each, then the explanation of the model shown; returns
    the buttons and the explanation (the model choice rewrites it)."""
    gr.Markdown("### Examples\nEach button loads its settings and opens its tab; "
                "then press Generate or Compare.")
    buttons = []
    for example in EXAMPLES:
        with gr.Row(equal_height=True):
            buttons.append(gr.Button(example.title, size="sm", scale=1, min_width=180))
            with gr.Column(scale=3):
                gr.Markdown(example.note)
    text = gr.Markdown(explanation(handlers.bundle.space, handlers.bundle.variance), latex_delimiters=LATEX)
    if ADVERSARIAL.exists():
        gr.Markdown("### The clean classifier's gradient at $x_t$, and through $\\hat x_0$\n" + ADVERSARIAL_NOTE,
                    latex_delimiters=LATEX)
        gr.Image(str(ADVERSARIAL), show_label=False, interactive=False, elem_id="adversarial",
                 elem_classes="pixelated", buttons=["fullscreen"])
    return buttons, text


def _layout(handlers: Handlers) -> Page:
    """The title, the settings column on the left, the Generate, Compare and Understand tabs on
    the right, opening on handlers.model with its defaults."""
    live_on, live_note = handlers.timings.live(handlers.model.name)
    gr.Markdown(f"# {TITLE}\n{INTRO}", latex_delimiters=LATEX)
    with gr.Row(elem_classes="main-row"):
        with gr.Column(scale=1, min_width=260):
            model, opening, controls, method_group, info = _settings_column(handlers)
        with gr.Column(scale=4):
            with gr.Tabs() as tabs:
                with gr.Tab("Generate", id="generate"):
                    generate, live_text = _generate_tab(handlers, live_on, live_note)
                with gr.Tab("Compare", id="compare"):
                    compare, mode, strengths = _compare_tab(handlers, live_on)
                with gr.Tab("Understand", id="understand"):
                    examples, explained = _understand_tab(handlers)
    return Page(model, controls, info, tabs, generate, live_text, compare, mode, strengths, examples, explained,
                opening, method_group)


def _load_example(handlers: Handlers, example: Example, name: str) -> tuple:
    """The values of the settings column, then the Compare text and mode, then the tab: the example
    on the model shown (`name`), from that model's defaults."""
    model = handlers.pick(name)
    names = model.bundle.class_names
    s = example.settings(model.defaults, names, model.bundle.space)
    return (*s.settings(names).values(), s.strengths, s.compare, gr.Tabs(selected=example.tab))


def _info(model: Model, step_seconds: float | None = None) -> str:
    """The model's facts; step_seconds: the measured time of one step of one image (Timings.time_steps)."""
    b = model.bundle
    space = ("latent z_t " + "x".join(map(str, b.sample_shape)) + f" (scale factor {b.codec.scale_factor:.3g})"
             if b.space == "latent" else "pixels " + "x".join(map(str, b.sample_shape)))
    took = None if step_seconds is None else (f"{step_seconds:.2f} s" if step_seconds >= 0.1
                                              else f"{1e3 * step_seconds:.1f} ms")
    timing = "" if took is None else f" · one step of one image takes {took} here"
    return (f"{len(b.class_names)} classes · T = {b.num_timesteps} · {b.schedule} schedule · samples {space} · "
            f"UNet on {b.backend} · running on {b.device}{timing}")


def _switch(handlers: Handlers, name: str) -> list:
    """Everything the model choice changes: the controls (to the model's defaults), the info
    line, the captions of both panels and the live toggles."""
    model = handlers.pick(name)
    d, b = model.defaults, model.bundle
    live, note = handlers.timings.live(model.name)
    controls = Controls(
        class_name=gr.Dropdown(choices=list(b.class_names), value=d.class_name(b.class_names)), scale=d.scale,
        unet=d.unet, cfg_scale=gr.Slider(value=d.cfg_scale, interactive=d.unet == "conditional"),
        steps=gr.Slider(maximum=b.num_timesteps, value=d.steps), sampler=d.sampler,
        eta=gr.Slider(value=d.eta, interactive=d.sampler == "ddim"), num_images=d.num_images, seed=gr.update(),
        interval=d.interval, schedule=d.schedule, threshold=d.threshold,
        threshold_percentile=gr.Slider(value=d.threshold_percentile, interactive=d.threshold == "dynamic"),
        guide=d.guide, method=d.method, rho=d.rho, mu=d.mu, recurrences=d.recurrences, iterations=d.iterations,
        strength_schedule=d.strength_schedule, gamma=d.gamma, stop_at=d.stop_at)
    captions = [SAMPLE_CAPTIONS[b.space], XSTART_CAPTIONS[b.space], PUSH_CAPTIONS[b.space]] * 2
    toggles = [gr.Checkbox(interactive=True) if live else gr.Checkbox(value=False, interactive=False)] * 2 + [note]
    return [*controls.values(), _info(model, handlers.timings.step_seconds.get(model.name)), *captions, *toggles,
            explanation(b.space, b.variance), gr.Markdown(visible=bool(handlers.opening) and model is handlers.model),
            gr.Group(visible=d.guide == "training-free")]


def _wire_run(handlers: Handlers, fn, api_name: str, tab: RunTab, inputs: list, concurrency_limit: int) -> None:
    """A streaming run: hide the last run's extras, stream, then offer scrubbing and downloads.
    Stop ends the run within one step; a run still waiting in the queue is cancelled."""
    panel, playback = tab.panel, handlers.playback
    tab.button.click(partial(playback.finish, None), None, panel.after_run, **UNQUEUED)
    run = tab.button.click(fn, inputs, panel.stream, api_name=api_name, preprocess=False, show_progress="minimal",
                           concurrency_id="sampling", concurrency_limit=concurrency_limit)
    run.then(playback.finish, panel.recording, panel.after_run, **PRIVATE)
    tab.stop.click(handlers.stop, None, None, cancels=[run], queue=False, api_visibility="private")
    panel.scrub.input(playback.show_frame, [panel.scrub, panel.recording], panel.frame_view,
                      trigger_mode="always_last", **PRIVATE)
    for image in panel.grids:  # a click on any grid shows that image large
        image.select(playback.detail, [panel.scrub, panel.recording], panel.outputs(Detail), **UNQUEUED)


def _wire_live(handlers: Handlers, tab: RunTab, triggers: list, fn, inputs: list, concurrency_limit: int) -> None:
    """Live mode: each move of a trigger queues a run at the new values; a run in flight goes to its
    end, and of the moves that come meanwhile only the last is run next (trigger_mode="always_last").
    So while a hand drags, a finished frame comes every run's length and the last position always
    wins; ending the run in flight at every move (as this once did) let none finish until the hand
    stopped."""
    for component in triggers:
        run = component.input(fn, [tab.live, *inputs], tab.panel.stream, preprocess=False, trigger_mode="always_last",
                              concurrency_id="sampling", concurrency_limit=concurrency_limit, **PRIVATE)
        run.then(handlers.live_mode.after_live, tab.live, tab.panel.after_run, **PRIVATE)


def _wire(handlers: Handlers, page: Page, concurrency_limit: int) -> None:
    """The events: Generate and Compare with their live modes, the model choice, the Compare
    mode and the examples."""
    controls, generate, compare = page.controls, page.generate, page.compare
    _wire_run(handlers, handlers.generate, "generate", generate, page.inputs(GENERATE_ARGUMENTS), concurrency_limit)
    _wire_run(handlers, handlers.compare, "compare", compare, page.inputs(COMPARE_ARGUMENTS), concurrency_limit)
    _wire_live(handlers, generate, [controls.scale, controls.cfg_scale, controls.class_name, controls.seed, controls.rho,
                                    controls.mu],
               handlers.live_mode.live_generate, page.inputs(GENERATE_ARGUMENTS), concurrency_limit)
    _wire_live(handlers, compare, [controls.cfg_scale, controls.class_name, controls.seed, page.strengths, controls.rho,
                                   controls.mu],
               handlers.live_mode.live_compare, page.inputs(COMPARE_ARGUMENTS), concurrency_limit)
    page.model.change(partial(_switch, handlers), page.model,
                      [*controls.values(), page.info, *generate.captions, *compare.captions, generate.live, compare.live,
                       page.live_note, page.explanation, page.opening, page.method_group], **UNQUEUED)
    controls.guide.input(partial(_guide_chosen, handlers), [page.model, controls.guide],
                         [page.method_group, controls.sampler, controls.steps, controls.threshold, controls.eta,
                          controls.num_images, controls.interval, controls.schedule], **UNQUEUED)
    # The label follows the mode however it changes; picking a mode also puts its example in the box.
    page.mode.change(_row_values, page.mode, page.strengths, **UNQUEUED)
    page.mode.input(None, page.mode, page.strengths, js=ROW_EXAMPLE_JS, **UNQUEUED)
    page.mode.input(partial(_mode_chosen, handlers), [page.model, page.mode, controls.sampler],
                    [controls.sampler, controls.eta, controls.num_images], **UNQUEUED)
    for example, button in zip(EXAMPLES, page.examples):
        button.click(partial(_load_example, handlers, example), page.model,
                     [*controls.values(), page.strengths, page.mode, page.tabs], queue=False, api_visibility="private")


def build(handlers: Handlers, concurrency_limit: int = SERVER.concurrency_limit) -> gr.Blocks:
    """The whole page for the loaded checkpoint bundles, opening on handlers.model with its
    defaults; at most concurrency_limit sampling runs (generate and compare together) at once.
    Launch it with css=CSS."""
    with gr.Blocks(title=TITLE, analytics_enabled=False, fill_width=True,
                   delete_cache=(SERVER.cache_cleanup_s, SERVER.cache_cleanup_s)) as demo:
        page = _layout(handlers)
        _wire(handlers, page, concurrency_limit)
        demo.unload(handlers.stop)  # a client that goes away (tab closed, API client gone) stops its run too
    return demo
