"""The layout and its wiring: shared settings on the left; Generate, Compare and Understand tabs
on the right. Only generate and compare are public API endpoints."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from . import render
from .examples import EXAMPLES, Example
from .handlers import Handlers
from .settings import (COMPARE_CHOICES, DEFAULTS, DISPLAY, LIMITS, SAMPLER_CHOICES, SERVER, UNET_CHOICES)

EXPLANATION = Path(__file__).with_name("explain.md")
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
CSS = """
.pixelated img { image-rendering: pixelated; }
"""
TITLE = "Classifier guidance, step by step"
INTRO = ("A diffusion model draws images of the class you pick, steered by a noise-aware classifier "
         "with strength **w** (and, on the class-conditional UNet, by classifier-free guidance "
         "**w_cfg**). Watch the noisy $x_t$ and the predicted clean $\\hat x_0$ as they form, compare "
         "strengths from the same noise, and read the formulas under **Understand**.")


class Controls(NamedTuple):
    """The settings column, shared by Generate and Compare."""
    class_name: gr.Dropdown
    scale: gr.Slider
    unet: gr.Radio
    cfg_scale: gr.Slider
    steps: gr.Slider
    sampler: gr.Radio
    eta: gr.Slider
    num_images: gr.Slider
    seed: gr.Number


class OutputPanel(NamedTuple):
    x_t: gr.Image
    pred_xstart: gr.Image
    status: gr.Markdown
    chart: gr.LinePlot
    table: gr.Dataframe
    scrub: gr.Slider
    gif: gr.DownloadButton
    png: gr.DownloadButton
    recording: gr.State

    @property
    def stream(self) -> list:
        """The outputs of a streaming handler, in handlers.StreamOutputs order."""
        return [self.x_t, self.pred_xstart, self.status, self.chart, self.table, self.recording]

    @property
    def after_run(self) -> list:
        """The outputs of Handlers.finish, in handlers.AfterRun order."""
        return [self.scrub, self.gif, self.png, self.status]


def _default_class(class_names: tuple[str, ...]) -> str:
    return class_names[DEFAULTS.class_index if DEFAULTS.class_index < len(class_names) else 0]


def _controls(class_names: tuple[str, ...], num_timesteps: int) -> Controls:
    class_name = gr.Dropdown(list(class_names), value=_default_class(class_names), label="class c", elem_id="class")
    scale = gr.Slider(0, DISPLAY.scale_slider_max, value=DEFAULTS.scale, step=0.25, label="classifier guidance w",
                      info=f"0 = off; Compare and the API accept up to {LIMITS.max_scale:g}")
    unet = gr.Radio(list(UNET_CHOICES), value=DEFAULTS.unet, label="UNet")
    cfg_scale = gr.Slider(0, DISPLAY.cfg_slider_max, value=DEFAULTS.cfg_scale, step=0.25,
                          label="classifier-free scale w_cfg", interactive=DEFAULTS.unet == "conditional",
                          info="needs the class-conditional UNet")
    steps = gr.Slider(1, num_timesteps, value=DEFAULTS.steps, step=1, label="steps",
                      info=f"1 to T = {num_timesteps}", elem_id="steps")
    sampler = gr.Radio(list(SAMPLER_CHOICES), value=DEFAULTS.sampler, label="sampler")
    eta = gr.Slider(0, 1, value=DEFAULTS.eta, step=0.05, label="eta (DDIM noise)")
    num_images = gr.Slider(1, LIMITS.max_images_per_row, value=DEFAULTS.num_images, step=1,
                           label="images (per row in Compare)", elem_id="images")
    with gr.Row():
        seed = gr.Number(DEFAULTS.seed, precision=0, minimum=0, maximum=LIMITS.max_seed, label="seed", scale=3)
        randomize = gr.Button("new seed", size="sm", scale=1, min_width=80, elem_id="randomize")
    randomize.click(None, None, seed, js=f"() => Math.floor(Math.random() * {LIMITS.max_seed + 1})")
    unet.change(_cfg_slider, unet, cfg_scale, queue=False, show_progress="hidden", api_visibility="private")
    return Controls(class_name, scale, unet, cfg_scale, steps, sampler, eta, num_images, seed)


def _cfg_slider(unet: str) -> gr.Slider:
    """w_cfg only applies to the conditional UNet; leaving it resets w_cfg to 0."""
    if unet == "conditional":
        return gr.Slider(interactive=True)
    return gr.Slider(value=0, interactive=False)


def _output_panel(prefix: str, with_evaluator: bool) -> OutputPanel:
    # Captions above the images rather than Gradio's label badge, which would hide the first row's
    # label; the labels still name the API outputs.
    images = dict(format="png", type="pil", interactive=False, show_label=False, elem_classes="pixelated",
                  buttons=["download", "fullscreen"])
    with gr.Row(equal_height=True):
        with gr.Column(min_width=200):
            gr.Markdown("$x_t$, the current noisy images", latex_delimiters=LATEX)
            x_t = gr.Image(label="x_t", elem_id=f"{prefix}-xt", **images)
        with gr.Column(min_width=200):
            gr.Markdown("$\\hat x_0$, the clean images predicted from $x_t$", latex_delimiters=LATEX)
            pred_xstart = gr.Image(label="x̂_0 (predicted from x_t)", elem_id=f"{prefix}-x0", **images)
    status = gr.Markdown(label="status", elem_id=f"{prefix}-status")
    with gr.Row():
        chart = gr.LinePlot(x=render.CHART_X, y=render.CHART_Y, color=render.CHART_COLOR, y_lim=[0, 1],
                            x_title="step", y_title="p(c | x_t)", color_title="row",
                            label="guidance classifier's belief in the class", scale=1)
        table = gr.Dataframe(headers=render.table_columns(with_evaluator), interactive=False, wrap=True, scale=1,
                             label="per row: mean p(c | x) under each network, and diversity",
                             elem_id=f"{prefix}-table")
    scrub = gr.Slider(0, 1, value=0, step=1, label="scrub the recorded steps (0 = x_T)", visible=False,
                      elem_id=f"{prefix}-scrub")
    with gr.Row():
        gif = gr.DownloadButton("Download denoising (GIF)", visible=False, size="sm")
        png = gr.DownloadButton("Download samples (PNG with parameters)", visible=False, size="sm")
    return OutputPanel(x_t, pred_xstart, status, chart, table, scrub, gif, png, gr.State())


def _wire_run(handlers: Handlers, fn, api_name: str, button: gr.Button, stop: gr.Button, inputs: list,
              panel: OutputPanel, concurrency_limit: int) -> None:
    """A streaming run: hide the last run's extras, stream, then offer scrubbing and downloads.
    Stop ends the run within one step; a run still waiting in the queue is cancelled."""
    button.click(partial(handlers.finish, None), None, panel.after_run, queue=False, show_progress="hidden",
                 api_visibility="private")
    run = button.click(fn, inputs, panel.stream, api_name=api_name, preprocess=False, show_progress="minimal",
                       concurrency_id="sampling", concurrency_limit=concurrency_limit)
    run.then(handlers.finish, panel.recording, panel.after_run, show_progress="hidden", api_visibility="private")
    stop.click(handlers.stop, None, None, cancels=[run], queue=False, api_visibility="private")
    panel.scrub.input(handlers.show_frame, [panel.scrub, panel.recording], [panel.x_t, panel.pred_xstart, panel.status],
                      show_progress="hidden", trigger_mode="always_last", api_visibility="private")


def _load_example(example: Example, class_names: tuple[str, ...]) -> tuple:
    class_name = example.class_name if example.class_name in class_names else _default_class(class_names)
    return (class_name, example.scale, example.unet, example.cfg_scale, example.steps, example.sampler,
            example.eta, example.num_images, example.seed, example.strengths, example.compare,
            gr.Tabs(selected=example.tab))


def build(handlers: Handlers, concurrency_limit: int = SERVER.concurrency_limit) -> gr.Blocks:
    """The whole page for one loaded checkpoint bundle; at most concurrency_limit sampling runs
    (generate and compare together) at once. Launch it with css=CSS."""
    bundle = handlers.bundle
    with gr.Blocks(title=TITLE, analytics_enabled=False,
                   delete_cache=(SERVER.cache_cleanup_s, SERVER.cache_cleanup_s)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}", latex_delimiters=LATEX)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                controls = _controls(bundle.class_names, bundle.num_timesteps)
                gr.Markdown(f"{len(bundle.class_names)} classes · T = {bundle.num_timesteps} · "
                            f"{bundle.schedule} schedule · running on {handlers.device}")
            with gr.Column(scale=3):
                with gr.Tabs() as tabs:
                    with gr.Tab("Generate", id="generate"):
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
                            generate_stop = gr.Button("Stop", variant="stop", elem_id="generate-stop")
                        generate_panel = _output_panel("generate", handlers.with_evaluator)
                    with gr.Tab("Compare", id="compare"):
                        with gr.Row():
                            strengths = gr.Textbox(DEFAULTS.strengths, label="strengths, one row each",
                                                   max_length=LIMITS.max_strengths_chars, scale=2)
                            mode = gr.Radio(list(COMPARE_CHOICES), value=DEFAULTS.compare, label="the rows vary",
                                            scale=3, info="other settings come from the left column; "
                                            "classifier vs classifier-free runs each method alone per strength")
                        with gr.Row():
                            compare = gr.Button("Compare", variant="primary", elem_id="compare-button")
                            compare_stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
                        compare_panel = _output_panel("compare", handlers.with_evaluator)
                    with gr.Tab("Understand", id="understand"):
                        gr.Markdown("### Examples\nEach button loads its settings and opens its tab; "
                                    "then press Generate or Compare.")
                        example_buttons = []
                        for example in EXAMPLES:
                            with gr.Row(equal_height=True):
                                example_buttons.append(gr.Button(example.title, size="sm", scale=1, min_width=180))
                                with gr.Column(scale=3):
                                    gr.Markdown(example.note)
                        gr.Markdown(EXPLANATION.read_text(), latex_delimiters=LATEX)

        c = controls
        settings = [c.scale, c.unet, c.cfg_scale, c.steps, c.sampler, c.eta, c.num_images, c.seed]
        _wire_run(handlers, handlers.generate, "generate", generate, generate_stop,
                  [c.class_name, *settings], generate_panel, concurrency_limit)
        _wire_run(handlers, handlers.compare, "compare", compare, compare_stop,
                  [c.class_name, strengths, mode, *settings], compare_panel, concurrency_limit)
        for example, button in zip(EXAMPLES, example_buttons):
            button.click(partial(_load_example, example, bundle.class_names), None,
                         [c.class_name, *settings, strengths, mode, tabs], queue=False, api_visibility="private")
        demo.unload(handlers.stop)  # a client that goes away (tab closed, API client gone) stops its run too
    return demo
