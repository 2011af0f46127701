"""A user method file: training on inputs with Gaussian noise, a random-perturbation baseline for the
adversarial methods (the README's "Adding a method" shows the code below this docstring, verbatim).

The method adds noise to the adapter's attack surface, so one step serves every modality: pixels
(images, segmentation), feature vectors, and input word embeddings (text, padding left alone).
Load it with `--include`; its parameter is set with `--set` (see the README for why not `--sigma`):

    python -m suite run --include examples/gaussian_noise.py --task digits --method noise --set sigma=0.2

tests/test_contracts.py includes this file and runs the method through the method contract on every
modality.
"""
# examples/gaussian_noise.py
from suite.methods.base import Method
from suite.params import Param, nonneg
from suite.registry import METHODS


@METHODS.register("noise")
class GaussianNoise(Method):
    description = "training on inputs with Gaussian noise on the attack surface (a random-perturbation baseline)"
    params = {"sigma": Param(float, 0.1, "standard deviation of the noise on the attack surface", check=nonneg)}

    def cost(self) -> float:
        return 1.0  # forward-backward passes per step (ST: 1, SAM: 2, PGD-10 AT: 11)

    def train_step(self, model, batch, optimizer, adapter, ctx=None):
        import torch  # inside functions: listing the registries must not import torch

        x = adapter.surface(model, batch)            # detached: pixels, features or word embeddings
        noise = self.p["sigma"] * torch.randn_like(x)
        mask = adapter.surface_mask(batch)           # None, or 0 where the input must not change
        if mask is not None:
            noise = noise * mask
        x = x + noise
        if adapter.bounds is not None:               # images: stay in [0, 1]
            x = x.clamp(*adapter.bounds)
        optimizer.zero_grad(set_to_none=True)
        out = adapter.forward_surface(model, batch, x)
        loss = adapter.loss(out, batch)
        loss.backward()
        optimizer.step()                             # exactly once per step
        return {"loss": loss.detach(), "acc": adapter.correct(out.detach(), batch).float().mean()}
