"""The evaluation of training-free guidance: a search for its setting, as TFG does (Ye et al. 2024,
sec. 5: a beam search over rho, mu and gamma-bar at fixed N_recur and N_iter), scored by the
evaluator and never by the classifier that guides, then the decision on the decision sample.

    python -m guidescope.evaluate --training-free --budget cpu --checkpoints checkpoints/fashion-mnist-latent

For each structure (SAMPLER steps, N_recur, N_iter, and whether rho is searched or held at 0, MPGD's
shape with no gradient through the UNet), cheapest first by TrainingFree.step_cost: start the beam
at the smallest strengths, guided at every step, and at the setting decided for the cheaper
structure of the same shape (its strengths, schedules and interval at this structure's steps and
repeats). Each round, every setting of the beam has children: one of rho, mu, gamma-bar doubled
(or set, from 0); constant strength schedules (where it has TFG's, SCHEDULES); stop_at a step
lower or higher (STOP_AT from 1: the push ends once the guide believes the image); guided from
INTERVAL_STEP x T timesteps later (up to LATEST_START x T) or earlier. The `beam` best on the
screening images (SCREENING x the budget's images per class) stay, in Search.rank's order (those
within FD_WITHIN x the noise-aware default's Frechet distance on the same images first, then by
fidelity, then the lower Frechet distance), one place kept for the highest fidelity of all: a
stronger setting may be outside the bound until a later move (a later interval) brings it back.
The final beam is then measured on the decision sample (the budget's decision images per class)
beside the noise-aware default from the same noise: the best of a few screening estimates is the
luckiest of them, and the decision sample says which holds. The chosen setting is the first
(cheapest) whose fidelity reaches FIDELITY_GOAL with a Frechet distance at most FD_WITHIN times the
noise-aware default's; where none does, the closest (toward_target). Every measurement is logged
to OUT/search.json, which a rerun resumes from; the choice goes to the folder's defaults.json under
"training_free" (guidescope.evaluation.command). A log made with other networks (a retrained guide
classifier, say), another seed or other resamples is refused rather than reused (Search.made_with).
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

from ..bundle import default_value, read_defaults
from ..checkpoints import file_digest
from ..guide import TrainingFree
from ..guide.training_free import LIBRARY_SETTING, METHODS
from ..metrics import RealReference
from ..parsing import interval_text, parse_interval
from ..samplers import sampler_title
from .defaults import FIDELITY_GOAL
from .measure import Measurement, Setting, measure

FD_WITHIN = 1.5               # the training-free default's Frechet distance at most this times the noise-aware one's
SAMPLER = "ddpm"              # TFG samples with DDIM at eta = 1 (its scripts/*.sh), which is DDPM's ancestral step


class Structure(NamedTuple):
    """What the beam holds fixed: SAMPLER's steps, N_recur, N_iter, and whether it searches rho (a
    gradient through the UNet) or holds it at 0 (MPGD's shape: steps on x-hat_0 alone)."""
    steps: int
    recurrences: int
    iterations: int
    through_unet: bool = True

    @classmethod
    def parse(cls, text: str) -> "Structure":
        """'20x2x1' (rho searched) or '20x2x1-x0' (rho held at 0); ValueError names the form."""
        body, on_x0 = (text.strip()[:-3], True) if text.strip().endswith("-x0") else (text.strip(), False)
        try:
            steps, recurrences, iterations = (int(v) for v in body.split("x"))
        except ValueError:
            steps = 0
        if steps < 1 or recurrences < 1 or iterations < 0 or (on_x0 and iterations < 1):
            raise ValueError(f"a structure is STEPSxRECURxITER, with -x0 to hold rho at 0 (then ITER >= 1), such as "
                             f"10x1x1 or 20x2x1-x0; got {text!r}")
        return cls(steps, recurrences, iterations, not on_x0)

    def __str__(self) -> str:
        return f"{self.steps}x{self.recurrences}x{self.iterations}" + ("" if self.through_unet else "-x0")

    def cost(self) -> float:
        """Plain guided steps per image (TrainingFree.step_cost), for the cheapest-first order."""
        return self.steps * TrainingFree(rho=float(self.through_unet), mu=1.0, recurrences=self.recurrences,
                                         iterations=self.iterations).step_cost()

    def holds(self, setting: Setting) -> bool:
        guide = setting.guide
        return (setting.steps, guide.recurrences, guide.iterations, guide.rho > 0) == tuple(self)


def networks(folder: Path, guide: Path) -> dict[str, str]:
    """The networks a search measures with, by name: the sha256 of folder's *.safetensors, the
    guide classifier's from guide."""
    files = {path.stem: path for path in sorted(Path(folder).glob("*.safetensors"))}
    files["guide_classifier"] = Path(guide) / "guide_classifier.safetensors"
    return {name: file_digest(path) for name, path in files.items() if path.exists()}


def structures(texts: str) -> tuple[Structure, ...]:
    """'10x1x1-x0,20x2x1' as Structures, cheapest first."""
    return tuple(sorted((Structure.parse(text) for text in texts.split(",")), key=Structure.cost))


# by budget (guidescope.evaluation.sweeps.BUDGETS); the CPU's stop at the time a training-free default may take
# (15x the noise-aware default's on the latent bundle): 30x2x1-x0 costs 1.5x 20x2x1-x0 (8.6x in the speed
# benchmark), while 20x2x1 (a gradient through the UNet at each repeat) took 28x in the search's run and 20x4x1 48x
STRUCTURES = {"smoke": structures("2x1x1-x0,2x1x1,2x2x1"),
              "cpu": structures("10x1x1-x0,10x1x1,10x2x1-x0,10x2x1,20x2x1-x0,30x2x1-x0"),
              "gpu": structures("10x1x1-x0,10x1x1,10x2x1-x0,10x2x1,20x2x1-x0,30x2x1-x0,20x2x1,20x4x1,50x4x1,50x4x2")}
START = {"rho": LIBRARY_SETTING.rho, "mu": LIBRARY_SETTING.mu, "gamma": 0.05}  # gamma-bar: set, from 0
STOP_AT, STOP_STEP = 0.5, 0.1  # stop_at: set from 1 (TFG's: never stops), then up or down a step
SCHEDULES = {"rho_schedule": LIBRARY_SETTING.rho_schedule, "mu_schedule": LIBRARY_SETTING.mu_schedule,
             "gamma_schedule": LIBRARY_SETTING.gamma_schedule}
INTERVAL_STEP, LATEST_START = 0.1, 0.6  # of T: guided over t in [0, T), [0.1 T, T), ... or [0.6 T, T)
SCREENING = 2                 # the beam's images per class: this times the budget's images_per_class
BEAM, ROUNDS = 2, 8


def later(setting: Setting, num_timesteps: int, by: int = 1) -> Setting | None:
    """setting guided from by x INTERVAL_STEP x T timesteps later (earlier where by < 0), to T - 1
    (no interval: from 0); None before 0 or past LATEST_START x T."""
    start = (setting.interval[0] if setting.interval else 0) + by * round(INTERVAL_STEP * num_timesteps)
    if not 0 <= start <= round(LATEST_START * num_timesteps):
        return None
    return replace(setting, interval=(start, num_timesteps - 1) if start else None)


def stops(stop_at: float) -> list[float]:
    """stop_at's moves: from 1 to STOP_AT, else a STOP_STEP up (to 1 from 1 - STOP_STEP) and down
    (to STOP_STEP at the lowest)."""
    if stop_at == 1:
        return [STOP_AT]
    up, down = round(stop_at + STOP_STEP, 2), round(stop_at - STOP_STEP, 2)
    return [1.0 if up > 1 - STOP_STEP / 2 else up, *([down] if down >= STOP_STEP else [])]


def children(setting: Setting, structure: Structure, num_timesteps: int) -> list[Setting]:
    """The settings one doubling away (0 -> the start value; rho stays 0 where the structure holds
    it there), the one with constant strength schedules, those stopping at another probability
    (stops), and those guided later and earlier."""
    names = ("rho", "mu", "gamma") if structure.through_unet else ("mu", "gamma")
    guide = setting.guide
    doubled = [replace(setting, guide=replace(guide, **{name: getattr(guide, name) * 2 if getattr(guide, name)
                                                        else START[name]}))
               for name in names]
    flat = replace(setting, guide=replace(guide, mu_schedule="constant",
                                          **({"rho_schedule": "constant"} if guide.rho else {})))
    stopped = [replace(setting, guide=replace(guide, stop_at=p)) for p in stops(guide.stop_at)]
    moved = [later(setting, num_timesteps, by) for by in (1, -1)]
    return [*doubled, *([flat] if flat != setting else []), *stopped, *filter(None, moved)]


def by_fidelity(m: Measurement) -> tuple[float, float]:
    """The higher fidelity first, then the lower Frechet distance (TFG's comparison of methods)."""
    return -m.scores.fidelity, m.scores.fd


def toward_target(m: Measurement) -> tuple[bool, float]:
    """Where no setting reaches the whole target: those reaching FIDELITY_GOAL first, by the lower
    Frechet distance, then the rest by the higher fidelity."""
    reached = m.scores.fidelity >= FIDELITY_GOAL
    return not reached, m.scores.fd if reached else -m.scores.fidelity


class Search:
    """The search's measurements, kept in a JSON log and reused where a rerun asks for them again."""

    def __init__(self, bundle, noise_aware: Setting, sizes: tuple[int, int], references: tuple[RealReference, RealReference],
                 path: Path, seed: int, resamples: int, log=print, networks: dict[str, str] | None = None):
        """made_with, what the measurements depend on besides their settings, is the networks
        (networks()), the seed and the resamples: a log made with others is refused, never reused."""
        self.bundle, self.noise_aware = bundle, noise_aware
        self.threshold = noise_aware.threshold  # the noise-aware default's: the latent model needs x-hat_0 thresholded
        self.screen, self.decision = sizes      # images per class: in the beam, for the decision
        self.references = dict(zip(sizes, references))  # the real side of the metrics, by images per class
        self.path, self.seed, self.resamples, self.log = path, seed, resamples, log
        self.made_with = {**(networks or {}), "seed": seed, "resamples": resamples}
        self.records = self._read(path, self.made_with)
        self.found: dict[tuple[int, Setting], Measurement] = {}  # (images per class, setting) -> measurement
        for record in self.records:
            m = Measurement.from_json(record["measurement"])
            self.found.setdefault((record["per_class"], m.setting), m)

    @staticmethod
    def _read(path: Path, made_with: dict) -> list[dict]:
        """The log's records; ValueError where it was made with something else (or is no search log)."""
        if not path.exists():
            return []
        log = json.loads(path.read_text())
        if not isinstance(log, dict) or "records" not in log:
            raise ValueError(f"{path} is not a search log of this version (it does not say what it was measured with); "
                             "choose another --out, or delete it to search afresh")
        before = log.get("made_with") or {}
        differ = sorted(name for name in {*before, *made_with} if before.get(name) != made_with.get(name))
        if differ:
            raise ValueError(f"{path} holds measurements made with another {', '.join(differ)}; choose another --out, "
                             "or delete it to search afresh")
        return log["records"]

    def rank(self, m: Measurement) -> tuple[bool, float, float]:
        """The beam's order of screening measurements: within FD_WITHIN x the noise-aware default's
        Frechet distance on the same images first, then the higher fidelity, then the lower FD."""
        bound = FD_WITHIN * self.measured(self.noise_aware, self.screen).scores.fd
        return m.scores.fd > bound, -m.scores.fidelity, m.scores.fd

    def kept(self, found: list[Measurement]) -> list[Measurement]:
        """The next beam: the first by rank, the highest fidelity of all, then by rank up to BEAM."""
        by_rank = sorted(found, key=self.rank)
        kept = [by_rank[0]]
        for m in [min(found, key=by_fidelity), *by_rank[1:]]:
            if len(kept) < BEAM and all(m.setting != k.setting for k in kept):
                kept.append(m)
        return kept

    def measured(self, setting: Setting, per_class: int) -> Measurement:
        """The setting's measurement at per_class images per class: from the log, or made and logged."""
        if (per_class, setting) in self.found:
            return self.found[per_class, setting]
        m, _ = measure(self.bundle, setting, self.references[per_class], per_class, self.seed, self.resamples)
        self.found[per_class, setting] = m
        self.records.append({"per_class": per_class, "measurement": m.to_json()})
        records = ",\n".join(json.dumps(record) for record in self.records)  # a line each: a rerun's diff adds lines
        self.path.write_text(f'{{"made_with": {json.dumps(self.made_with)},\n"records": [\n{records}\n]}}\n')
        self.log(f"{setting.label()} [{per_class}/class]: fidelity {m.show('fidelity')}, Frechet distance "
                 f"{m.show('fd')} ({m.sample_seconds / m.images:.3f} s/image)")
        return m

    def beam(self, structure: Structure, warm: Setting | None = None) -> list[Measurement]:
        """The final beam of one structure on the screening images, best first; it starts at START
        and, where given, at warm (a cheaper structure's decided setting) moved to this structure."""
        guide = TrainingFree.make("tfg", rho=START["rho"] if structure.through_unet else 0.0, mu=START["mu"],
                                  recurrences=structure.recurrences, iterations=structure.iterations, **SCHEDULES)
        starts = [Setting(SAMPLER, structure.steps, threshold=self.threshold, guide=guide)]
        if warm is not None:
            starts.append(replace(warm, steps=structure.steps, guide=replace(
                warm.guide, recurrences=structure.recurrences, iterations=structure.iterations)))
        seen = set(starts)
        beam = self.kept([self.measured(start, self.screen) for start in dict.fromkeys(starts)])
        for _ in range(ROUNDS):
            found = list(beam)
            for m in beam:
                for child in children(m.setting, structure, self.bundle.num_timesteps):
                    if child not in seen:
                        seen.add(child)
                        found.append(self.measured(child, self.screen))
            best = self.kept(found)
            if [m.setting for m in best] == [m.setting for m in beam]:
                break
            beam = best
        return beam


class Choice(NamedTuple):
    chosen: Measurement             # on the decision sample
    reason: str
    noise_aware: Measurement        # the noise-aware default, on the same images
    tried: list[Measurement]        # every structure's best, on the decision sample, cheapest first
    beams: list[Measurement]        # every structure's final beam, on the decision sample, cheapest first


def decide(search: Search, structures: tuple[Structure, ...]) -> Choice:
    """The first structure (cheapest first, as structures() orders them) whose final beam holds a
    setting that reaches the target on the decision sample; else the closest of all the final
    beams' settings (toward_target). A structure's best is its beam's setting that reaches the
    target, else its highest fidelity; the next structure of the same shape starts also there."""
    noise_aware = search.measured(search.noise_aware, search.decision)
    bound = FD_WITHIN * noise_aware.scores.fd

    def reaches(m: Measurement) -> bool:
        return m.scores.fidelity >= FIDELITY_GOAL and m.scores.fd <= bound
    tried, beams, warm = [], [], {}
    for structure in structures:
        decided = [search.measured(m.setting, search.decision)
                   for m in search.beam(structure, warm.get(structure.through_unet))]
        beams += decided
        m = next(filter(reaches, decided), min(decided, key=by_fidelity))
        tried.append(m)
        warm[structure.through_unet] = m.setting
        if reaches(m):
            return Choice(m, f"the cheapest searched setting whose fidelity reaches {FIDELITY_GOAL:.0%} with a Frechet distance "
                       f"at most {FD_WITHIN:g}x the noise-aware default's ({noise_aware.show('fd')}): "
                       f"{m.show('fidelity')}, {m.show('fd')} on {m.images} images", noise_aware, tried, beams)
    m = min(beams, key=toward_target)
    closest = (f"the lowest Frechet distance of those reaching {FIDELITY_GOAL:.0%} fidelity"
               if m.scores.fidelity >= FIDELITY_GOAL else "the highest fidelity")
    return Choice(m, f"no searched setting reached {FIDELITY_GOAL:.0%} fidelity with a Frechet distance at most {FD_WITHIN:g}x "
               f"the noise-aware default's ({noise_aware.show('fd')}); {closest}: {m.show('fidelity')}, "
               f"{m.show('fd')} on {m.images} images", noise_aware, tried, beams)


LADDER = 6                    # a named method's strengths: START times 2, 4, ... or 1/2, 1/4, ... (at most this many)


def method_setting(method: str, structure: Structure, factor: float) -> TrainingFree:
    """A named method at the structure's repeats where it takes them, TFG's schedules where it
    takes them, and its strengths at factor times START."""
    free = METHODS[method].free
    wanted = {"recurrences": structure.recurrences, "iterations": structure.iterations, **SCHEDULES,
              **{name: factor * START[name] for name in ("rho", "mu")}}
    return TrainingFree.make(method, **{name: value for name, value in wanted.items() if name in free})


def best_of_method(search: Search, method: str, structure: Structure) -> Measurement:
    """A named method's best strength on the screening images, by fidelity (by_fidelity; a weak
    setting is never best only for staying near the data): from START, doubled while it ranks
    higher; where the first doubling does not, halved while it does (at most LADDER steps); then
    guided later (later) while that ranks higher."""
    def measured(factor: float) -> Measurement:
        return search.measured(Setting(SAMPLER, structure.steps, threshold=search.threshold,
                                       guide=method_setting(method, structure, factor)), search.screen)
    start = best = measured(1.0)
    for direction in (2.0, 0.5):
        factor = direction
        for _ in range(LADDER):
            m = measured(factor)
            if by_fidelity(m) >= by_fidelity(best):  # no better: the last one stays
                break
            best, factor = m, factor * direction
        if best is not start:
            break
    while (setting := later(best.setting, search.bundle.num_timesteps)) is not None:
        m = search.measured(setting, search.screen)
        if by_fidelity(m) >= by_fidelity(best):
            break
        best = m
    return best


def methods_structure(structures: tuple[Structure, ...]) -> Structure:
    """Where the named methods are compared: the cheapest searched structure (structures() orders
    them) that repeats the step (FreeDoM's and Universal Guidance's recurrence is what they are),
    else the cheapest."""
    return next((s for s in structures if s.recurrences > 1), structures[0])


def compare_methods(search: Search, structure: Structure) -> list[Measurement]:
    """Every named method other than TFG at its best strength on the screening images, at the
    structure's steps (and its repeats where the method takes them), then on the decision sample."""
    return [search.measured(best_of_method(search, method, structure).setting, search.decision)
            for method in METHODS if method != "tfg"]


def unstopped(search: Search, chosen: Measurement) -> Measurement | None:
    """The chosen setting with TFG's push that never stops (stop_at 1) on the decision sample, what
    the stop changes; None where the chosen setting does not stop."""
    guide = chosen.setting.guide
    if guide.stop_at == 1:
        return None
    return search.measured(replace(chosen.setting, guide=replace(guide, stop_at=1.0)), search.decision)


def equal_time(setting: Setting, noise_aware: Setting) -> Setting:
    """setting with the steps the noise-aware default's time per image buys (at least one), by
    the step costs: a noise-aware step is one plain guided step, a training-free one
    TrainingFree.step_cost of them."""
    return replace(setting, steps=setting.guide.steps_costing(noise_aware.steps))


def at_equal_time(search: Search, measurements: list[Measurement]) -> dict[Setting, Measurement]:
    """Each guided setting's measurement at the noise-aware default's time (equal_time), on the
    decision sample."""
    return {m.setting: search.measured(equal_time(m.setting, search.noise_aware), search.decision)
            for m in measurements}


def defaults_record(choice: Choice) -> dict:
    """defaults.json's "training_free" record of a choice (guidescope.sample reads it)."""
    m, base = choice.chosen, choice.noise_aware
    return {"sampler": m.setting.sampler, "steps": m.setting.steps, "threshold": m.setting.threshold,
            "schedule": m.setting.schedule, "interval": interval_text(m.setting.interval),
            "guide": asdict(m.setting.guide), "fidelity": [round(v, 4) for v in (m.scores.fidelity, *m.interval("fidelity"))],
            "fd": round(m.scores.fd, 3), "noise_aware_fd": round(base.scores.fd, 3),
            "seconds_per_image": round(m.sample_seconds / m.images, 5),
            "noise_aware_seconds_per_image": round(base.sample_seconds / base.images, 5),
            "decision_images": m.images, "reason": choice.reason}


def noise_aware_default(folder: Path) -> Setting:
    """The noise-aware default of the folder's defaults.json, the evaluation's Setting defaults
    (the library's) for what it does not name."""
    chosen = read_defaults(folder)
    base = Setting()
    get = {name: default_value(name, chosen.get(name), type(getattr(base, name)))
           for name in ("sampler", "steps", "scale", "threshold", "schedule")}
    interval = parse_interval(default_value("interval", chosen.get("interval"), str) or interval_text(base.interval))
    return replace(base, interval=interval, **{name: value for name, value in get.items() if value is not None})


def training_free_default(folder: Path) -> Setting | None:
    """The training-free record of the folder's defaults.json (defaults_record's) as the
    evaluation's Setting; None where it has none."""
    record = read_defaults(folder).get("training_free")
    if not record:
        return None
    return Setting(record["sampler"], record["steps"], threshold=record["threshold"],
                   schedule=record.get("schedule", "constant"), interval=parse_interval(record.get("interval", "full")),
                   guide=TrainingFree(**record["guide"]))


def at_structure(choice: Choice, structure: Structure) -> list[Measurement]:
    """TFG's decision measurement at structure, where the search made one."""
    return [m for m in choice.tried if structure.holds(m.setting)]


def guide_training(record: dict) -> str:
    """'timm convnext_atto, adversarially trained within L2 radius 4, fine-tuned from another': how
    a clean guide classifier was made, from its JSON."""
    training = record.get("training", {})
    radius = training.get("adversarial_radius")
    return (f"timm {record['config']['architecture']}, "
            + (f"adversarially trained within L2 radius {radius:g}" if radius else "plain training")
            + (", fine-tuned from another" if training.get("init") else ""))


def guide_text(folder: Path, record: dict) -> str:
    """'checkpoints/x/guide_classifier (guide_training's words, held-out accuracy 88.5%)': which
    clean classifier guided, from its JSON."""
    accuracy = record.get("training", {}).get("test_acc")
    held_out = "" if accuracy is None else f", held-out accuracy {accuracy:.1%}"
    return f"`{Path(folder).as_posix()}/guide_classifier` ({guide_training(record)}{held_out})"


def results_page(choice: Choice, methods: list[Measurement], screened: list[Measurement], run: str,
                 structure: Structure, guide: str, equal: dict[Setting, Measurement],
                 never_stops: Measurement | None) -> str:
    """TRAINING_FREE.md: the decision table (every structure's final beam on the decision sample,
    its best in bold, beside the noise-aware default), the chosen setting beside itself with a push
    that never stops (never_stops: unstopped's), each named method at its best strength, the chosen
    setting and each method at the noise-aware default's time (equal: at_equal_time's), and the
    screening measurements."""
    base = choice.noise_aware
    base_time = base.sample_seconds / base.images

    def row(m: Measurement, best: bool = False) -> str:
        per_image = m.sample_seconds / m.images
        label = f"**{m.setting.label()}**" if best else m.setting.label()
        return (f"| {label} | {m.show('fidelity')} | {m.show('fd')} | {m.scores.fd / base.scores.fd:.2f} | "
                f"{per_image:.4f} | {per_image / base_time:.1f}x |")
    head = ["| setting | fidelity | Frechet distance | FD / noise-aware | s per image | time / noise-aware |",
            "|---|---:|---:|---:|---:|---:|"]
    return "\n".join([
        "# Training-free guidance: the search and the decision", "",
        f"Run: `{run}`. Guided by {guide}; scored by the evaluator, never by the clean classifier that guides. "
        f"Target: fidelity >= {FIDELITY_GOAL:.0%} with a Frechet distance at most {FD_WITHIN:g}x the noise-aware "
        "default's, on the decision sample; the cheapest structure first. The seconds per image are the search's "
        "own, taken wherever it ran (other work beside it slows every row alike, so the ratios hold better than the "
        "seconds); the speed comparison on a quiet machine is `scripts/benchmark_training_free.py`'s "
        "(`docs/TRAINING_FREE_SPEED.md` for the shipped bundles).", "",
        f"**Chosen:** {choice.chosen.setting.label()}: {choice.reason}.", "",
        f"## Decision sample ({base.images} images per setting, the same noise): each structure's final beam, "
        "its best in bold", "", *head, row(base), *(row(m, m in choice.tried) for m in choice.beams), "",
        *(["## The stop: the chosen setting, and the same with TFG's push that never stops (stop_at 1), from the "
           "same noise", "", *head, row(base), row(choice.chosen), row(never_stops), ""] if never_stops else []),
        "## Each named method at its best strength (methods_structure: the cheapest searched structure with "
        "recurrence; its steps, and its repeats where the method takes them), beside TFG's best there", "",
        *head, row(base), *(row(m) for m in at_structure(choice, structure) if methods), *(row(m) for m in methods), "",
        *([f"## At the noise-aware default's time per image (the steps its {base.setting.steps} buy, by "
           "TrainingFree.step_cost), each at the strengths above", "", *head, row(base),
           *(row(m) for m in equal.values()), ""] if equal else []),
        f"## The beam (screening, {screened[0].images if screened else 0} images per setting)", "", *head,
        *(row(m) for m in screened), ""])


def readme_markers(folder: Path) -> tuple[str, str]:
    """The README markers of a bundle's training-free table."""
    return f"<!-- training-free:{Path(folder).name}:start -->", f"<!-- training-free:{Path(folder).name}:end -->"


def readme_table(choice: Choice, methods: list[Measurement], folder: Path, page: str,
                 structure: Structure, equal: dict[Setting, Measurement],
                 never_stops: Measurement | None) -> str:
    """The README's table for one bundle: the noise-aware default, the chosen training-free setting
    (and the same never stopping, never_stops: unstopped's) and each named method at its best
    strength, on the decision sample, with the fidelity each reaches at the noise-aware default's
    time (equal: at_equal_time's); page: the results page's path from the README."""
    base = choice.noise_aware
    base_time = base.sample_seconds / base.images

    def row(name: str, m: Measurement) -> str:
        per_image = m.sample_seconds / m.images
        same = equal.get(m.setting)
        at_equal = f"{sampler_title(same.setting.sampler)} {same.setting.steps}: {same.scores.fidelity:.1%}" if same else "-"
        return (f"| {name} | {m.setting.label()} | {m.show('fidelity')} | {m.show('fd')} | {per_image:.3f} s | "
                f"{per_image / base_time:.1f}x | {at_equal} |")
    chosen = choice.chosen
    return "\n".join([
        f"`{Path(folder).name}`, {base.images} images per row from the same noise, scored by the evaluator "
        f"(details: [{Path(page).name}]({page})). Target: fidelity >= {FIDELITY_GOAL:.0%} with a Frechet "
        f"distance at most {FD_WITHIN:g}x the noise-aware default's. {choice.reason[0].upper()}{choice.reason[1:]}.", "",
        "| guide | setting | fidelity | Frechet distance | per image | time / noise-aware | fidelity at the noise-aware "
        "time |", "|---|---|---:|---:|---:|---:|---:|",
        row("noise-aware default", base), row("training-free default", chosen),
        *([row("the same, never stopping (TFG's)", never_stops)] if never_stops else []),
        *(row("TFG, as the methods below", m) for m in at_structure(choice, structure) if methods and m is not chosen),
        *(row(m.setting.guide.variant.title, m) for m in methods)])
