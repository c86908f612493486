"""The evaluation: its rules on synthetic measurements (paired noise, the within-noise step rule,
the schedule decision), and the whole command line at the smoke budget on tiny untrained networks
and a tiny image folder (the data found through the checkpoints' own record)."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from guidescope import checkpoints
from guidescope.evaluation import card, sweeps
from guidescope.evaluation import command as evaluate
from guidescope.evaluation.compare import difference, matched_difference, not_worse, verdict
from guidescope.evaluation.defaults import (DECISION, choose_decided_scale, choose_defaults, choose_sampler,
                                            choose_scale, choose_schedule, choose_steps, decide, non_inferior)
from guidescope.evaluation.measure import Measurement, Setting
from guidescope.evaluation.sweeps import BUDGETS, SWEEPS, Results
from guidescope.metrics import Scores
from guidescope.networks.small import ClassifierConfig, Evaluator, EvaluatorConfig, NoisyClassifier, UNet, UNetConfig
from guidescope.training import data

RESAMPLES = 400


# -- synthetic measurements ----------------------------------------------------------------------

def fake(setting: Setting, fidelity: float, fd: float, recall: float = 0.7, noise: float = 0.01,
         sweep: str = "steps", seed: int = 0) -> Measurement:
    """A measurement whose replicates scatter around its scores with standard deviation `noise`
    (x10 for the Frechet distance), independently of every other measurement's."""
    g = np.random.default_rng(seed)
    point = Scores(fidelity, fd, 0.8, recall)
    spread = Scores(noise, 10 * noise, noise, noise)
    replicates = Scores(*(tuple(p + s * g.standard_normal(RESAMPLES)) for p, s in zip(point, spread)))
    return Measurement(setting, (sweep,), point, replicates, (fidelity,) * 3, (1, 1, 1), 30, 1.0)


def test_differences_are_paired_replicate_by_replicate():
    a = fake(Setting(scale=1.0), 0.90, 3.0, seed=1)
    shifted = Measurement(Setting(scale=2.0), ("steps",), a.scores._replace(fidelity=0.91),
                          a.replicates._replace(fidelity=tuple(v + 0.01 for v in a.replicates.fidelity)),
                          a.per_class, a.histogram, a.images, 1.0)
    # The same resamples moved by 0.01: the difference is exactly 0.01, however wide each interval is.
    d = difference(shifted, a, "fidelity")
    assert d.value == pytest.approx(0.01) and d.low == pytest.approx(0.01) and d.high == pytest.approx(0.01)
    assert a.half_width("fidelity") > 0.01
    assert verdict({"fidelity": d}) == "better" and not not_worse(a, shifted)
    # Independent noise of the same size: a 0.01 difference is within noise.
    b = fake(Setting(scale=2.0), 0.91, 3.0, seed=2)
    assert verdict({"fidelity": difference(b, a, "fidelity")}) == "within noise" and not_worse(a, b)


def test_the_scale_is_the_smallest_meeting_both_targets():
    rows = [fake(Setting(scale=w), f, fd, sweep="classifier", seed=k)
            for k, (w, f, fd) in enumerate([(0, 0.1, 4.0), (1, 0.8, 5.0), (2, 0.96, 7.9), (4, 0.97, 8.5)])]
    assert choose_scale(rows)[0] == 2
    # No scale within 2x the unguided distance reaches 95%: the most faithful within it wins.
    rows[2] = fake(Setting(scale=2), 0.85, 7.9, sweep="classifier")
    assert choose_scale(rows)[0] == 2
    with pytest.raises(ValueError, match="w = 0"):
        choose_scale(rows[1:])


def step_rows(noise: float) -> list[Measurement]:
    """DDIM at 50 steps (the reference), and cheaper settings: DPM-Solver++ at 5 steps far worse,
    at 8 steps a little worse, DDIM at 25 as good."""
    return [fake(Setting("ddim", 50, 5.0), 0.93, 3.50, noise=noise, seed=1),
            fake(Setting("dpm++2m", 5, 5.0), 0.70, 6.00, noise=noise, seed=2),
            fake(Setting("dpm++2m", 8, 5.0), 0.925, 3.56, noise=noise, seed=3),
            fake(Setting("ddim", 25, 5.0), 0.93, 3.50, noise=noise, seed=4)]


def test_the_step_count_is_the_fewest_within_the_noise_of_the_reference():
    pick, reason = choose_sampler(step_rows(noise=0.01), reference_steps=50)
    assert (pick.sampler, pick.steps) == ("dpm++2m", 8) and "within the measured noise" in reason
    # With less noise the small loss at 8 steps is real: the next cheapest as good as DDIM 50 wins.
    assert choose_sampler(step_rows(noise=0.001), reference_steps=50)[0] == Setting("ddim", 25, 5.0)
    # Nothing cheaper within the noise: the reference stays.
    assert choose_sampler(step_rows(noise=0.001)[:2], reference_steps=50)[0] == Setting("ddim", 50, 5.0)
    # DDIM 50 with dynamic thresholding is not the reference: the reference is the clip's.
    dynamic_ref = fake(Setting("ddim", 50, 5.0, threshold="dynamic"), 0.99, 3.0, noise=0.001, seed=9)
    assert choose_sampler([dynamic_ref] + step_rows(noise=0.001)[:2], reference_steps=50)[0] == Setting("ddim", 50, 5.0)


def schedule_rows(gain: float, noise: float, reach: float = 1.0) -> list[Measurement]:
    """Constant w and guidance in 200-800 over w, at DPM-Solver++ 10 steps. The interval reaches
    each fidelity with a Frechet distance lower by `gain`; its fidelities are scaled by `reach`."""
    curve = [(1, 0.60, 3.0), (2, 0.80, 3.2), (5, 0.90, 3.5), (8, 0.95, 4.0)]
    rows = [fake(Setting("dpm++2m", 10, w), f, fd, noise=noise, sweep="schedules", seed=k)
            for k, (w, f, fd) in enumerate(curve)]
    rows += [fake(Setting("dpm++2m", 10, 1.5 * w, schedule="constant", interval=(200, 800)), reach * f, fd - gain,
                  noise=noise, sweep="schedules", seed=10 + k) for k, (w, f, fd) in enumerate(curve)]
    return rows


def test_a_schedule_is_taken_only_when_it_beats_constant_beyond_the_noise():
    pick, reason = choose_schedule(schedule_rows(gain=0.5, noise=0.005), scale=5)
    assert pick is not None and pick.setting.interval == (200, 800) and pick.setting.scale == 7.5
    assert "beats constant w" in reason
    # The same gain inside a wider noise, or a schedule that never reaches the fidelity: constant stays.
    assert choose_schedule(schedule_rows(gain=0.5, noise=0.2), scale=5)[0] is None
    pick, reason = choose_schedule(schedule_rows(gain=0.5, noise=0.005, reach=0.8), scale=5)
    assert pick is None and "not reached" in reason


def test_matched_fidelity_interpolates_each_curve():
    rows = schedule_rows(gain=0.5, noise=0.005)
    constant, interval = rows[:4], rows[4:]
    d = matched_difference(interval, constant, 0.85, "fd")
    assert d.value == pytest.approx(-0.5) and d.high < 0
    assert math.isnan(matched_difference(interval, constant, 0.99, "fd").value)  # beyond both curves


def test_the_defaults_follow_the_rules_in_turn():
    rows = [fake(Setting(scale=w), f, fd, sweep="classifier", seed=k)
            for k, (w, f, fd) in enumerate([(0, 0.1, 4.0), (2, 0.8, 5.0), (5, 0.92, 6.0)])]
    rows += step_rows(noise=0.01)[1:]   # DDIM 50 at w = 5 is the classifier sweep's row
    rows[2] = rows[2].with_sweep("steps")
    d = choose_defaults(rows, reference_steps=50)
    assert (d.scale, d.sampler, d.steps, d.schedule, d.interval) == (5, "dpm++2m", 8, "constant", None)
    schedules = [Measurement(Setting("dpm++2m", 8, m.setting.scale, None, m.setting.schedule, m.setting.interval),
                             m.sweeps, m.scores, m.replicates, m.per_class, m.histogram, m.images, 1.0)
                 for m in schedule_rows(gain=0.5, noise=0.005)]
    d = choose_defaults(rows + schedules, reference_steps=50)
    # The schedule that wins is reported, not applied: its w was not measured on the decision sample.
    assert (d.scale, d.schedule, d.interval) == (5, "constant", None)
    assert d.schedule_reason.startswith("reported, not applied") and "constant 200-800 beats constant w" in d.schedule_reason
    assert d.decision_images == 0 and d.steps_reason.startswith("screened, not decided")
    assert set(d.to_json("cpu")) >= {"scale", "steps", "sampler", "schedule", "interval", "budget", "decision_images"}


def test_the_plan_shares_settings_between_sweeps_and_scales_intervals_to_T():
    budget = BUDGETS["cpu"]
    chosen = choose_defaults([fake(Setting(scale=w), f, 3.0, sweep="classifier", seed=k)
                              for k, (w, f) in enumerate([(0, 0.1), (5, 0.95)])], budget.reference_steps)
    steps = sweeps.plan(budget, "steps", chosen, 1000)
    assert {(s.sampler, s.steps) for s in steps} >= {("dpm++2m", 5), ("dpm++2m", 20), ("unipc", 5), ("unipc", 15),
                                                     ("ddim", 10), ("ddim", 50)}
    assert {s.scale for s in steps} == {5}
    # The samplers sweep holds the chosen sampler at its step count, besides DDIM and DPM-Solver++.
    lines = {(s.sampler, s.steps) for s in sweeps.plan(budget, "samplers", replace(chosen, sampler="unipc", steps=8), 1000)}
    assert lines == {("ddim", 50), ("ddim", 25), ("dpm++2m", 10), ("unipc", 8)}
    lines = {(s.sampler, s.steps) for s in sweeps.plan(budget, "samplers", replace(chosen, sampler="dpm++2m", steps=15), 1000)}
    assert lines == {("ddim", 50), ("ddim", 25), ("dpm++2m", 15)}
    intervals = {s.interval for s in sweeps.plan(budget, "schedules", chosen, 1000)}
    assert intervals == {None, (0, 500), (200, 800), (500, 999), (0, 999)}
    assert {s.interval for s in sweeps.plan(budget, "schedules", chosen, 100)} == {None, (0, 50), (20, 80), (50, 99), (0, 99)}
    everything = sweeps.planned_settings(budget, chosen, 1000)
    assert len(everything) == len(set(everything))


def test_measurements_survive_json():
    m = fake(Setting("dpm++2m", 10, 2.0, None, "ramp-up", (0, 999), "dynamic"), 0.9, 3.0)
    m = Measurement(m.setting, m.sweeps, m.scores, m.replicates._replace(recall=(math.nan,) * RESAMPLES),
                    m.per_class, m.histogram, m.images, m.sample_seconds)
    back = Measurement.from_json(json.loads(json.dumps(m.to_json())))
    assert back.setting == m.setting and back.scores == pytest.approx(m.scores, abs=1e-6)
    assert math.isnan(back.half_width("recall")) and back.half_width("fd") == pytest.approx(m.half_width("fd"), abs=1e-5)


def test_default_paths_never_replace_a_larger_budgets_files(tmp_path):
    readme, defaults = tmp_path / "README.md", tmp_path / "defaults.json"
    assert card.may_replace(readme, "smoke")                       # nothing there yet
    readme.write_text("# written by hand\n")
    assert not card.may_replace(readme, "gpu")
    readme.write_text(card.MARKER.format(budget="cpu") + "\n")
    assert not card.may_replace(readme, "smoke") and card.may_replace(readme, "cpu") and card.may_replace(readme, "gpu")
    defaults.write_text(json.dumps({"scale": 5, "budget": "gpu"}))
    assert not card.may_replace(defaults, "cpu") and card.may_replace(defaults, "gpu")


# -- the command line on tiny networks -----------------------------------------------------------

CLASSES = ("boot", "coat", "shirt")


def write_folder(root, per_class: int = 6):
    """root/<class>/<i>.png: distinct grey images of assorted sizes."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (7 + i, 9), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint folder, image folder): three tiny random networks for 8x8 grey images, trained
    on nothing, whose JSON records the image folder as their data (T = 100)."""
    root = tmp_path_factory.mktemp("evaluate")
    images = write_folder(root / "images")
    train, _ = data.load(data.DataSource("image-folder", str(images), image_size=8, channels=1, holdout=0.34))
    folder = root / "checkpoints"
    torch.manual_seed(0)
    meta = dict(class_names=list(CLASSES), diffusion={"schedule": "cosine", "num_timesteps": 100},
                data=train.record.to_json())
    shape = dict(image_size=8, num_classes=len(CLASSES))
    unet = UNet(UNetConfig(**shape, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                           num_heads=2, dropout=0.0))
    with torch.no_grad():  # fresh networks zero their output layer: eps would be 0
        for p in unet.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    checkpoints.save(unet, folder, "unet", **meta)
    checkpoints.save(NoisyClassifier(ClassifierConfig(**shape, base_channels=8, channel_mults=(1, 2))), folder,
                     "classifier", **meta)
    checkpoints.save(Evaluator(EvaluatorConfig(**shape, layers=(1, 1, 1, 1), channels=(8, 8, 8, 8), input_size=16)),
                     folder, "evaluator", **meta)
    return folder, images


def smoke(folder, out, *extra) -> int:
    return evaluate.main(["--checkpoints", str(folder), "--budget", "smoke", "--out", str(out), "--device", "cpu",
                          "--backend", "torch", *map(str, extra)])


@pytest.fixture(scope="module")
def smoke_run(tiny, tmp_path_factory):
    """The smoke budget on the tiny checkpoints: (checkpoints, out, README)."""
    folder, _ = tiny
    out = tmp_path_factory.mktemp("out") / "evaluation"
    readme = out.parent / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nthe stale table\n<!-- results:end -->\noutro\n")
    assert smoke(folder, out, "--readme", readme) == 0
    return folder, out, readme


def test_smoke_runs_every_sweep_once_per_setting(smoke_run):
    folder, out, _ = smoke_run
    results = Results.load(out / "results.json")
    assert {s for m in results.measurements for s in m.sweeps} == set(SWEEPS) - {DECISION}
    # The decision sweep: its own, larger sample, each setting once, the reference among them.
    decision_n = BUDGETS["smoke"].decision_images(len(CLASSES)) * len(CLASSES)
    assert results.info.decision_images_per_class * len(CLASSES) == decision_n > BUDGETS["smoke"].images(len(CLASSES))
    assert results.decisions and all(m.images == decision_n for m in results.decisions)
    assert len({m.setting for m in results.decisions}) == len(results.decisions)
    assert any((m.setting.sampler, m.setting.steps) == ("ddim", BUDGETS["smoke"].reference_steps) for m in results.decisions)
    defaults = json.loads((out / "results.json").read_text())["defaults"]
    assert defaults["decision_images"] == decision_n
    settings = [m.setting for m in results.measurements]
    assert len(settings) == len(set(settings))
    n = BUDGETS["smoke"].images(len(CLASSES))
    assert results.info.images_per_class == n and results.info.class_names == CLASSES
    for m in results.measurements:
        assert m.images == n * len(CLASSES) and sum(m.histogram) == m.images
        assert len(m.replicates.fd) == BUDGETS["smoke"].resamples
        assert 0 <= m.scores.fidelity <= 1 and 0 <= m.scores.precision <= 1 and m.scores.fd >= 0
    assert results.info.data["source"] == "image-folder" and results.info.budget == "smoke"
    assert json.loads((out / "results.json").read_text())["defaults"]["budget"] == "smoke"


def test_smoke_writes_the_report_figures_card_defaults_and_readme(smoke_run, tiny):
    folder, out, readme = smoke_run
    page = (out / "RESULTS.md").read_text()
    for title in ("## The app's defaults", "## Classifier guidance", "## Samplers and step counts",
                  "### Across guidance strengths", "## Guidance schedules", "## Dynamic thresholding",
                  "## Classifier-free guidance", "## Both combined"):
        assert title in page
    assert "**smoke** budget" in page and "image c*" in page
    for figure in ("guidance_tradeoff.png", "sampler_steps.png", "schedule_tradeoff.png"):
        assert (out / figure).stat().st_size > 1000
    with Image.open(out / "samples_classifier.png") as samples:  # a row of 8x8 tiles per scale, upscaled 2x
        assert samples.width == 2 * (len(CLASSES) * 10 + 2)
    model_card = (folder / "README.md").read_text()
    assert str(tiny[1].resolve()) in model_card and "Fashion-MNIST" not in model_card
    assert all(f"| {name} |" in model_card for name in CLASSES) and card.MARKER.format(budget="smoke") in model_card
    defaults = json.loads((folder / "defaults.json").read_text())
    results = Results.load(out / "results.json")
    decided = choose_defaults(results.measurements, results.info.reference_steps, results.decisions)
    assert defaults == decided.to_json("smoke")  # what the app reads is what the rules chose
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "the stale table" not in text and "(default)" in text


def test_report_only_rebuilds_the_same_files_and_keeps_a_larger_budgets(smoke_run):
    folder, out, readme = smoke_run
    page, model_card, text = (out / "RESULTS.md").read_text(), (folder / "README.md").read_text(), readme.read_text()
    larger = json.dumps({"scale": 1, "steps": 9, "sampler": "ddim", "budget": "gpu"})
    (folder / "defaults.json").write_text(larger)
    assert evaluate.main(["--report-only", "--out", str(out), "--readme", str(readme)]) == 0
    assert (out / "RESULTS.md").read_text() == page and readme.read_text() == text
    assert (folder / "README.md").read_text() == model_card
    assert (folder / "defaults.json").read_text() == larger        # a smoke run keeps the gpu budget's
    explicit = out / "elsewhere" / "defaults.json"
    assert evaluate.main(["--report-only", "--out", str(out), "--defaults", str(explicit)]) == 0
    assert json.loads(explicit.read_text())["budget"] == "smoke"
    # the training-free search's record stays where the evaluation rewrites the rest
    explicit.write_text(json.dumps({"budget": "smoke", "steps": 3, "training_free": {"steps": 7}}))
    assert evaluate.main(["--report-only", "--out", str(out), "--defaults", str(explicit)]) == 0
    rewritten = json.loads(explicit.read_text())
    assert rewritten["training_free"] == {"steps": 7} and rewritten["steps"] != 3


def test_resume_keeps_measured_settings_and_measures_the_rest(smoke_run, tiny, tmp_path, monkeypatch):
    folder, out, _ = smoke_run
    images = tiny[1]
    copy = tmp_path / "evaluation"
    shutil.copytree(out, copy)
    record = json.loads((copy / "results.json").read_text())
    total = len(record["rows"])
    record["rows"] = record["rows"][:-3]           # as if the run had stopped three settings early
    (copy / "results.json").write_text(json.dumps(record))
    measured = []
    real_measure = sweeps.measure

    def counting(bundle, setting, *args, **kwargs):
        measured.append(setting)
        return real_measure(bundle, setting, *args, **kwargs)

    monkeypatch.setattr(sweeps, "measure", counting)
    # The data options name the same images as the checkpoints' record: the same run, so it resumes.
    same_data = ("--image-folder", images, "--image-size", 8, "--channels", 1, "--holdout", 0.34)
    assert smoke(folder, copy, "--resume", "--model-card", tmp_path / "card.md", "--defaults", tmp_path / "d.json",
                 *same_data) == 0
    resumed = Results.load(copy / "results.json")
    original = Results.load(out / "results.json")
    assert len(measured) == 3 and len(resumed.measurements) == total
    assert [m.setting for m in resumed.measurements] == [m.setting for m in original.measurements]
    for a, b in zip(resumed.measurements, original.measurements):  # the same seeds give the same images
        assert a.scores == pytest.approx(b.scores, abs=1e-6) and a.sweeps == b.sweeps
    assert "(resumed: the settings already in results.json" in (copy / "RESULTS.md").read_text()
    assert "(resumed:" not in (out / "RESULTS.md").read_text()


def test_an_interrupted_runs_results_can_be_read(smoke_run, tmp_path):
    _, out, _ = smoke_run
    record = json.loads((out / "results.json").read_text())
    for kept in (3, 8, 14, 19):   # cut inside the steps, samplers, schedules and thresholds sweeps
        partial = tmp_path / f"cut{kept}"
        partial.mkdir()
        (partial / "results.json").write_text(json.dumps({**record, "rows": record["rows"][:kept]}))
        assert evaluate.main(["--report-only", "--out", str(partial), "--model-card", str(partial / "card.md"),
                              "--defaults", str(partial / "defaults.json")]) == 0
        assert "## Classifier guidance" in (partial / "RESULTS.md").read_text()


def test_resume_refuses_results_of_another_run(smoke_run, tmp_path):
    folder, out, _ = smoke_run
    shutil.copytree(out, tmp_path / "evaluation")
    assert smoke(folder, tmp_path / "evaluation", "--resume", "--seed", "3") == 2
    # A results.json of another layout is refused, not misread.
    (tmp_path / "evaluation" / "results.json").write_text(json.dumps({"info": {"n_per_class": 100}, "rows": []}))
    assert smoke(folder, tmp_path / "evaluation", "--resume") == 2


def test_data_options_override_the_checkpoints_record(tiny, tmp_path, capsys):
    folder, _ = tiny
    other = tmp_path / "other"
    for c, name in enumerate(("cat", "dog", "emu")):
        (other / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i + 10 * c, dtype=np.uint8)).save(other / name / f"{i}.png")
    assert smoke(folder, tmp_path / "o", "--image-folder", other, "--image-size", 8) == 2
    assert "are not the checkpoints'" in capsys.readouterr().err


def test_estimate_times_every_kind_of_step_and_writes_nothing(tiny, tmp_path, capsys):
    folder, _ = tiny
    assert smoke(folder, tmp_path / "o", "--estimate") == 0
    printed = capsys.readouterr().out
    assert "smoke budget:" in printed and "minutes" in printed and "2 UNet passes + classifier gradient" in printed
    assert not (tmp_path / "o").exists()


def test_missing_checkpoints_exit_with_code_2(tmp_path, capsys):
    assert evaluate.main(["--checkpoints", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- the decision rules: non-inferiority on constructed samples ----------------------------------

def outcomes(setting: Setting, wrong: int, n: int, fd: float = 5.0, stream: int = 0, sweep: str = DECISION) -> Measurement:
    """n images of which `wrong` are off-class, bootstrapped as the evaluation does: the same
    resample indices for every setting of the same stream (a paired bootstrap). With one stream,
    the wrong images nest (image k is wrong when k < wrong), as two settings from the same noise
    would mostly agree; the Frechet distance's replicates move together by 2%."""
    g = np.random.default_rng(stream)
    index = g.integers(n, size=(RESAMPLES, n))
    correct = (np.arange(n) >= wrong).astype(float)
    if stream:  # another stream: the same count of wrong images, placed independently
        correct = g.permutation(correct)
    fidelity = correct[index].mean(1)
    fds = fd * (1 + 0.02 * np.random.default_rng(100).standard_normal(RESAMPLES))
    point = Scores(float(correct.mean()), fd, 0.8, 0.7)
    replicates = Scores(tuple(fidelity), tuple(fds), (0.8,) * RESAMPLES, (0.7,) * RESAMPLES)
    return Measurement(setting, (sweep,), point, replicates, (point.fidelity,) * 10, (n // 10,) * 10, n, 1.0)


def test_a_three_point_loss_is_refused_on_1000_and_on_100_samples_and_an_equal_setting_passes():
    reference, cheap = Setting("ddim", 50, 3.0), Setting("unipc", 8, 3.0)
    # 1000 samples: 95.0% against 92.0% (3 points worse) is refused; equal is accepted.
    worse = non_inferior(outcomes(cheap, 80, 1000), outcomes(reference, 50, 1000))
    assert not worse.accepted and worse.fidelity.value == pytest.approx(-0.03) and worse.fidelity.low < -0.015
    equal = non_inferior(outcomes(cheap, 50, 1000), outcomes(reference, 50, 1000))
    assert equal.accepted and equal.fidelity.low == 0 and equal.fd_ratio.high < 1.1
    # 100 samples: the same 3-point loss is refused too, its wider interval crossing the margin.
    small = non_inferior(outcomes(cheap, 8, 100), outcomes(reference, 5, 100))
    assert not small.accepted and small.fidelity.low < -0.015 < small.fidelity.high
    # A small sample cannot pass by being noisy: equal shares measured independently on 100 images.
    noisy = non_inferior(outcomes(cheap, 5, 100, stream=1), outcomes(reference, 5, 100, stream=2))
    assert not noisy.accepted
    # The Frechet distance margin: 15% worse is refused however equal the fidelity.
    assert not non_inferior(outcomes(cheap, 50, 1000, fd=5.75), outcomes(reference, 50, 1000)).accepted


def test_the_step_rule_takes_the_cheapest_non_inferior_setting_and_draws_no_further():
    reference = outcomes(Setting("ddim", 50, 3.0), 50, 1000)
    drawn = []

    def candidates():
        for setting, wrong in ((Setting("unipc", 5, 3.0), 120), (Setting("unipc", 8, 3.0), 52),
                               (Setting("unipc", 10, 3.0), 50)):
            drawn.append(setting.steps)
            yield outcomes(setting, wrong, 1000)

    chosen, reason = choose_steps(candidates(), reference)
    assert (chosen.sampler, chosen.steps) == ("unipc", 8) and drawn == [5, 8]
    assert "non-inferior" in reason and "1000 images" in reason and "UniPC at 5 steps" in reason
    chosen, reason = choose_steps(iter([outcomes(Setting("unipc", 5, 3.0), 120, 1000)]), reference)
    assert chosen == reference.setting and "no setting with fewer network evaluations" in reason


def test_the_scale_rule_wants_the_interval_above_93_5_percent():
    unguided = outcomes(Setting("unipc", 8, 0.0), 850, 1000, fd=4.0)
    ladder = [outcomes(Setting("unipc", 8, w), wrong, 1000, fd=fd) for w, wrong, fd in
              ((2, 70, 5.0), (3, 45, 6.0), (5, 30, 7.0))]
    assert choose_decided_scale(iter(ladder), unguided).setting.scale == 3   # 95.5%: interval from about 94.2%
    # The same 95.5% on 100 images: its interval reaches below 93.5%, so w = 3 does not pass there.
    small = [outcomes(Setting("unipc", 8, 3), 4, 100, fd=6.0)]   # 96% on 100
    assert choose_decided_scale(iter(small), outcomes(Setting("unipc", 8, 0.0), 85, 100, fd=4.0)) is None
    # The Frechet distance limit is kept: 2x the unguided distance at most.
    far = [outcomes(Setting("unipc", 8, 3), 45, 1000, fd=8.5)]
    assert choose_decided_scale(iter(far), unguided) is None


def test_the_decision_takes_more_steps_when_no_scale_reaches_the_goal():
    stage1 = [fake(Setting(scale=w), f, fd, sweep="classifier", seed=k)
              for k, (w, f, fd) in enumerate([(0, 0.1, 4.0), (3, 0.96, 6.0), (5, 0.97, 7.0)])]
    stage1[1] = stage1[1].with_sweep("steps")
    stage1 += [fake(Setting("unipc", s, 3.0), 0.96, 6.0, seed=10 + s) for s in (8, 15)]
    # At UniPC 8 no w gets above 93.5% with confidence; at 15 steps w = 5 does (and 3 does not).
    wrong = {("ddim", 50, 3.0): 70, ("unipc", 8, 3.0): 72, ("unipc", 8, 5.0): 75,
             ("unipc", 15, 3.0): 70, ("unipc", 15, 5.0): 40}
    asked = []

    def get(setting: Setting) -> Measurement:
        asked.append(setting)
        if setting.scale == 0:
            return outcomes(setting, 880, 1000, fd=4.0)
        return outcomes(setting, wrong[(setting.sampler, setting.steps, setting.scale)], 1000, fd=6.0)

    d = decide(stage1, 50, get)
    assert (d.sampler, d.steps, d.scale, d.decision_images) == ("unipc", 15, 5.0, 1000)
    assert "no w up to 5 got there at UniPC at 8 steps, so more steps were taken" in d.scale_reason
    assert asked[0] == Setting("ddim", 50, 3.0) and asked[1] == Setting("unipc", 8, 3.0)


def test_the_decision_weighs_the_threshold_with_the_step_count():
    """Clipped, UniPC needs 15 steps to match DDIM 50; with dynamic thresholding 8 do. The decision
    takes UniPC 8 with dynamic thresholding, its scale ladder keeps that threshold, and
    defaults.json says so."""
    stage1 = [fake(Setting(scale=w), f, fd, sweep="classifier", seed=k)
              for k, (w, f, fd) in enumerate([(0, 0.1, 4.0), (3, 0.96, 6.0), (5, 0.97, 7.0)])]
    stage1[1] = stage1[1].with_sweep("steps")
    stage1 += [fake(Setting("unipc", s, 3.0, threshold=mode), 0.96, 6.0, seed=10 + s + 50 * k)
               for k, mode in enumerate(("clip", "dynamic")) for s in (8, 15)]
    wrong = {("ddim", 50, 3.0, "clip"): 40, ("unipc", 8, 3.0, "clip"): 75, ("unipc", 8, 3.0, "dynamic"): 40,
             ("unipc", 15, 3.0, "clip"): 41}
    asked = []

    def get(setting: Setting) -> Measurement:
        asked.append(setting)
        if setting.scale == 0:
            return outcomes(setting, 880, 1000, fd=4.0)
        return outcomes(setting, wrong[(setting.sampler, setting.steps, setting.scale, setting.threshold)], 1000, fd=6.0)

    d = decide(stage1, 50, get)
    assert (d.sampler, d.steps, d.scale, d.threshold) == ("unipc", 8, 3.0, "dynamic")
    assert d.setting == Setting("unipc", 8, 3.0, threshold="dynamic")
    assert "UniPC at 8 steps with dynamic thresholding is the fewest network evaluations non-inferior" in d.steps_reason
    assert "refused before it: UniPC at 8 steps (" in d.steps_reason
    assert asked[0] == Setting("ddim", 50, 3.0) and Setting("unipc", 8, 0.0, threshold="dynamic") in asked
    assert d.to_json("cpu")["threshold"] == "dynamic"


def test_the_training_free_search_decides_and_resumes(tiny, tmp_path, capsys):
    """--training-free: a beam per structure on the screening images, each structure's best on the
    decision images beside the noise-aware default, the page and the defaults' record; a rerun
    resumes from search.json without drawing again, and refuses a log made with another guide or seed."""
    from guidescope.evaluation import search
    from guidescope.guide import TrainingFree
    from guidescope.networks.guide_classifier import GuideClassifier, GuideClassifierConfig

    source, _ = tiny
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for f in source.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    torch.manual_seed(0)
    guide = GuideClassifier(GuideClassifierConfig(model_args={"patch_size": 1, "depths": (0, 1, 1, 1), "dims": (8,) * 4},
                                                  num_classes=len(CLASSES), image_size=8))
    checkpoints.save(guide, folder, "guide_classifier", class_names=list(CLASSES))
    out, defaults, readme = tmp_path / "out", tmp_path / "defaults.json", tmp_path / "README.md"
    start, end = search.readme_markers(folder)
    readme.write_text(f"intro\n{start}\nstale\n{end}\noutro\n")
    # a screening sample (2 x 1 per class) smaller than the decision sample (4 per class), as in the real budgets
    assert smoke(folder, out, "--training-free", "--defaults", defaults, "--readme", readme, "--images-per-class", 1) == 0
    table = readme.read_text()
    assert "stale" not in table and table.startswith("intro\n") and table.endswith("outro\n")
    assert all(f"| {name} |" in table for name in ("noise-aware default", "training-free default", "DPS", "MPGD"))
    log = json.loads((out / "search.json").read_text())
    records = log["records"]
    assert log["made_with"] == {**search.networks(folder, folder), "seed": 0, "resamples": BUDGETS["smoke"].resamples}
    structures = search.STRUCTURES["smoke"]
    guided = [(r["per_class"], Measurement.from_json(r["measurement"])) for r in records
              if r["measurement"]["setting"]["guide"]]
    tfg = [m for _, m in guided if m.setting.guide.method == "tfg"]
    base = search.noise_aware_default(folder)
    equal = {search.equal_time(m.setting, base) for m in tfg}  # the chosen setting at the noise-aware time
    searched = [m for m in tfg if m.setting not in equal or m.setting.steps in {s.steps for s in structures}]
    assert all(sum(s.holds(m.setting) for s in structures) == 1 for m in searched)  # each in one structure
    assert all(any(s.holds(m.setting) for m in searched) for s in structures)  # every structure searched
    # the beam's moves: each strength doubled, the schedules made constant, guided later (T = 100 here)
    assert any(m.setting.guide.gamma > 0 for m in tfg) and any(m.setting.guide.rho > search.START["rho"] for m in tfg)
    assert any(m.setting.guide.mu_schedule == "constant" for m in tfg)
    assert {m.setting.interval for m in searched} >= {None, (10, 99)}
    assert any(m.setting.guide.rho == 0 and m.setting.guide.mu > search.START["mu"] for m in tfg)
    decided = {m.setting.guide.method for n, m in guided if n == BUDGETS["smoke"].decision_images_per_class}
    assert decided == {"tfg", "dps", "lgd", "freedom", "mpgd", "ug"}  # each named method at its best, decided too
    # each structure's final beam (BEAM settings) on the decision sample, not its first setting alone
    on_decision = [m.setting for n, m in guided if n == BUDGETS["smoke"].decision_images_per_class and m in searched]
    assert [sum(s.holds(setting) for setting in on_decision) for s in structures] == [search.BEAM] * len(structures)
    # a beam starts also at the cheaper structure's decided setting of the same shape, at its own repeats
    cheaper, dearer = structures[1], structures[2]  # 2x1x1 and 2x2x1, rho searched in both
    assert cheaper.through_unet and dearer.through_unet and dearer.recurrences == 2
    started = {m.setting for m in searched if dearer.holds(m.setting)}
    assert any(replace(s, guide=replace(s.guide, recurrences=2)) in started for s in on_decision if cheaper.holds(s))
    record = json.loads(defaults.read_text())["training_free"]
    chosen = TrainingFree(**record["guide"])
    assert record["sampler"] == "ddpm" and record["steps"] in {s.steps for s in structures} and record["reason"]
    chosen_setting = Setting("ddpm", record["steps"], threshold=record["threshold"], schedule=record["schedule"],
                             interval=search.parse_interval(record["interval"]), guide=chosen)
    (tmp_path / "record").mkdir()
    shutil.copy(defaults, tmp_path / "record" / "defaults.json")
    assert search.training_free_default(tmp_path / "record") == chosen_setting  # read back as the chosen Setting
    # scripts/measure_training_free.py measures changes to that setting on the same decision sample: unchanged,
    # it repeats the search's own measurements of the noise-aware default and the chosen setting
    from scripts.measure_training_free import main as measure_setting
    had = json.loads((folder / "defaults.json").read_text()) if (folder / "defaults.json").exists() else {}
    (folder / "defaults.json").write_text(json.dumps({**had, "training_free": record}))
    capsys.readouterr()
    assert measure_setting(["--checkpoints", str(folder), "--budget", "smoke", "--threads", str(torch.get_num_threads()),
                            "{}", '{"stop_at": 0.5, "interval": [50, 99]}']) == 0
    printed = capsys.readouterr().out.splitlines()
    logged = {(n, m.setting): m for n, m in guided}
    decision_n = BUDGETS["smoke"].decision_images_per_class
    noise_aware_logged = next(Measurement.from_json(r["measurement"]) for r in records
                              if r["per_class"] == decision_n and not r["measurement"]["setting"]["guide"])
    for text, m in zip(printed, (noise_aware_logged, logged[decision_n, chosen_setting])):
        assert text.startswith(f"{m.setting.label()}: fidelity {m.show('fidelity')}, Frechet distance {m.show('fd')} ")
    assert len(printed) == 3 and "stop at 0.5" in printed[2] and "50-99" in printed[2]
    with pytest.raises(SystemExit):
        measure_setting(["--checkpoints", str(folder), "--budget", "smoke", '{"nu": 1}'])
    assert "unknown names nu; a setting changes sampler, steps" in capsys.readouterr().err
    page = (out / "TRAINING_FREE.md").read_text()
    assert f"**Chosen:** DDPM {record['steps']}, {chosen.describe()}" in page and page.count("| DDPM ") + page.count("| **DDPM ") >= len(guided)
    assert all(f"| DDPM {record['steps']}, {title}" in page for title in ("DPS", "LGD", "FreeDoM", "MPGD", "Universal"))
    # each method (and the chosen setting) again at the noise-aware default's time, by the step costs
    assert "## At the noise-aware default's time per image" in page and "fidelity at the noise-aware time" in table
    decision = [m.setting for n, m in guided if n == BUDGETS["smoke"].decision_images_per_class]
    assert replace(chosen_setting, steps=max(1, int(base.steps / chosen.step_cost()))) in decision
    for method in ("dps", "lgd", "freedom", "mpgd", "ug"):
        assert any(s.guide.method == method and s.steps == max(1, int(base.steps / s.guide.step_cost()))
                   for s in decision), method
    section = page.split("## At the noise-aware default's time per image")[1].split("## The beam")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert len(rows) == 7 and all(f"{title} " in "".join(rows) for title in ("TFG", "DPS", "LGD", "FreeDoM", "MPGD"))
    assert f"| training-free default | DDPM {record['steps']}, {chosen.describe()}" in table
    assert f"DDPM {max(1, int(base.steps / chosen.step_cost()))}: " in table.split("| training-free default |")[1]
    assert "Guided by `" + folder.as_posix() + "/guide_classifier` (timm convnext_atto" in page
    before = (out / "search.json").read_bytes()
    assert smoke(folder, out, "--training-free", "--defaults", defaults, "--images-per-class", 1) == 0
    assert (out / "search.json").read_bytes() == before
    # a log measured with another guide classifier or seed is refused, not reused, and kept as it was
    capsys.readouterr()
    assert smoke(folder, out, "--training-free", "--defaults", defaults, "--images-per-class", 1, "--seed", 1) == 2
    assert "holds measurements made with another seed; choose another --out" in capsys.readouterr().err
    torch.manual_seed(1)
    retrained = GuideClassifier(guide.config)
    checkpoints.save(retrained, folder, "guide_classifier", class_names=list(CLASSES))
    assert smoke(folder, out, "--training-free", "--defaults", defaults, "--images-per-class", 1) == 2
    assert "made with another guide_classifier;" in capsys.readouterr().err
    assert (out / "search.json").read_bytes() == before
    (out / "search.json").write_text(json.dumps(records))  # a log without its networks' record
    assert smoke(folder, out, "--training-free", "--defaults", defaults, "--images-per-class", 1) == 2
    assert "is not a search log of this version" in capsys.readouterr().err


def test_a_searched_structure_is_read_from_its_text_and_ordered_by_cost(capsys):
    """--structures: STEPSxRECURxITER, -x0 where rho stays 0; cheapest first whatever the order
    given; anything else refused before anything loads."""
    from guidescope.evaluation import search
    assert search.structures("20x2x1,10x1x1-x0,10x1x1") == (search.Structure(10, 1, 1, False),
                                                            search.Structure(10, 1, 1), search.Structure(20, 2, 1))
    assert [str(s) for s in search.STRUCTURES["cpu"]] == sorted(map(str, search.STRUCTURES["cpu"]),
                                                                key=lambda t: search.Structure.parse(t).cost())
    for text in ("10x1", "10x0x1", "ax1x1", "10x1x0-x0", "10x1x1x"):
        with pytest.raises(ValueError, match="a structure is STEPSxRECURxITER"):
            search.Structure.parse(text)
    with pytest.raises(SystemExit):
        evaluate.main(["--training-free", "--structures", "10x1x0-x0"])
    assert "--structures: a structure is STEPSxRECURxITER" in capsys.readouterr().err


def test_the_beams_children_double_flatten_stop_and_guide_later_or_earlier():
    from guidescope.evaluation import search
    from guidescope.guide import TrainingFree
    start = Setting("ddpm", 10, guide=TrainingFree.make("tfg", mu=2.0, iterations=1, **search.SCHEDULES))
    kids = search.children(start, search.Structure(10, 1, 1, False), 1000)
    assert [(k.guide.rho, k.guide.mu, k.guide.gamma, k.guide.mu_schedule, k.guide.stop_at, k.interval)
            for k in kids] == [
        (0.0, 4.0, 0.0, "increase", 1.0, None), (0.0, 2.0, search.START["gamma"], "increase", 1.0, None),
        (0.0, 2.0, 0.0, "constant", 1.0, None), (0.0, 2.0, 0.0, "increase", search.STOP_AT, None),
        (0.0, 2.0, 0.0, "increase", 1.0, (100, 999))]  # none earlier than 0
    assert kids[2].guide.rho_schedule == start.guide.rho_schedule  # rho is 0: its schedule is left alone
    last = replace(start, interval=(600, 999), guide=replace(start.guide, mu_schedule="constant"))
    assert [k.interval for k in search.children(last, search.Structure(10, 1, 1), 1000)] == [(600, 999)] * 4 + [
        (500, 999)]  # none later than LATEST_START
    stopped = replace(start, guide=replace(start.guide, stop_at=0.5))
    assert [k.guide.stop_at for k in search.children(stopped, search.Structure(10, 1, 1), 1000)
            if k.guide.stop_at != 0.5] == [0.6, 0.4]
    assert search.later(replace(start, interval=(400, 999)), 1000).interval == (500, 999)
    assert search.later(replace(start, interval=(100, 999)), 1000, by=-1).interval is None  # from 0: no interval


@pytest.mark.parametrize("stop_at, moves", [(1.0, [0.5]), (0.5, [0.6, 0.4]), (0.9, [1.0, 0.8]), (0.3, [0.4, 0.2]),
                                            (0.1, [0.2])])
def test_the_stop_probability_moves_a_step_either_way_within_its_range(stop_at, moves):
    from guidescope.evaluation import search
    assert search.stops(stop_at) == moves


def screened(tmp_path, scores: list[tuple[float, float]]):
    """A Search whose noise-aware default scored FD 4.0 on the screening images (the bound: 6.0), and
    training-free screening measurements with the given (fidelity, Frechet distance)."""
    from guidescope.evaluation import search
    from guidescope.guide import TrainingFree
    base = Setting("unipc", 8, scale=8.0)
    found = search.Search(None, base, (2, 4), (None, None), tmp_path / "search.json", 0, 10)
    found.found[2, base] = fake(base, 0.95, 4.0)
    guide = TrainingFree.make("tfg", mu=2.0, iterations=1)
    return found, [fake(Setting("ddpm", steps, guide=guide), fidelity, fd) for steps, (fidelity, fd) in enumerate(scores, 1)]


def test_the_chosen_setting_that_stops_is_measured_again_never_stopping(tmp_path):
    from guidescope.evaluation import search
    found, (m,) = screened(tmp_path, [(0.9, 5.0)])
    assert search.unstopped(found, m) is None  # it never stops already: nothing to compare
    stopping = fake(replace(m.setting, guide=replace(m.setting.guide, stop_at=0.5)), 0.95, 4.0)
    never = fake(m.setting, 0.96, 7.0)
    found.found[4, m.setting] = never  # the decision sample's (4 per class), from the log
    assert search.unstopped(found, stopping) is never
    page = search.results_page(search.Choice(stopping, "why", fake(found.noise_aware, 0.95, 4.0), [stopping], [stopping]),
                               [], [], "run", search.Structure(1, 1, 1), "guide", {}, never)
    assert "## The stop:" in page and never.setting.label() in page.split("## The stop:")[1]


def test_the_beam_ranks_settings_within_the_frechet_bound_first(tmp_path):
    """Search.rank: a setting whose Frechet distance is within FD_WITHIN x the noise-aware default's
    (on the same screening images) ranks above any outside it, however high that one's fidelity;
    within each side, the higher fidelity first, then the lower distance."""
    found, (far, near, nearer, same) = screened(tmp_path, [(0.99, 6.1), (0.90, 5.9), (0.90, 5.0), (0.80, 1.0)])
    assert sorted([far, same, near, nearer], key=found.rank) == [nearer, near, same, far]


def test_the_beam_keeps_a_place_for_the_highest_fidelity(tmp_path):
    """Search.kept: the first by rank, then the highest fidelity even outside the Frechet bound (a
    later move may bring it back within), then by rank; none twice."""
    from guidescope.evaluation import search
    found, (strong, near, weak, weaker) = screened(tmp_path, [(0.99, 9.0), (0.90, 5.9), (0.80, 5.0), (0.70, 1.0)])
    assert search.BEAM == 2
    assert found.kept([weaker, weak, strong, near]) == [near, strong]
    assert found.kept([weaker, near, weak]) == [near, weak]  # the highest fidelity is the first: the next by rank


def test_short_of_the_target_the_closest_setting_is_chosen(tmp_path):
    """search.toward_target: where none reaches the whole target, a setting reaching the fidelity
    goal comes first (the lower Frechet distance first), however far its distance; then the rest by
    the higher fidelity."""
    from guidescope.evaluation import search
    _, (sharp, near, closer, weak) = screened(tmp_path, [(0.97, 9.0), (0.95, 7.0), (0.94, 3.0), (0.80, 1.0)])
    assert sorted([weak, closer, sharp, near], key=search.toward_target) == [near, sharp, closer, weak]


def test_the_training_free_search_takes_another_guide_classifier(tiny, tmp_path, capsys):
    """--guide-classifier DIR: the search guides by DIR's clean classifier, its page says so, and the
    bundle's own defaults.json is left alone (its training-free record is for its own guide);
    without --training-free the option is refused."""
    from guidescope.networks.guide_classifier import GuideClassifier, GuideClassifierConfig

    source, _ = tiny
    other = tmp_path / "robust"
    other.mkdir()
    torch.manual_seed(1)
    guide = GuideClassifier(GuideClassifierConfig(model_args={"patch_size": 1, "depths": (0, 1, 1, 1), "dims": (8,) * 4},
                                                  num_classes=len(CLASSES), image_size=8))
    checkpoints.save(guide, other, "guide_classifier", class_names=list(CLASSES),
                     training={"test_acc": 0.5, "adversarial_radius": 2.0})
    defaults_before = (source / "defaults.json").read_bytes() if (source / "defaults.json").exists() else None
    out = tmp_path / "out"
    assert smoke(source, out, "--training-free", "--guide-classifier", other, "--structures", "2x1x1",
                 "--skip-methods") == 0
    page = (out / "TRAINING_FREE.md").read_text()
    assert (f"Guided by `{other.as_posix()}/guide_classifier` (timm convnext_atto, adversarially trained within "
            "L2 radius 2, held-out accuracy 50.0%)") in page
    assert ((source / "defaults.json").read_bytes() if (source / "defaults.json").exists() else None) == defaults_before
    assert "wrote the training_free record" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        smoke(source, out, "--guide-classifier", other)
    assert "--guide-classifier goes with --training-free" in capsys.readouterr().err
    assert smoke(source, out, "--training-free", "--guide-classifier", tmp_path) == 2
    assert f"{tmp_path} holds no guide classifier" in capsys.readouterr().err


def test_the_guide_classifier_comparison_script_pairs_candidates_with_the_shipped_guide(tiny, tmp_path, capsys):
    """scripts/compare_guide_classifiers.py: each guide at the bundle's training-free default from the
    same noise, with its training and a paired verdict against the shipped guide; a bundle without
    a training-free record is refused."""
    from guidescope.guide import TrainingFree
    from guidescope.networks.guide_classifier import GuideClassifier, GuideClassifierConfig
    from scripts import compare_guide_classifiers

    source, _ = tiny
    folder, other = tmp_path / "checkpoints", tmp_path / "robust"
    shutil.copytree(source, folder)
    for seed, where, training in ((0, folder, {"test_acc": 0.9}), (1, other, {"adversarial_radius": 2.0})):
        torch.manual_seed(seed)
        guide = GuideClassifier(GuideClassifierConfig(model_args={"patch_size": 1, "depths": (0, 1, 1, 1), "dims": (8,) * 4},
                                                      num_classes=len(CLASSES), image_size=8))
        checkpoints.save(guide, where, "guide_classifier", class_names=list(CLASSES), training=training)
    out = tmp_path / "GUIDES.md"
    argv = ["--checkpoints", str(folder), "--candidate", str(other), "--images-per-class", "2", "--backend", "torch",
            "--out", str(out)]
    assert compare_guide_classifiers.main(argv) == 2
    assert "has no training_free record" in capsys.readouterr().err
    setting = TrainingFree.make("tfg", rho=1.0, mu=1.0, iterations=1)
    (folder / "defaults.json").write_text(json.dumps({"budget": "smoke", "training_free": {
        "sampler": "ddpm", "steps": 2, "threshold": "clip", "guide": {**setting.__dict__}}}))
    assert compare_guide_classifiers.main(argv) == 0
    page = out.read_text()
    rows = [line for line in page.splitlines() if line.startswith("| shipped") or line.startswith(f"| `{other.as_posix()}`")]
    assert len(rows) == 4  # the table and the per-class table, each with both guides
    assert "| timm convnext_atto, plain training |" in rows[0] and rows[0].endswith("| - |")
    assert "adversarially trained within L2 radius 2" in rows[1] and "non-inferior" in rows[1]
    assert f"DDPM 2, {setting.describe()}" in page and "on 6 images (2 per class" in page
