"""The page's defaults come from the defaults.json of the checkpoint folder the app was started
with (what the evaluation chose for those checkpoints), field by field over AppDefaults; the
page and the API then offer them."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import gradio as gr
import pytest

from app_fixtures import checkpoint_dir  # noqa: F401
from demo import launch as launch_module
from demo.settings import AppDefaults, app_defaults
from guidescope.bundle import load_bundle

CHOSEN = {"scale": 3, "steps": 10, "sampler": "dpm++2m", "interval": [200, 800], "schedule": "ramp-up",
          "scale_reason": "why", "steps_reason": "why"}  # the last two: notes for people, no field of the page
EXPECTED = replace(AppDefaults(), scale=3.0, steps=10, sampler="dpm++2m", interval="200-800", schedule="ramp-up")


def folder_with(tmp_path, checkpoint_dir, defaults: dict | str | None):
    """A copy of the tiny checkpoints with defaults.json holding `defaults` (None: no file)."""
    folder = tmp_path / "checkpoints"
    shutil.copytree(checkpoint_dir, folder)
    if defaults is not None:
        (folder / "defaults.json").write_text(defaults if isinstance(defaults, str) else json.dumps(defaults))
    return folder


def test_defaults_json_sets_the_fields_it_names_and_the_rest_stay_built_in(tmp_path):
    (tmp_path / "defaults.json").write_text(json.dumps(CHOSEN))
    assert app_defaults(tmp_path) == EXPECTED


@pytest.mark.parametrize("text, expected", [
    (None, AppDefaults()),
    ("not json", AppDefaults()),
    ("[1, 2]", AppDefaults()),
    ('{"scale": "five", "steps": 10}', replace(AppDefaults(), steps=10)),        # a value of the wrong type is ignored
    ('{"steps": 2.5, "seed": true, "eta": 1}', replace(AppDefaults(), eta=1.0)),  # ints stay ints; a number for a float
    ('{"interval": null}', AppDefaults()),
    ('{"interval": "0-500", "threshold": "dynamic"}', replace(AppDefaults(), interval="0-500", threshold="dynamic")),
])
def test_missing_malformed_or_partial_defaults_fall_back_field_by_field(tmp_path, text, expected):
    if text is not None:
        (tmp_path / "defaults.json").write_text(text)
    assert app_defaults(tmp_path) == expected
    assert app_defaults(None) == AppDefaults()


@pytest.fixture()
def launched(monkeypatch):
    """launch() as app.py runs it, with Blocks.launch recording the Blocks instead of serving."""
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    blocks = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: blocks.append(self))

    def run(folder) -> tuple[int, gr.Blocks | None]:
        code = launch_module.launch(launch_module.parse_args(["--checkpoints", str(folder), "--threads", "1"]))
        return code, blocks[-1] if blocks else None

    return run


def api_defaults(demo: gr.Blocks, endpoint: str) -> dict:
    parameters = demo.get_api_info()["named_endpoints"][endpoint]["parameters"]
    return {p["parameter_name"]: p["parameter_default"] for p in parameters}


def test_the_page_and_the_api_offer_the_started_folders_defaults(tmp_path, checkpoint_dir, launched):
    code, demo = launched(folder_with(tmp_path, checkpoint_dir, CHOSEN))
    assert code == 0
    for endpoint in ("/generate", "/compare"):
        offered = api_defaults(demo, endpoint)
        assert (offered["scale"], offered["steps"], offered["sampler"], offered["interval"], offered["schedule"]) == (
            3.0, 10, "dpm++2m", "200-800", "ramp-up")
        assert offered["threshold"] == AppDefaults.threshold and offered["seed"] == AppDefaults.seed
    values = {c.elem_id: c.value for c in demo.blocks.values() if getattr(c, "elem_id", None)}
    assert (values["steps"], values["sampler"], values["interval"]) == (10, "dpm++2m", "200-800")


def test_a_folder_without_defaults_json_gets_the_built_in_defaults(tmp_path, checkpoint_dir, launched):
    code, demo = launched(folder_with(tmp_path, checkpoint_dir, None))
    assert code == 0
    offered = api_defaults(demo, "/generate")
    built_in = AppDefaults()
    assert (offered["scale"], offered["steps"], offered["sampler"], offered["interval"]) == (
        built_in.scale, built_in.steps, built_in.sampler, built_in.interval)


def test_the_handlers_read_the_defaults_of_their_bundles_folder(tmp_path, checkpoint_dir):
    from demo.handlers import Handlers

    handlers = Handlers(load_bundle(folder_with(tmp_path, checkpoint_dir, CHOSEN)), downloads=tmp_path / "downloads")
    assert handlers.defaults == EXPECTED


@pytest.mark.parametrize("chosen, message", [
    ({"sampler": "euler"}, "sampler must be one of ddim, ddpm, dpm++2m, unipc"),
    ({"interval": "0-5000"}, "a guidance interval needs 0 <= t_lo <= t_hi <= 999"),
    ({"steps": 5000}, "steps must be an integer from 1 to 1000"),
])
def test_defaults_the_app_would_refuse_stop_it_at_the_start(tmp_path, checkpoint_dir, launched, capsys, chosen,
                                                             message):
    folder = folder_with(tmp_path, checkpoint_dir, chosen)
    code, demo = launched(folder)
    err = capsys.readouterr().err
    assert code == 2 and demo is None
    assert str(folder / "defaults.json") in err and message in err
