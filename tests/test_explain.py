"""The Understand tab's text: plain words before formulas, and only the parts that apply to the
model shown (demo.explain)."""
from __future__ import annotations

import itertools
import re

import pytest

from demo import explain
from demo.explain import SPACES, explanation
from guidescope.samplers import VARIANCES

MODELS = list(itertools.product(SPACES, VARIANCES))
ADM_HEADING = "### Learned variance"
LATENT_HEADING = "### In latent space"
GLOSSARY = ("fidelity", "interval", "Frechet distance", "precision", "recall", "DDIM", "DDPM", "DPM-Solver++(2M)",
            "UniPC", "eta", "x̂_0 threshold", "clip", "dynamic", "guidance interval", "schedule", "latent z_t",
            "decoder")


def _paragraphs(text: str) -> list[str]:
    """The blocks of text between blank lines, headings left out."""
    return [block for block in text.split("\n\n") if block.strip() and not block.startswith("#")]


def _section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n### ", 1)[0]


def test_the_pixel_model_starts_in_plain_words():
    text = explanation("pixel", "small")
    assert "$" not in _paragraphs(text)[0]
    before_formulas = text.split("$", 1)[0]
    assert "Bayes' rule" in before_formulas
    assert "**w**" in before_formulas and "variety" in before_formulas and "saturated" in before_formulas
    assert "noisy images at every noise level" in before_formulas  # why the classifier sees x_t
    assert "Classifier-free guidance" in before_formulas


def test_the_pixel_model_shows_no_adm_and_no_latent_section():
    text = explanation("pixel", "small")
    assert ADM_HEADING not in text and LATENT_HEADING not in text
    for word in ("ADM", "guided-diffusion", "\\Sigma_\\theta", "ImageNet", "z_t, t"):
        assert word not in text, word


def test_the_latent_model_has_its_section_and_its_panel_note():
    text = explanation("latent", "small")
    assert LATENT_HEADING in text and ADM_HEADING not in text
    assert "x = D(z_0 / s)" in text
    assert "On this model the first panel shows $z_t$" in text
    assert text.index("a *latent* made by an autoencoder") < text.index("$")  # in plain words too


def test_a_learned_variance_model_has_the_adm_section():
    text = explanation("pixel", "learned")
    assert ADM_HEADING in text and LATENT_HEADING not in text
    assert "\\log \\Sigma_\\theta" in text and "ADM" in text.split("$", 1)[0]


@pytest.mark.parametrize("space, variance", MODELS)
def test_every_model_gets_the_glossary_and_no_markers(space, variance):
    text = explanation(space, variance)
    glossary = _section(text, "### Words on this page")
    for term in GLOSSARY:
        assert f"**{term}**" in glossary, term
    assert "<!--" not in text and "-->" not in text and "only:" not in text
    assert "\n\n\n" not in text
    assert re.search(r"^- \*\*Compare\*\*", text, re.MULTILINE)  # the list runs on past a part left out


def test_a_value_outside_the_choices_is_refused():
    with pytest.raises(ValueError, match="space must be one of pixel, latent"):
        explanation("pixels", "small")
    with pytest.raises(ValueError, match="variance must be one of small, learned"):
        explanation("pixel", "fixed")


@pytest.mark.parametrize("source, complaint", [
    ("a\n<!-- only: adm -->\nb\n<!-- end -->\n", "tag must be one of"),
    ("a\n<!-- only: latent -->\nb\n", "without its pair"),
    ("<!-- only: latent -->\n<!-- only: learned -->\nb\n<!-- end -->\n<!-- end -->\n", "without its pair"),
])
def test_a_broken_marker_is_refused(tmp_path, monkeypatch, source, complaint):
    path = tmp_path / "explain.md"
    path.write_text(source)
    monkeypatch.setattr(explain, "SOURCE", path)
    with pytest.raises(ValueError, match=complaint):
        explanation("latent", "learned")
