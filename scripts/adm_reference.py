"""Write the test data of tests/test_adm.py from openai/guided-diffusion's own code (MIT).

Run it outside the repo, with PYTHONPATH at an extracted copy of guided-diffusion (nothing of
it is vendored here; it needs only torch and numpy, as guided_diffusion.dist_util is not imported):

    mkdir -p /tmp/adm-ref/gd && git -C /tmp/adm-ref/gd init -q && \\
        git -C /tmp/adm-ref/gd fetch -q --depth 1 https://github.com/openai/guided-diffusion 22e0df8183507e13a7813f8d38d51b072ca1e67c && \\
        git -C /tmp/adm-ref/gd archive FETCH_HEAD guided_diffusion | tar x -C /tmp/adm-ref/gd
    cd /tmp/adm-ref && PYTHONPATH=/tmp/adm-ref/gd python /path/to/repo/scripts/adm_reference.py

It writes, under tests/data/adm/:
    presets.json       per README preset: its flags, the timesteps its respacing keeps, and the
                       sorted (key, shape) list of the reference's model and classifier built from
                       them (on the meta device)
    tiny.json          tiny configs (in guidescope.networks.adm's names), their weight seeds and checksums
    tiny.safetensors   a fixed (x, t, y), each tiny network's output on it, one p_mean_variance
                       of a learned-variance model, and a guided DDIM and a guided DDPM run
                       (p_sample_loop with cond_fn) from a fixed x_T, with the noise DDPM drew
The tiny weights are not stored: tests/adm_fixtures.random_weights fills them from a seed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from guided_diffusion import script_util as su
from guided_diffusion.respace import space_timesteps
from guided_diffusion.unet import EncoderUNetModel, UNetModel
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from adm_fixtures import checksum, random_weights, shapes_of  # noqa: E402

# guided-diffusion's README sampling commands, copied here on purpose rather than imported from
# guidescope.convert: the test then checks the converter's presets against this copy.
PRESETS = {
    "64x64": ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
              "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 "
              "--num_res_blocks 3 --resblock_updown True --use_new_attention_order True --use_fp16 True "
              "--use_scale_shift_norm True", "--classifier_scale 1.0 --classifier_depth 4"),
    "128x128": ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 "
                "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
                "--resblock_updown True --use_fp16 True --use_scale_shift_norm True", "--classifier_scale 0.5"),
    "256x256": ("--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
                "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
                "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
                "--classifier_scale 1.0"),
    "256x256_uncond": ("--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
                       "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
                       "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True",
                       "--classifier_scale 10.0"),
}
SAMPLE_FLAGS = "--timestep_respacing 250"  # the README's, shared by every preset

# Tiny networks: widths of 32 (GroupNorm's groups), 8x8 images, two levels. Between them they take
# each branch of the architecture: new / legacy attention order, heads by count / by width, ResBlock
# / convolution resampling, scale-shift / additive embedding, class-conditional / not, learn_sigma / not,
# attention / mean pooling. Configs in guidescope.networks.adm's names.
TINY_COMMON = dict(image_size=8, in_channels=3, model_channels=32, num_res_blocks=1, attention_resolutions=[1, 2],
                   dropout=0.0, channel_mult=[1, 2], conv_resample=True)
TINY = {
    "unet_new": ("adm_unet", 10, dict(TINY_COMMON, out_channels=6, num_heads=4, num_head_channels=16, num_heads_upsample=-1,
                                      use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True,
                                      num_classes=5, class_cond=True)),
    "unet_legacy": ("adm_unet", 11, dict(TINY_COMMON, out_channels=3, num_heads=2, num_head_channels=-1, num_heads_upsample=4,
                                         use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=False,
                                         num_classes=5, class_cond=False)),
    "classifier_attention": ("adm_classifier", 12, dict(TINY_COMMON, out_channels=5, num_heads=1, num_head_channels=16,
                                                        use_scale_shift_norm=True, resblock_updown=True,
                                                        use_new_attention_order=False, pool="attention")),
    "classifier_adaptive": ("adm_classifier", 13, dict(TINY_COMMON, out_channels=5, num_heads=2, num_head_channels=-1,
                                                       use_scale_shift_norm=False, resblock_updown=False,
                                                       use_new_attention_order=True, pool="adaptive")),
}
# The sampling runs: the learned-variance UNet guided by the attention-pooling classifier.
RUN = dict(unet="unet_new", classifier="classifier_attention", noise_schedule="cosine", diffusion_steps=100,
           timestep_respacing="10", classifier_scale=1.0, x_T_seed=20, noise_seed=21)


def parse(flags: str) -> argparse.Namespace:
    """The flags as guided-diffusion's classifier_sample.py parses them."""
    defaults = dict(clip_denoised=True, num_samples=10000, batch_size=16, use_ddim=False, model_path="",
                    classifier_path="", classifier_scale=1.0)
    defaults.update(su.model_and_diffusion_defaults())
    defaults.update(su.classifier_defaults())
    parser = argparse.ArgumentParser()
    su.add_dict_to_argparser(parser, defaults)
    return parser.parse_args(flags.split())


def key_shapes(model: torch.nn.Module) -> list:
    return [[k, list(v.shape)] for k, v in sorted(model.state_dict().items())]


def preset_record(model_flags: str, classifier_flags: str) -> dict:
    args = parse(f"{model_flags} {classifier_flags} {SAMPLE_FLAGS}")
    with torch.device("meta"):  # keys and shapes only: nothing is allocated
        model, _ = su.create_model_and_diffusion(**su.args_to_dict(args, su.model_and_diffusion_defaults()))
        classifier = su.create_classifier(**su.args_to_dict(args, su.classifier_defaults()))
    diffusion = {k: getattr(args, k) for k in ("learn_sigma", "diffusion_steps", "noise_schedule", "timestep_respacing")}
    diffusion["kept_timesteps"] = sorted(space_timesteps(args.diffusion_steps, args.timestep_respacing))
    return {"model_flags": model_flags, "classifier_flags": classifier_flags, "sample_flags": SAMPLE_FLAGS,
            "diffusion": diffusion, "classifier_scale": args.classifier_scale,
            "unet": key_shapes(model), "classifier": key_shapes(classifier)}


def reference_network(kind: str, config: dict) -> torch.nn.Module:
    """guided-diffusion's UNetModel / EncoderUNetModel for a config in guidescope.networks.adm's names."""
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
    if kind == "adm_unet":
        num_classes = kwargs.pop("num_classes")
        kwargs["num_classes"] = num_classes if kwargs.pop("class_cond") else None
        return UNetModel(**kwargs)
    return EncoderUNetModel(**kwargs)


def tiny_networks() -> tuple[dict, dict]:
    """name -> the reference network with its recipe weights; and the records for tiny.json."""
    networks, records = {}, {}
    for name, (kind, seed, config) in TINY.items():
        net = reference_network(kind, config)
        weights = random_weights(shapes_of(net.state_dict()), seed)
        net.load_state_dict(weights, strict=True)
        networks[name] = net.eval()
        records[name] = {"kind": kind, "config": config, "seed": seed, "checksum": checksum(weights),
                         "keys": key_shapes(net)}
    return networks, records


def forward_fixtures(networks: dict) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    t, y = torch.tensor([3, 87]), torch.tensor([1, 4])
    tensors = {"x": x, "t": t, "y": y}
    with torch.no_grad():
        for name, net in networks.items():
            kind = TINY[name][0]
            cond = kind == "adm_unet" and TINY[name][2]["class_cond"]
            tensors[f"{name}/out"] = net(x, t, y) if cond else net(x, t)
    return tensors


def run_fixtures(networks: dict) -> dict:
    """One p_mean_variance, then guided DDIM (condition_score) and DDPM (condition_mean) runs."""
    model, classifier = networks[RUN["unet"]], networks[RUN["classifier"]]
    diffusion = su.create_gaussian_diffusion(steps=RUN["diffusion_steps"], learn_sigma=True,
                                             noise_schedule=RUN["noise_schedule"],
                                             timestep_respacing=RUN["timestep_respacing"])

    def cond_fn(x, t, y=None):  # classifier_sample.py's
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * RUN["classifier_scale"]

    y = torch.tensor([1, 4])
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(RUN["x_T_seed"]))
    tensors = {"run/y": y, "run/x_T": x_T, "run/timestep_map": torch.tensor(diffusion.timestep_map)}
    index = torch.tensor([9, 3])  # indices into the respaced schedule
    with torch.no_grad():
        out = diffusion.p_mean_variance(model, x_T, index, clip_denoised=True, model_kwargs={"y": y})
    tensors["pmv/t"] = index
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        tensors[f"pmv/{key}"] = out[key]
    for name, loop in (("ddim", diffusion.ddim_sample_loop_progressive), ("ddpm", diffusion.p_sample_loop_progressive)):
        torch.manual_seed(RUN["noise_seed"])
        noises, real_randn_like = [], torch.randn_like

        def recording_randn_like(like, *args, **kwargs):  # the noise p_sample / ddim_sample draw
            noises.append(real_randn_like(like, *args, **kwargs))
            return noises[-1]

        torch.randn_like = recording_randn_like
        try:
            steps = list(loop(model, tuple(x_T.shape), noise=x_T.clone(), clip_denoised=True,
                              cond_fn=cond_fn, model_kwargs={"y": y}))
        finally:
            torch.randn_like = real_randn_like
        tensors[f"{name}/samples"] = torch.stack([s["sample"] for s in steps])        # (steps, B, C, H, W)
        tensors[f"{name}/pred_xstart"] = torch.stack([s["pred_xstart"] for s in steps])
        if name == "ddpm":
            tensors[f"{name}/noise"] = torch.stack(noises)
    return tensors


def main() -> int:
    torch.set_num_threads(1)
    out = REPO / "tests" / "data" / "adm"
    out.mkdir(parents=True, exist_ok=True)
    presets = {name: preset_record(*flags) for name, flags in PRESETS.items()}
    (out / "presets.json").write_text(json.dumps(presets, separators=(",", ":")) + "\n")
    networks, records = tiny_networks()
    tensors = {**forward_fixtures(networks), **run_fixtures(networks)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "tiny.safetensors")
    (out / "tiny.json").write_text(json.dumps({"networks": records, "run": RUN}, indent=1) + "\n")
    print(f"wrote {out}: {sorted(p.name for p in out.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
