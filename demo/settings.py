"""Every number the app runs on, each said once: what a fresh page shows, what one request may
ask for, how frames are drawn and streamed, and how the server is run."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints" / "fashion-mnist"

# Widget choices as (label, value); the values are what the API takes.
SAMPLER_CHOICES = (("DDIM", "ddim"), ("DDPM", "ddpm"))
UNET_CHOICES = (("unconditional ε(x_t, ∅)", "unconditional"), ("class-conditional ε(x_t, c)", "conditional"))
COMPARE_CHOICES = (("classifier guidance w", "classifier"),
                   ("classifier-free w_cfg", "classifier-free"),
                   ("classifier vs classifier-free", "classifier-vs-free"))


@dataclass(frozen=True)
class AppDefaults:
    """What a fresh page shows, and what the API uses for an argument left out."""
    class_index: int = 7            # "Sneaker" in Fashion-MNIST; 0 when a checkpoint has fewer classes
    scale: float = 5.0              # classifier guidance w, as chosen by the evaluation (docs/RESULTS.md)
    unet: str = "unconditional"     # the classifier guidance setting of Dhariwal & Nichol
    cfg_scale: float = 0.0          # classifier-free w_cfg (used with the conditional UNet)
    steps: int = 25                 # DDIM steps, as chosen by the evaluation
    sampler: str = "ddim"
    eta: float = 0.0                # DDIM noise: 0 deterministic given x_T, 1 DDPM-like
    num_images: int = 8             # per row
    seed: int = 0
    strengths: str = "0, 1, 2, 4, 8"
    compare: str = "classifier"     # what the Compare strengths set; see COMPARE_CHOICES


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; validate.py checks every argument against these."""
    max_scale: float = 100.0        # classifier w, far past the point where samples fall apart
    max_cfg_scale: float = 30.0     # classifier-free w_cfg
    max_images_per_row: int = 16
    max_rows: int = 10              # rows compared at once (classifier vs free makes 2 per strength)
    max_images: int = 80            # rows x images per row
    max_image_steps: int = 4000     # images x steps: about two minutes of a 2-core CPU at full size
    max_seed: int = 2**31 - 1       # safe as a JavaScript number
    max_strengths_chars: int = 200


@dataclass(frozen=True)
class Display:
    """How frames look and how often they go out."""
    upscale: int = 2                # nearest-neighbour factor of streamed frames and the GIF; the page
                                    # enlarges them further without smoothing (CSS pixelated), so a
                                    # small factor keeps PNG encoding cheap
    png_upscale: int = 4            # the downloadable PNG of the samples
    pad: int = 2                    # pixels between tiles, before upscaling
    frame_interval_s: float = 0.5   # at most two frames a second: encoding stays a small cost
    gif_max_frames: int = 60        # the GIF keeps evenly spaced steps, always the last
    gif_seconds: float = 4.0        # playing time of the denoising, then the last frame holds
    gif_hold_s: float = 1.5
    scale_slider_max: float = 30.0  # slider tops; the API and Compare accept up to Limits
    cfg_slider_max: float = 10.0


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


def evaluated_defaults(folder: Path = SHIPPED_CHECKPOINTS) -> dict:
    """The scale, step count and sampler that `python -m guidance.evaluate` chose for the shipped
    checkpoints (their defaults.json, with the reasons in docs/RESULTS.md); {} when absent."""
    try:
        chosen = json.loads((folder / "defaults.json").read_text())
        return {"scale": float(chosen["scale"]), "steps": int(chosen["steps"]), "sampler": str(chosen["sampler"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


DEFAULTS = replace(AppDefaults(), **evaluated_defaults())
LIMITS = Limits()
DISPLAY = Display()
SERVER = ServerSettings()
