"""DeepLabV3 (Chen et al. 2017) from segmentation-models-pytorch, wrapped for the suite's contract.

The wrapper takes images in [0, 1] (N, 3, H, W) of any size and returns logits (N, K, H, W) at the
input resolution: ImageNet normalization is its first layer, the normalized image is padded on the
bottom and right to a multiple of the encoder's output stride (smp requires it; zeros after
normalization = the ImageNet mean colour, as DeepLab pads), and the logits are cropped back. The
padding is part of the model, not of the input, so attacks perturb only real pixels.

Encoders: MobileNetV2 (the paper's choice) or ResNet-50, output stride 16 with ASPP rates
(6, 12, 18) (DeepLabV3's rates for stride 16; smp's defaults are stride 8 with rates 12, 24, 36).
`spec` (the task's `--model`) chooses encoder and weights:

    mobilenet_v2 | resnet50            ImageNet weights when they can be loaded (smp's hub copy, from the
                                       local Hugging Face cache or the hub); otherwise from scratch,
                                       with a notice in `model.suite_notes`
    mobilenet_v2:scratch               from scratch, deliberately
    PATH | resnet50:PATH               encoder weights from a local state-dict file (.pt/.pth/.safetensors;
                                       torchvision's ImageNet checkpoints fit, their classifier is dropped)
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import UserError
from suite.hub import hf_offline as _hf_offline
from suite.hub import hub_reachable as _hub_reachable
from suite.models.layers import Normalize

ENCODERS = ("mobilenet_v2", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT_STRIDE = 16
ATROUS_RATES = (6, 12, 18)
NO_IMAGENET = "encoder weights 'imagenet' could not be loaded offline; training from scratch"


class DeepLabV3Net(nn.Module):
    """Normalize -> pad to a multiple of `stride` -> smp DeepLabV3 -> crop the logits."""

    def __init__(self, net: nn.Module, stride: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.stride = stride

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        z = self.normalize(x)
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph))
        return self.net(z)[..., :h, :w]


def parse_spec(spec: str | None) -> tuple[str, str]:
    """`--model` -> (encoder, weights) with weights 'imagenet', 'scratch' or a file path."""
    spec = (spec or ENCODERS[0]).strip()
    name, sep, weights = spec.partition(":")
    if name in ENCODERS:
        return name, (weights if sep else "imagenet") or "imagenet"
    if Path(spec).expanduser().is_file() or any(spec.endswith(s) for s in (".pt", ".pth", ".bin", ".safetensors")):
        return ENCODERS[0], spec
    raise UserError(f"--model {spec!r}: expected an encoder ({', '.join(ENCODERS)}), optionally with "
                    "':scratch' or ':PATH' to a local encoder state dict, or a PATH (mobilenet_v2 encoder)")


def build_deeplabv3(num_classes: int, spec: str | None = None) -> DeepLabV3Net:
    """The model for a `--model` spec (see the module docstring). Sets `suite_notes` (a list of
    one-line notices the runner records) on the returned module."""
    import segmentation_models_pytorch as smp

    encoder, weights = parse_spec(spec)
    if weights not in ("imagenet", "scratch"):  # validate the path before building anything
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"--model {spec}: no such encoder weights file {path}")
    net = smp.DeepLabV3(encoder_name=encoder, encoder_weights=None, classes=num_classes,
                        encoder_output_stride=OUTPUT_STRIDE, decoder_atrous_rates=ATROUS_RATES)
    model = DeepLabV3Net(net, stride=OUTPUT_STRIDE)
    notes: list[str] = []
    if weights == "imagenet":
        state = _imagenet_encoder_state(encoder)
        if state is None:
            notes.append(NO_IMAGENET)
        else:
            net.encoder.load_state_dict(state)
    elif weights != "scratch":
        load_encoder_weights(net.encoder, Path(weights).expanduser(), encoder)
    model.suite_notes = notes
    return model


def _imagenet_encoder_state(encoder: str) -> dict | None:
    """smp's ImageNet weights for `encoder` (the same files `encoder_weights='imagenet'` loads), from
    the local cache when the hub is off or unreachable; None when they cannot be had."""
    try:
        from huggingface_hub import hf_hub_download
        from safetensors.torch import load_file
        from segmentation_models_pytorch.encoders import encoders
    except ImportError:
        return None
    settings = encoders[encoder]["pretrained_settings"]["imagenet"]
    local_only = _hf_offline() or not _hub_reachable()
    try:
        path = hf_hub_download(settings["repo_id"], filename="model.safetensors", revision=settings["revision"],
                               local_files_only=local_only)
        return load_file(path, device="cpu")
    except Exception:  # not cached and not downloadable (LocalEntryNotFoundError, HTTP errors, ...)
        return None


def load_encoder_weights(module: nn.Module, path: Path, encoder: str) -> None:
    """Load a state dict file into an smp encoder: torchvision/timm-style keys, or keys prefixed with
    'encoder.' / 'module.' (a whole smp model or a DDP checkpoint); classifier keys are dropped. One
    clear line if it does not fit."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--model {path}: cannot read encoder weights: {type(e).__name__}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--model {path}: expected a state dict (parameter name -> tensor)")
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    for prefix in ("net.encoder.", "encoder."):  # a whole suite model or a whole smp model: its encoder
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc."))}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(shape)} of another shape (e.g. {shape[0]})" if shape else ""]
        raise UserError(f"--model {path}: not a {encoder} encoder state dict: "
                        f"{', '.join(p for p in parts if p)} keys")
    module.load_state_dict(state)
