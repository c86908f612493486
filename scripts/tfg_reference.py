"""Write the test data in tests/data/tfg/ from YWolfeee/Training-Free-Guidance's own guidance methods.

Run it outside the repo, with PYTHONPATH at an extracted copy of that repository (nothing of it is
vendored here). Only torch, numpy, PIL, torchvision and safetensors need be installed (the project's
venv has them): the reference's heavy imports (diffusers, datasets, its loggers, its other tasks and
its pretrained networks) are replaced by stand-ins in sys.modules before the import, see stub_modules.

    mkdir -p /tmp/tfg-ref/src && git -C /tmp/tfg-ref/src init -q && \\
        git -C /tmp/tfg-ref/src fetch -q --depth 1 https://github.com/YWolfeee/Training-Free-Guidance \\
            f8d17f3ec2f0e7377dedf7b7bc62fad15f36cb77 && \\
        git -C /tmp/tfg-ref/src archive FETCH_HEAD | tar x -C /tmp/tfg-ref/src
    cd /tmp/tfg-ref && PYTHONPATH=/tmp/tfg-ref/src /path/to/repo/.venv/bin/python /path/to/repo/scripts/tfg_reference.py

(From a local mirror of that repository instead: mkdir -p /tmp/tfg-ref/src && git -C MIRROR archive
f8d17f3ec2f0e7377dedf7b7bc62fad15f36cb77 | tar x -C /tmp/tfg-ref/src.) guidescope is found in the repo
(appended to sys.path) unless PYTHONPATH names another copy; only guidescope.diffusion is used, for
the schedule. --out DIR writes elsewhere (to check that two runs give the same bytes).

What runs is the reference's code, unmodified: methods/{base,dps,lgd,freedom,mpgd,ugd,tfg,cg}.py,
tasks/base.py's BaseGuider (data_type 'image': its post-processing is the identity),
tasks/image_label_guidance.py's ImageLabelGuidance (get_guidance_without_time, or _with_time for cg)
with tasks/utils.py's rescale_grad, and utils/configs.py's Arguments. Only the networks are ours
(tests/tfg_fixtures.py): the eps network, and as the label classifier a stand-in for the
reference's ResNet18 that returns log_softmax(TinyClassifier(x)) at a class PER ITEM (the
reference's own classifiers, given several targets, instead concatenate every target's
log-probability over the whole batch; one target is the same thing for every item).

For each case it runs ONE guide_step from a fixed x with a fresh RecordedNoise as noise_fn, and
writes, under tests/data/tfg/ (or --out):
    reference.safetensors  x, targets, the schedule, and per case <case>/x_prev and the unit noise
                           draws <case>/draw_<k> in the order the method drew them
    reference.json         the commit, seeds, schedule, and per case: the class, t_index, eta, every
                           hyperparameter it reads, the number of draws, their sigmas in order, and
                           the order in which the method draws noise
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.append(str(REPO))  # guidescope (for tfg_fixtures.schedule), unless PYTHONPATH names another copy
from tfg_fixtures import RecordedNoise, make_networks, schedule  # noqa: E402

REFERENCE = "https://github.com/YWolfeee/Training-Free-Guidance"
COMMIT = "f8d17f3ec2f0e7377dedf7b7bc62fad15f36cb77"
NETWORK_SEED, X_SEED, NOISE_SEED = 0, 1, 2
STEPS = 10
TARGETS = [0, 1, 2]  # the class of each item of x
X_SHAPE = (3, 1, 4, 4)

# The Arguments fields every case sets (utils.configs.Arguments' defaults otherwise; clip_x0 is
# True there, False here everywhere, so x0 is never clamped).
COMMON = dict(data_type="image", device="cpu", seed=42, clip_x0=False, clip_sample_range=1.0, clip_scale=1e6,
              train_steps=1000, inference_steps=STEPS, guide_network="tiny_resnet", target=",".join(map(str, TARGETS)))
TFG = dict(rho=0.5, mu=0.25, sigma=0.1, eps_bsz=2, iter_steps=2, recur_steps=2,
           rho_schedule="increase", mu_schedule="decrease", sigma_schedule="decrease")

# name: (module, class, t_index, eta, task, hyperparameters, the hyperparameters that zero the guidance)
CASES = {
    "dps": ("dps", "DPSGuidance", 4, 0.0, "label_guidance", dict(guidance_name="dps", guidance_strength=0.5),
            dict(guidance_strength=0.0)),
    "lgd": ("lgd", "LGDGuidance", 4, 0.0, "label_guidance", dict(guidance_name="lgd_3", guidance_strength=0.5),
            dict(guidance_strength=0.0)),
    "freedom": ("freedom", "FreedomGuidance", 4, 0.0, "label_guidance",
                dict(guidance_name="freedom", guidance_strength=0.5, rho_schedule="decrease", recur_steps=2),
                dict(guidance_strength=0.0)),
    "mpgd": ("mpgd", "MPGDGuidance", 4, 0.0, "label_guidance", dict(guidance_name="mpgd", guidance_strength=0.3),
             dict(guidance_strength=0.0)),
    "ugd": ("ugd", "UGDGuidance", 4, 0.0, "label_guidance",
            dict(guidance_name="ugd", guidance_strength=0.2, recur_steps=2, iter_steps=3), dict(guidance_strength=0.0)),
    "tfg": ("tfg", "TFGGuidance", 4, 0.0, "label_guidance", dict(guidance_name="tfg", **TFG), dict(rho=0.0, mu=0.0)),
    "tfg_eta1": ("tfg", "TFGGuidance", 4, 1.0, "label_guidance", dict(guidance_name="tfg", **TFG), dict(rho=0.0, mu=0.0)),
    "tfg_t0": ("tfg", "TFGGuidance", 0, 0.0, "label_guidance", dict(guidance_name="tfg", **TFG), dict(rho=0.0, mu=0.0)),
    # cg.py passes t positionally to get_guidance, so it needs the time-dependent label guidance; our
    # classifier ignores the time, so this is classifier guidance by log p(c | x_t) of the noisy x_t.
    "cg": ("cg", "ClassifierGuidance", 4, 0.0, "label_guidance_time", dict(guidance_name="cg", guidance_strength=1.0),
           dict(guidance_strength=0.0)),
}

# The Arguments fields each method reads (besides data_type, device, seed, tasks/guide_networks/targets).
READS = {
    "DPSGuidance": ["guidance_strength", "clip_x0", "clip_sample_range"],
    "LGDGuidance": ["guidance_strength", "guidance_name", "clip_scale", "clip_x0", "clip_sample_range"],
    "FreedomGuidance": ["guidance_strength", "rho_schedule", "recur_steps", "clip_x0", "clip_sample_range"],
    "MPGDGuidance": ["guidance_strength", "clip_x0", "clip_sample_range"],
    "UGDGuidance": ["guidance_strength", "recur_steps", "iter_steps", "clip_x0", "clip_sample_range"],
    "TFGGuidance": ["rho", "mu", "sigma", "eps_bsz", "iter_steps", "recur_steps", "rho_schedule", "mu_schedule",
                    "sigma_schedule", "clip_scale", "clip_x0", "clip_sample_range"],
    "ClassifierGuidance": ["guidance_strength", "clip_x0", "clip_sample_range"],
}

DRAW_ORDER = {
    "DPSGuidance": "one DDIM step from unet(x, t) first: its noise (sigma = eta * DDIM sigma) only when eta > 0 and "
                   "t > 0; then no more draws (the guidance is deterministic)",
    "LGDGuidance": "the DDIM noise first (only when eta > 0 and t > 0), then the n = int(guidance_name.split('_')[-1]) "
                   "Monte Carlo draws, each a full (B, ...) tensor at sigma = sqrt(1 - alpha_prod_t), in that order "
                   "(draw k perturbs x0 for MC sample k of every item)",
    "FreedomGuidance": "per recurrence: the DDIM noise (only when eta > 0 and t > 0), then the re-noising draw of "
                       "_predict_xt at sigma = sqrt(1 - alpha_prod_t / alpha_prod_t_prev); also after the last "
                       "recurrence, where its result is discarded",
    "MPGDGuidance": "only the DDIM noise of the final step (eta > 0 and t > 0); none at eta = 0",
    "UGDGuidance": "per recurrence: the DDIM noise (only when eta > 0 and t > 0), then the re-noising draw of "
                   "_predict_xt (also after the last recurrence, where its result is discarded)",
    "TFGGuidance": "per recurrence: eps_bsz Monte Carlo draws at sigma = std (only when std > 0; std = sigma * "
                   "sqrt(1 - alpha_prod_t) for sigma_schedule 'decrease'), shared by the Delta_t term and every "
                   "iter_step of the Delta_0 term; then the DDIM noise (only when eta > 0 and t > 0); then the "
                   "re-noising draw of _predict_xt at sigma = sqrt(1 - alpha_prod_t / alpha_prod_t_prev) (also "
                   "after the last recurrence, where its result is discarded)",
    "ClassifierGuidance": "only the DDIM noise (eta > 0 and t > 0); none at eta = 0",
}


NOTES = [
    "rescale_grad (tasks/utils.py) is the identity without a node_mask: clip_scale has no effect on images",
    ("the reference's classifiers take one target for every item (a list of several concatenates them over the "
     "whole batch); the per-item targets here are the stand-in classifier's"),
    "LGD: the gradient of sum_i logsumexp_k log p(c_i | x0_i + mc_k) is divided again by the number of draws",
    ("TFG: the Monte Carlo average is logsumexp_k - log(n), so it has no extra 1/n; Delta_t enters as "
     "Delta_t / sqrt(alpha_prod_t / alpha_prod_t_prev) and Delta_0 as Delta_0 * sqrt(alpha_prod_t_prev)"),
    ("rho and mu schedules are normalized to mean 1 over the steps: value * s[t] * len(s) / sum(s), with "
     "s = alpha_prod_ts / alpha_prod_t_prevs ('increase') or 1 - that ('decrease'); sigma 'decrease' is "
     "sigma * sqrt(1 - alpha_prod_ts[t]), not normalized"),
    "DPS divides its step per item by |log p(c | x0(x))|",
    "the DDIM noise is skipped when the original timestep ts[t] is 0, the _predict_xt re-noising never is",
]


def stub_modules() -> None:
    """Stand-ins, in sys.modules, for what the reference imports but these cases never use:
    diffusers (randn_tensor is only used without a noise_fn), datasets, its logger package, its
    other tasks, and its pretrained classifiers (replaced by PerItemLabel below)."""

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        mod.__getattr__ = lambda attr: _unused(f"{name}.{attr}", attr)  # any other name: a placeholder
        sys.modules[name] = mod
        return mod

    def randn_tensor(*args, **kwargs):
        raise RuntimeError("randn_tensor called: every guidance object here must draw from its noise_fn")

    module("diffusers", __path__=[])
    module("diffusers.utils", __path__=[])
    module("diffusers.utils.torch_utils", randn_tensor=randn_tensor)
    module("datasets")
    module("logger", __path__=[])
    module("logger.base", BaseLogger=object)
    for name in ("style_transfer_guidance", "super_resolution", "gaussian_deblur", "molecule_properties",
                 "audio_declipping", "audio_inpainting"):
        module(f"tasks.{name}")
    module("tasks.networks.resnet", ResNet18=lambda targets, guide_network: PerItemLabel(targets))
    module("tasks.networks.huggingface_classifier")
    module("tasks.networks.time_dependent_classifier",
           create_time_classifier=lambda target, guide_network: PerItemLabel(target, time=True))


def _unused(name: str, attr: str):
    if attr.startswith("__"):
        raise AttributeError(name)

    class Unused:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"{name} is a stand-in: the reference code took a path these cases should not")
    Unused.__name__ = name
    return Unused


CLASSIFIER = None  # the TinyClassifier PerItemLabel wraps, set in main


class PerItemLabel(torch.nn.Module):
    """The reference's label classifier interface (ResNet18 / create_time_classifier): forward(x)
    (or forward(x, time), time ignored) -> (N,) log p(target | x), here log_softmax(TinyClassifier(x))
    gathered at targets[i % len(targets)] for row i: the rows of a batch of N = k * B images (TFG's
    flattened Monte Carlo batch, MC sample major) are item i = row % B."""

    def __init__(self, targets, time: bool = False):
        super().__init__()
        self.classifier = CLASSIFIER
        self.register_buffer("targets", torch.tensor(list(targets), dtype=torch.long))
        self.time = time

    def forward(self, x, time=None, **kwargs):
        log_probs = F.log_softmax(self.classifier(x), dim=1)
        index = self.targets.repeat(x.shape[0] // len(self.targets))
        assert len(index) == x.shape[0], f"a batch of {x.shape[0]} is not a multiple of {len(self.targets)} items"
        return log_probs.gather(1, index[:, None]).squeeze(1)


ROLES = {"get_noise": "mc", "guide_step": "mc", "_predict_x_prev_from_eps": "ddim", "_predict_xt": "renoise"}


class RolesNoise(RecordedNoise):
    """RecordedNoise that also notes which reference function asked for each draw: 'mc' (a Monte
    Carlo draw: TFG's get_noise, LGD's guide_step), 'ddim' (_predict_x_prev_from_eps, the DDIM
    noise) or 'renoise' (_predict_xt); and, for guide_steps with recurrences, the recurrence."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.roles: list[str] = []

    def __call__(self, x, sigma, **kwargs):
        frame, role, recurrence = sys._getframe(1), None, None
        while frame is not None:
            if role is None and frame.f_code.co_name in ROLES:
                role = ROLES[frame.f_code.co_name]
            if frame.f_code.co_name == "guide_step":
                recurrence = frame.f_locals.get("recur_step")
                break
            frame = frame.f_back
        self.roles.append(role if recurrence is None else f"{role}@recur{recurrence}")
        return super().__call__(x, sigma, **kwargs)


def build(arguments, module: str, cls: str, task: str, hyper: dict, noise: RecordedNoise):
    """The reference's guidance object, built as its main.py does (utils.utils sets tasks,
    guide_networks and targets from task, guide_network and target, split at '+')."""
    import importlib
    args = arguments(**{**COMMON, "task": task, **hyper})
    args.tasks, args.guide_networks, args.targets = args.task.split("+"), args.guide_network.split("+"), args.target.split("+")
    method = getattr(importlib.import_module(f"methods.{module}"), cls)
    return method(args, noise_fn=noise), args


def run_case(arguments, name, unet, ts, abar, abar_prev, x):
    module, cls, t_index, eta, task, hyper, zeroed = CASES[name]
    record = {"method": f"methods/{module}.py:{cls}", "task": task, "t_index": t_index, "timestep": int(ts[t_index]),
              "eta": eta, "draw_order": DRAW_ORDER[cls]}
    noise = RolesNoise(NOISE_SEED)
    obj, args = build(arguments, module, cls, task, hyper, noise)
    record["hyperparameters"] = {k: getattr(args, k) for k in READS[cls]}
    if cls in ("TFGGuidance", "FreedomGuidance"):
        derived = {"rho": float(obj.get_rho(t_index, abar, abar_prev))}
        if cls == "TFGGuidance":
            derived["mu"] = float(obj.get_mu(t_index, abar, abar_prev))
            derived["std"] = float(obj.get_std(t_index, abar, abar_prev))
        record["derived"] = derived
    printed = io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(printed):  # as ImageSampler.sample; freedom and ugd print
        x_prev = obj.guide_step(x.clone(), t_index, unet, ts, abar, abar_prev, eta)
    tensors = {f"{name}/x_prev": x_prev.detach().clone()}
    for k, draw in enumerate(noise.draws):
        tensors[f"{name}/draw_{k}"] = draw
    record.update(n_draws=len(noise.draws), sigmas=noise.sigmas, roles=noise.roles)
    if printed.getvalue():
        record["printed"] = printed.getvalue().split()

    # The same step with the guidance zeroed and the same draws: how much the guidance moved x_prev.
    plain_noise = RecordedNoise(NOISE_SEED)
    plain, _ = build(arguments, module, cls, task, {**hyper, **zeroed}, plain_noise)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        unguided = plain.guide_step(x.clone(), t_index, unet, ts, abar, abar_prev, eta)
    assert len(plain_noise.draws) == len(noise.draws)
    # The same step in float64 (networks, schedule, x and the same draws cast): the float32 rounding
    # error of the recorded x_prev, a floor for the tolerance of a comparison.
    double_noise = RecordedNoise(NOISE_SEED)
    double, _ = build(arguments, module, cls, task, hyper, double_noise)
    CLASSIFIER.double()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            x_prev64 = double.guide_step(x.double(), t_index, unet.double(), ts, abar.double(), abar_prev.double(), eta)
    finally:
        unet.float(), CLASSIFIER.float()
    record["float32_error_vs_float64"] = float((x_prev.double() - x_prev64).abs().max())
    record["unguided_with"] = zeroed
    record["guidance_effect_max_abs"] = float((x_prev - unguided).abs().max())
    record["x_prev_max_abs"] = float(x_prev.abs().max())
    return record, tensors


def main() -> int:
    global CLASSIFIER
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "tfg")
    out = parser.parse_args().out
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    unet, CLASSIFIER = make_networks(NETWORK_SEED)
    stub_modules()
    from tasks.utils import rescale_grad  # noqa: F401  (the reference's own, imported through its module)
    from utils.configs import Arguments

    ts, abar, abar_prev = schedule(STEPS)
    x = torch.randn(X_SHAPE, generator=torch.Generator().manual_seed(X_SEED), dtype=torch.float32)
    tensors = {"x": x, "targets": torch.tensor(TARGETS), "schedule/ts": ts, "schedule/alpha_prod_ts": abar,
               "schedule/alpha_prod_t_prevs": abar_prev}
    cases = {}
    for name in CASES:
        try:
            record, case_tensors = run_case(Arguments, name, unet, ts, abar, abar_prev, x)
            tensors.update(case_tensors)
        except Exception as exc:  # record why and go on
            record = {"method": CASES[name][1], "error": f"{type(exc).__name__}: {exc}"}
        cases[name] = record

    meta = {
        "reference": REFERENCE, "commit": COMMIT, "script": "scripts/tfg_reference.py",
        "networks": "tests/tfg_fixtures.py make_networks(seed)", "network_seed": NETWORK_SEED,
        "x": f"torch.randn({X_SHAPE}, generator=torch.Generator().manual_seed({X_SEED}))", "x_seed": X_SEED,
        "noise": f"tests/tfg_fixtures.py RecordedNoise({NOISE_SEED}), a fresh one per case", "noise_seed": NOISE_SEED,
        "targets": TARGETS,
        "classifier": "log_softmax(TinyClassifier(x), dim=1) at targets[row % 3] for each row (item row % B of a "
                      "k * B Monte Carlo batch); through the reference's ImageLabelGuidance and BaseGuider "
                      "(post-processing: identity)",
        "schedule": {"kind": "guidescope GaussianDiffusion.from_schedule('linear', 1000, steps), sampling order",
                     "steps": STEPS, "ts": ts.tolist(), "alpha_prod_ts": abar.tolist(),
                     "alpha_prod_t_prevs": abar_prev.tolist()},
        "clip_x0": False,
        "common_arguments": COMMON,
        "guide_step": "with torch.no_grad(): obj.guide_step(x, t_index, unet, ts, alpha_prod_ts, alpha_prod_t_prevs, eta)",
        "roles": "per draw, the reference function that drew it: mc (Monte Carlo: TFG get_noise, LGD guide_step), "
                 "ddim (_predict_x_prev_from_eps), renoise (_predict_xt); @recurN: in recurrence N",
        "notes": NOTES,
        "cases": cases,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, out / "reference.safetensors",
              metadata={"commit": COMMIT})
    (out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    failed = [name for name, rec in cases.items() if "error" in rec]
    print(f"wrote {out}: {len(cases) - len(failed)} cases" + (f", failed: {failed}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
