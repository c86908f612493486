"""The evaluation, in four parts; command.py is its command line (`python -m guidescope.evaluate`).

    measure.py   one setting: images through guidescope.generation, judged by the evaluator network,
                 scores with bootstrap noise (guidescope.metrics)
    compare.py   two settings, or two curves at equal fidelity, against the noise (paired bootstrap)
    sweeps.py    the budgets, the sweeps and the run that measures them into results.json
    defaults.py  the app's defaults from the measurements
    report.py    RESULTS.md and its figures (plots.py); card.py: the model card, defaults.json and
                 the README's results section
"""
