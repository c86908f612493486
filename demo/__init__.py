"""The Gradio app around the guidance library.

    settings   app defaults (and the checkpoint folder's defaults.json), request limits, display and
               server settings (one place for each number)
    arguments  every endpoint's raw arguments translated into a Request (which guidescope.request.check
               checks, once), plus row labels
    models     the loaded checkpoint bundles the page offers, by the name the API takes
    runs       one sampling run recorded step by step: images, the classifier's push, per-row numbers
    render     grids, the two charts, the per-row table, the GIF and the PNG with parameters
    stops      the run in progress of each session, and the Stop requests that end it within a step
    downloads  the bounded folder of files to download: the GIF of a run and the PNG of its samples
    timing     how fast each model runs here: the page's info line, whether live mode is offered
    handlers   the streaming generators behind the buttons and API endpoints
    examples   settings worth a look, loaded by one click
    ui         the layout and its wiring
    launch     command-line options, thread count, checkpoint loading, queue and launch
    zerogpu    the Hugging Face ZeroGPU decorator, where the `spaces` package is installed
"""
