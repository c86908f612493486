"""The least a streamed request through Gradio costs on this machine: a Blocks app with one endpoint
that, like the app's Generate, is a generator streaming an image and a status line, with no work
behind it (the app's frames hold three images, two charts and a table besides). scripts/benchmark_latent.py serves it beside the app and times it the same way.

    python scripts/gradio_floor.py [--host 127.0.0.1] [--port 7861]

The image (grey, about the size of a frame of 8 samples) is sent once and the generator ends.
"""
from __future__ import annotations

import argparse

import gradio as gr
import numpy as np
from PIL import Image

FRAME_SIZE = (244, 124)  # width, height


def build() -> gr.Blocks:
    frame = Image.fromarray(np.full(FRAME_SIZE[::-1], 128, np.uint8))

    def floor():
        yield frame, None, "**done**"  # as the app's outputs begin: x_t, x-hat_0 (none yet), the status

    with gr.Blocks() as demo:
        images = [gr.Image(type="pil", format="png") for _ in range(2)]
        status = gr.Markdown()
        gr.Button("Run").click(floor, None, [*images, status], api_name="floor")
    return demo


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7861)
    args = p.parse_args(argv)
    build().queue().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
