"""Training every network of a bundle, one loop for all (`python -m guidescope.train`):

    data         datasets as in-memory tensors: Fashion-MNIST, or an image folder, with its split
    latents      the same images as an autoencoder's scaled latents (latent diffusion's data)
    tasks        what differs per network: the model, the loss, the held-out metrics
    loop         the loop every network shares, its checkpoint files and log
    optimizer    AdamW, the learning-rate schedule and the EMA
    state        the resumable state of a run
    distributed  data-parallel training under torchrun
    command      the command line
"""
