"""Loading the diffusion models and refining one frame (DESIGN.md section 8).

Two families, read from the base model's ``model_index.json``:

- ``sd15``: ``StableDiffusionControlNetImg2ImgPipeline`` with a list of ControlNets (depth,
  normalbae, seg), one scale each;
- ``sdxl``: ``StableDiffusionXLControlNetUnionImg2ImgPipeline`` with one ControlNet-Union model
  taking every control image, each with its control mode.

Weights come only from a local folder or the local Hugging Face cache (``local_files_only``,
``use_safetensors=True``; remote code is never trusted). The scheduler is replaced by DDIM with
eta = 0, so the only randomness of a frame is the initial noise that :class:`RefinePipeline`
receives: the temporal methods (``refine.temporal``) control it completely.

:meth:`RefinePipeline.__call__` passes ``latents=`` to the diffusers pipeline, which then skips
its own encode and noising; so those latents are ``scheduler.add_noise(vae_encode(beauty),
noise, t_start)``, never raw noise. Images go in and come out as float arrays (no 8-bit trip).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from destruct.errors import UserError, first_line
from refine.models import MissingWeights, check_safetensors, resolve


class Family(str, enum.Enum):
    SD15 = "sd15"
    SDXL = "sdxl"


class ControlKind(str, enum.Enum):
    DEPTH = "depth"
    NORMAL = "normal"
    SEG = "seg"


#: ControlNet-Union (xinsir, SDXL) control mode index of each kind: 0 openpose, 1 depth,
#: 2 hed/scribble, 3 canny/lineart, 4 normal, 5 segment.
UNION_MODES = {ControlKind.DEPTH: 1, ControlKind.NORMAL: 4, ControlKind.SEG: 5}


@dataclass(frozen=True)
class ControlSpec:
    """One control input: its kind, the ControlNet (folder or repo id; for SDXL the Union
    model, the same for every kind) and its conditioning scale."""

    kind: ControlKind
    model: str
    scale: float = 1.0


def detect_family(folder: str | os.PathLike) -> Family:
    """The model family from ``model_index.json`` (``..XL..`` pipelines or a second text
    encoder mean SDXL)."""
    index = Path(folder) / "model_index.json"
    try:
        info = json.loads(index.read_text())
    except FileNotFoundError:
        raise UserError(
            f"refine model {folder} has no model_index.json: give a diffusers pipeline folder "
            "(e.g. stable-diffusion-v1-5/stable-diffusion-v1-5 after `destruct models pull sd15`)"
        ) from None
    except ValueError as e:
        raise UserError(f"{index} is not valid JSON ({e})") from None
    name = str(info.get("_class_name", ""))
    if "XL" in name or "text_encoder_2" in info:
        return Family.SDXL
    if name.startswith("StableDiffusion") or "unet" in info:
        return Family.SD15
    raise UserError(
        f"refine model {folder}: pipeline {name!r} is not SD 1.5 or SDXL, the families destruct refines with"
    )


def choose_device(device: str = "auto") -> tuple[Any, Any]:
    """``(torch.device, dtype)``: CUDA with bf16 (fp16 on GPUs without bf16) when available and
    asked for, else CPU float32."""
    import torch

    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise UserError(f"refine device must be auto, cpu or cuda[:N], got {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu"), torch.float32
    if not torch.cuda.is_available():
        raise UserError(
            f'refine device {device!r} asked for, but torch sees no CUDA GPU; use device = "auto" or "cpu"'
        )
    dev = torch.device("cuda" if device == "auto" else device)
    return dev, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def load_pipeline(
    model: str | os.PathLike,
    controlnets: Sequence[ControlSpec],
    *,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    cpu_offload: bool = False,
    vae_tiling: bool = False,
) -> RefinePipeline:
    """Load the base model and its ControlNets from local files only.

    ``model`` and each ControlNet's ``model`` are folders or repo ids in the local Hugging Face
    cache (``cache_dir`` or ``HF_HUB_CACHE``). Raises ``refine.models.MissingWeights`` when
    something is not there, UserError for pickled weights or an unknown family.
    ``cpu_offload`` moves each model to the GPU only while it runs (for GPUs under ~10 GB);
    ``vae_tiling`` decodes large frames in tiles.
    """
    from diffusers import DDIMScheduler

    if not controlnets:
        raise UserError("refine.controlnets is empty: give at least one {kind, model, scale}")
    base = resolve(model, cache_dir=cache_dir)
    check_safetensors(base)
    family = detect_family(base)
    dev, dtype = choose_device(device)
    from diffusers.pipelines import pipeline_utils

    # diffusers renamed torch_dtype to dtype (the old name warns); older releases know only torch_dtype
    dtype_key = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
    kw = {"local_files_only": True, "use_safetensors": True, dtype_key: dtype}

    if family is Family.SD15:
        from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

        nets = []
        for c in controlnets:
            folder = resolve(c.model, cache_dir=cache_dir)
            check_safetensors(folder)
            nets.append(_load(ControlNetModel, folder, f"refine ControlNet {c.model!r}", **kw))
        pipe = _load(
            StableDiffusionControlNetImg2ImgPipeline,
            base,
            f"refine.model {model!r}",
            controlnet=nets,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **kw,
        )
    else:
        from diffusers import ControlNetUnionModel, StableDiffusionXLControlNetUnionImg2ImgPipeline

        union = {c.model for c in controlnets}
        if len(union) != 1:
            raise UserError(
                f"refine.controlnets for SDXL must all name the same ControlNet-Union model, got {sorted(union)}"
            )
        folder = resolve(union.pop(), cache_dir=cache_dir)
        check_safetensors(folder)
        net = _load(ControlNetUnionModel, folder, "refine ControlNet-Union", **kw)
        extra = {}
        vae_fix = _sdxl_fp16_vae(dtype, cache_dir)
        if vae_fix is not None:
            from diffusers import AutoencoderKL

            extra["vae"] = _load(AutoencoderKL, vae_fix, "the fp16 SDXL VAE", **kw)
        pipe = _load(
            StableDiffusionXLControlNetUnionImg2ImgPipeline,
            base,
            f"refine.model {model!r}",
            controlnet=net,
            **extra,
            **kw,
        )

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if cpu_offload and dev.type == "cuda":
        pipe.enable_model_cpu_offload(device=dev)
    else:
        pipe.to(dev)
    return RefinePipeline(pipe, family, list(controlnets), dev, dtype)


def _load(cls: Any, folder: str | os.PathLike, what: str, **kw: Any) -> Any:
    """``cls.from_pretrained(folder, **kw)``; a folder that does not load (a config that is
    not JSON, a missing scheduler or UNet, cut-short weights, shapes that do not match, the
    wrong kind of model, a component that asks for custom code) is one UserError."""
    fix = (
        "give a standard diffusers folder with safetensors weights (re-download it with "
        "`destruct models pull`, or re-save it with save_pretrained(..., safe_serialization=True))"
    )
    try:
        loaded = cls.from_pretrained(folder, **kw)
    except (OSError, ValueError, RuntimeError, NotImplementedError, KeyError) as e:
        why = first_line(e)
        if "custom code" in str(e):  # diffusers goes on to advise allowing it: not here
            why = "it names code outside diffusers to run, which destruct never runs"
        raise UserError(
            f"{what}: {folder} does not load as a {cls.__name__} ({why[:300]}); {fix}"
        ) from None
    # weights of another kind of model load without error, leaving the missing ones unallocated
    import torch

    parts = [loaded] if isinstance(loaded, torch.nn.Module) else list(loaded.components.values())
    modules = [m for m in parts if isinstance(m, torch.nn.Module)]
    if any(p.is_meta for m in modules for p in m.parameters()):
        raise UserError(
            f"{what}: {folder} does not load as a {cls.__name__} (weights it needs are missing: "
            f"another kind of model?); {fix}"
        )
    return loaded


#: SDXL's own VAE overflows in float16; this finetune does not (else the VAE runs in float32).
SDXL_FP16_VAE = "madebyollin/sdxl-vae-fp16-fix"


def _sdxl_fp16_vae(dtype: Any, cache_dir: str | os.PathLike | None) -> Path | None:
    """The fp16-safe SDXL VAE's folder when running in float16 and it is in the cache."""
    import torch

    if dtype != torch.float16:
        return None
    try:
        folder = resolve(SDXL_FP16_VAE, cache_dir=cache_dir)
    except MissingWeights:
        return None
    check_safetensors(folder)
    return folder


def _to_tensor(image: np.ndarray, device: Any, dtype: Any = None) -> Any:
    """(h, w, c) float array in 0..1 -> (1, c, h, w) tensor."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    return t.to(device=device, dtype=dtype or torch.float32)


@dataclass
class RefineOutput:
    """One refined frame: ``image`` (h, w, 3) float32 in 0..1 and its final ``latents``
    (1, c, h/s, w/s), which fusion warps into the next frame."""

    image: np.ndarray
    latents: Any


class RefinePipeline:
    """A loaded diffusers pipeline plus what refine needs around it: deterministic VAE
    encoding, the start timestep, and one call per frame with given noise."""

    def __init__(
        self, pipe: Any, family: Family, controls: list[ControlSpec], device: Any, dtype: Any
    ):
        self.pipe = pipe
        self.family = family
        self.controls = controls
        self.device = device
        self.dtype = dtype

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.vae.config.latent_channels)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, h, w) of the latents of a ``height`` x ``width`` frame."""
        s = self.vae_scale_factor
        if height % s or width % s:
            raise UserError(
                f"refine needs camera.resolution to be a multiple of {s} (the VAE's downscale), "
                f"got {width}x{height}"
            )
        return self.latent_channels, height // s, width // s

    def timesteps(self, steps: int, strength: float) -> list[int]:
        """The timesteps img2img runs for ``steps`` and ``strength`` (same rule as diffusers)."""
        sched = self.pipe.scheduler
        sched.set_timesteps(steps, device="cpu")
        init = min(int(steps * strength), steps)
        start = max(steps - init, 0)
        # at as many steps as the scheduler has training timesteps, its offset (steps_offset)
        # puts the first one past the end of its noise table
        last = int(sched.config.num_train_timesteps)
        ts = [int(t) for t in sched.timesteps[start * sched.order :] if int(t) < last]
        if not ts:
            raise UserError(
                f"refine.strength {strength} with {steps} steps leaves no denoising step; raise "
                "refine.strength or refine.steps (strength x steps must reach 1)"
            )
        return ts

    def encode(self, image: np.ndarray) -> Any:
        """VAE latents (1, c, h/s, w/s) of an (h, w, 3) image in 0..1: the mean of the latent
        distribution (no sampling), scaled as the UNet expects."""
        with self._vae() as (vae, dtype):
            z = vae.encode(_to_tensor(image * 2.0 - 1.0, self.device, dtype)).latent_dist.mean
            mean, std = self._latent_stats(z)
            return ((z - mean) * vae.config.scaling_factor / std).to(self.dtype)

    @contextlib.contextmanager
    def _vae(self) -> Iterator[tuple[Any, Any]]:
        """The VAE and the dtype to run it in, without gradients; VAEs that overflow in fp16
        (``force_upcast``, SDXL's) run in float32 for the duration."""
        import torch

        vae = self.pipe.vae
        upcast = bool(getattr(vae.config, "force_upcast", False)) and self.dtype == torch.float16
        with torch.no_grad():
            if upcast:
                vae.to(torch.float32)
            try:
                yield vae, vae.dtype
            finally:
                if upcast:
                    vae.to(self.dtype)

    def _latent_stats(self, z: Any) -> tuple[Any, Any]:
        """Per-channel latent mean and std of VAEs that declare them (else 0 and 1)."""
        import torch

        cfg = self.pipe.vae.config
        if getattr(cfg, "latents_mean", None) is None or getattr(cfg, "latents_std", None) is None:
            return 0.0, 1.0
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        return mean, std

    def noised(self, clean: Any, noise: Any, timestep: int) -> Any:
        """``scheduler.add_noise(clean, noise, t)``: img2img's starting latents."""
        import torch

        t = torch.tensor([timestep], dtype=torch.long, device=clean.device)
        return self.pipe.scheduler.add_noise(clean, noise.to(clean.device, clean.dtype), t)

    def __call__(
        self,
        beauty: np.ndarray,
        controls: Sequence[np.ndarray],
        noise: Any,
        *,
        prompt: str,
        negative_prompt: str = "",
        steps: int = 20,
        strength: float = 0.6,
        guidance: float = 7.0,
        on_step: Callable[[int, list[int], Any], Any] | None = None,
    ) -> RefineOutput:
        """Refine one frame. ``beauty`` (h, w, 3) and each control (h, w, 3, one per
        ``self.controls``) are float arrays in 0..1; ``noise`` is (1, c, h/s, w/s). ``on_step(i,
        timesteps, latents) -> latents`` runs after denoising step ``i`` (fusion uses it).
        Returns the image ((h, w, 3) float32 in 0..1) and the final latents."""
        import torch

        if len(controls) != len(self.controls):
            raise ValueError(f"{len(self.controls)} control images expected, got {len(controls)}")
        h, w = beauty.shape[:2]
        c, lh, lw = self.latent_shape(h, w)
        if tuple(noise.shape) != (1, c, lh, lw):
            raise ValueError(f"noise must be (1, {c}, {lh}, {lw}), got {tuple(noise.shape)}")
        ts = self.timesteps(steps, strength)
        latents = self.noised(self.encode(beauty), noise.to(self.device), ts[0])
        ctrl = [_to_tensor(im, self.device) for im in controls]
        kwargs: dict[str, Any] = {}
        if on_step is not None:

            def callback(pipe: Any, i: int, t: Any, tensors: dict) -> dict:
                return {"latents": on_step(i, ts, tensors["latents"])}

            kwargs["callback_on_step_end"] = callback
        if self.family is Family.SD15:
            kwargs["controlnet_conditioning_scale"] = [float(s.scale) for s in self.controls]
        else:
            kwargs["control_mode"] = [UNION_MODES[ControlKind(s.kind)] for s in self.controls]
            kwargs["controlnet_conditioning_scale"] = float(self.controls[0].scale)
            kwargs["original_size"] = kwargs["target_size"] = (h, w)
        with torch.no_grad():
            out = self.pipe(
                prompt=prompt,
                negative_prompt=negative_prompt or None,
                image=_to_tensor(beauty, self.device),
                control_image=ctrl,
                height=h,
                width=w,
                strength=strength,
                num_inference_steps=steps,
                guidance_scale=guidance,
                latents=latents,
                eta=0.0,
                output_type="latent",
                **kwargs,
            )
        latents = out.images
        return RefineOutput(self.decode(latents), latents)

    def decode(self, latents: Any) -> np.ndarray:
        """(h, w, 3) float32 image in 0..1 from UNet-scaled latents (inverse of :meth:`encode`)."""
        with self._vae() as (vae, dtype):
            z = latents.to(dtype)
            mean, std = self._latent_stats(z)
            x = vae.decode(z * std / vae.config.scaling_factor + mean, return_dict=False)[0]
        x = (x[0].float() / 2 + 0.5).clamp(0, 1)
        return x.permute(1, 2, 0).cpu().numpy().astype(np.float32)
