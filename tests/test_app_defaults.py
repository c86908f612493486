"""The page's default strength and step count are the ones the evaluation chose."""
import json

from demo import settings


def test_defaults_come_from_the_evaluation_of_the_shipped_checkpoints():
    chosen = json.loads((settings.SHIPPED_CHECKPOINTS / "defaults.json").read_text())
    assert (settings.DEFAULTS.scale, settings.DEFAULTS.steps, settings.DEFAULTS.sampler) == (
        chosen["scale"], chosen["steps"], chosen["sampler"])


def test_missing_or_malformed_defaults_fall_back_to_the_built_in_ones(tmp_path):
    assert settings.evaluated_defaults(tmp_path) == {}
    (tmp_path / "defaults.json").write_text('{"scale": "five"}')
    assert settings.evaluated_defaults(tmp_path) == {}
    (tmp_path / "defaults.json").write_text('{"scale": 3, "steps": 10, "sampler": "ddpm"}')
    assert settings.evaluated_defaults(tmp_path) == {"scale": 3.0, "steps": 10, "sampler": "ddpm"}
