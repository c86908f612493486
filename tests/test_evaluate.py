"""The evaluation end to end on tiny untrained networks and the real test images."""
import json

import pytest
import torch

from guidance import checkpoints, evaluate
from guidance.data import FASHION_CLASSES
from guidance.models import ClassifierConfig, Evaluator, EvaluatorConfig, NoisyClassifier, UNet, UNetConfig


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    meta = dict(class_names=list(FASHION_CLASSES), diffusion={"schedule": "cosine", "num_timesteps": 1000})
    checkpoints.save(UNet(UNetConfig(base_channels=8, num_heads=2)), folder, "unet", **meta)
    checkpoints.save(NoisyClassifier(ClassifierConfig(base_channels=8)), folder, "classifier", **meta)
    checkpoints.save(Evaluator(EvaluatorConfig(layers=(1, 1, 1, 1), channels=(8, 8, 16, 16), input_size=28)),
                     folder, "evaluator", class_names=list(FASHION_CLASSES))
    return folder


def test_evaluation_writes_tables_plots_defaults_and_model_card(tiny_checkpoints, tmp_path):
    out, readme = tmp_path / "docs", tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\noutro\n")
    args = ["--checkpoints", str(tiny_checkpoints), "--out", str(out), "--readme", str(readme), "--device", "cpu", "--n-per-class", "4",
            "--n-real", "200", "--scales", "0,2", "--cfg-scales", "0", "--combined-scales", "1", "--steps", "2",
            "--ddim-steps", "1,2", "--ddpm-steps", "2", "--batch-size", "40"]
    assert evaluate.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    sweeps = [r["sweep"] for r in results["rows"]]
    assert sweeps == ["classifier", "classifier", "cfg", "steps", "steps", "combined", "steps"]
    for row in results["rows"]:
        assert 0 <= row["fidelity"] <= 1 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert row["fd"] >= 0 and sum(row["histogram"]) == 40 and len(row["per_class"]) == 10
    defaults = json.loads((tiny_checkpoints / "defaults.json").read_text())
    assert defaults["scale"] == 2 and defaults["sampler"] == "ddim"
    report = (out / "RESULTS.md").read_text()
    assert "## Classifier guidance on the unconditional model" in report and "## Step counts" in report
    assert (out / "guidance_tradeoff.png").stat().st_size > 1000 and (out / "samples_classifier.png").exists()
    assert "evaluator.safetensors" in (tiny_checkpoints / "README.md").read_text()
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text and "| 2 (default) |" in text
    # The report is rebuilt from results.json alone, identically.
    assert evaluate.main(["--report-only", "--checkpoints", str(tiny_checkpoints), "--out", str(out),
                          "--readme", str(readme)]) == 0
    assert (out / "RESULTS.md").read_text() == report and readme.read_text() == text


def test_defaults_pick_the_smallest_scale_meeting_both_targets():
    def row(sweep, scale, fidelity, fd, steps=50):
        return dict(sweep=sweep, scale=scale, cfg_scale=None, steps=steps, sampler="ddim", fidelity=fidelity, fd=fd)
    rows = [row("classifier", 0, 0.1, 4.0), row("classifier", 1, 0.8, 5.0), row("classifier", 2, 0.92, 7.9),
            row("classifier", 4, 0.97, 8.5), row("steps", 2, 0.85, 6.0, steps=10), row("steps", 2, 0.91, 7.0, steps=25)]
    d = evaluate.choose_defaults(rows)
    assert (d["scale"], d["steps"]) == (2, 25)
    # No scale within 2x the unguided distance reaches 90%: the most faithful within it wins.
    rows[2]["fidelity"] = 0.85
    assert evaluate.choose_defaults(rows)["scale"] == 2


def test_missing_checkpoints_exit_with_code_2(tmp_path, capsys):
    assert evaluate.main(["--checkpoints", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
