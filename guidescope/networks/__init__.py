"""The networks, each an nn.Module built from a frozen config that its checkpoint's JSON carries:

    layers    what the networks share: the timestep embedding, attention, attention pooling, the resize
    small     sized for 28x28 images on a CPU: the eps-predicting UNet, the noise-conditioned
              classifier that guides it, the clean-image evaluator that judges, the autoencoder
    guide_classifier
              a clean-image classifier from any timm architecture (a ConvNeXt as shipped), to
              guide through the predicted clean image x̂₀; never the evaluator
    adm       guided-diffusion's ADM UNet and classifier (Dhariwal & Nichol 2021)
    registry  a checkpoint's "kind" -> its network and config (build_model, config_dict)
    backend   where the UNet's forward pass runs on a CPU: eager torch or ONNX Runtime
"""
