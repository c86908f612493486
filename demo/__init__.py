"""The Gradio app around the guidance library.

    settings   app defaults, request limits and server settings (one place for each number)
    validate   every endpoint's arguments checked on the server, turned into a RunSettings
    runs       one sampling run: rows of guidance strengths sharing noise, recorded step by step
    render     grids, the probability chart, the per-row table, the GIF and the PNG with parameters
    handlers   the streaming generators behind the buttons and API endpoints
    ui         the layout and its wiring
    launch     command-line options, thread count, checkpoint loading, queue and launch
"""
