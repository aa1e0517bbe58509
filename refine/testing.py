"""Tiny random models and synthetic passes for tests and benchmarks (no downloads).

The models follow the shapes of diffusers' own dummy components: a 2-block UNet and ControlNet
with 4-8 channels, a 2-block VAE (``vae_scale_factor`` 2, so 64x64 images give 32x32 latents),
a 2-layer CLIP text encoder and a byte-level CLIP tokenizer built from a vocabulary written here
(every byte as a token, no merges; ``model_max_length`` 77 like real CLIP). They are saved with
``save_pretrained`` in the real layouts (a diffusers pipeline folder for the base model, one
folder per ControlNet) so the tests go through the real loading code.

ControlNet output layers (the zero convolutions) are zero in a fresh model, so a control image
would have no effect; :func:`tiny_controlnet` re-initialises them.

:func:`synthetic_passes` makes render passes with exact, known motion: a textured square
sliding over a textured static background, in the channel layout of ``destruct.render.exr``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Cross-attention width of the tiny text encoder, UNet and ControlNets.
TEXT_DIM = 32


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2 / CLIP convention)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def tiny_tokenizer():
    """A CLIP tokenizer over single bytes (no merges), model_max_length 77, built offline."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _byte_chars():
        vocab[c] = len(vocab)
    for c in _byte_chars():
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
    )
    return CLIPTextModel(config)


_BLOCKS = {
    "block_out_channels": (4, 8),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "cross_attention_dim": TEXT_DIM,
    "norm_num_groups": 1,
    "attention_head_dim": 2,
}


def tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **_BLOCKS,
    )


def tiny_controlnet(seed: int):
    """A tiny ControlNet whose zero-initialised output convolutions are re-initialised."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(in_channels=4, conditioning_embedding_out_channels=(8, 8), **_BLOCKS)
    _reinit_zero_convs(net)
    return net


def _reinit_zero_convs(net) -> None:
    """Give a fresh ControlNet's zero-initialised output convolutions random weights."""
    import torch

    with torch.no_grad():
        outs = [*net.controlnet_down_blocks, net.controlnet_mid_block]
        outs.append(net.controlnet_cond_embedding.conv_out)
        for conv in outs:
            torch.nn.init.normal_(conv.weight, std=0.5)
            torch.nn.init.normal_(conv.bias, std=0.1)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    )


def save_tiny_sd15(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny SD 1.5-shaped base model (a ``StableDiffusionPipeline`` folder)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=tiny_unet(),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_controlnet(folder: str | Path, *, seed: int = 1) -> Path:
    folder = Path(folder)
    tiny_controlnet(seed).save_pretrained(folder, safe_serialization=True)
    return folder


#: A tiny SDXL-shaped UNet / ControlNet-Union: two text encoders (32 + 32 = 64 wide), the
#: "text_time" added condition (6 size numbers x 8 + the 32-wide pooled text embedding = 80).
_XL_BLOCKS = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 1),
    "projection_class_embeddings_input_dim": 80,
    "cross_attention_dim": 2 * TEXT_DIM,
    "norm_num_groups": 1,
}


def save_tiny_sdxl(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny SDXL-shaped base model (a ``StableDiffusionXLPipeline`` folder)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **_XL_BLOCKS,
    )
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            **{**tiny_text_encoder(len(tok)).config.to_dict(), "projection_dim": TEXT_DIM}
        )
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tok)),
        text_encoder_2=te2,
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
    )
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_union(folder: str | Path, *, seed: int = 2) -> Path:
    """Save a tiny ControlNet-Union (SDXL) with its zero convolutions re-initialised."""
    import torch
    from diffusers import ControlNetUnionModel

    torch.manual_seed(seed)
    net = ControlNetUnionModel(
        in_channels=4,
        conditioning_embedding_out_channels=(8, 8),
        num_trans_channel=8,
        num_trans_head=2,
        num_proj_channel=8,
        **_XL_BLOCKS,
    )
    _reinit_zero_convs(net)
    folder = Path(folder)
    net.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_set(root: str | Path, kinds: tuple[str, ...] = ("depth", "normal")) -> dict:
    """A base model and one ControlNet per kind under ``root``: ``{"model": path, "controlnets": [...]}``
    in the shape of the shot's ``[refine]`` table."""
    root = Path(root)
    base = save_tiny_sd15(root / "base")
    nets = [
        {"kind": k, "model": str(save_tiny_controlnet(root / f"cn_{k}", seed=10 + i)), "scale": 1.0}
        for i, k in enumerate(kinds)
    ]
    return {"model": str(base), "controlnets": nets}


def install_in_hub_cache(
    folder: str | Path, cache: str | Path, repo_id: str, revision: str = "0" * 40
) -> Path:
    """Copy a saved model into a Hugging Face cache layout (``models--org--name/snapshots/<rev>``
    plus ``refs/main``), as ``snapshot_download`` leaves it. Returns the snapshot folder."""
    import shutil

    repo_dir = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / revision
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snap


# ---------------------------------------------------------------------------------------------
# synthetic passes


def _texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """A smooth-ish random colour texture (h, w, 3) in 0..1: random cells upsampled bilinearly."""
    from scipy.ndimage import zoom

    coarse = rng.random((h // cell + 2, w // cell + 2, 3))
    tex = zoom(coarse, (cell, cell, 1), order=1)[:h, :w]
    return tex.astype(np.float32)


def synthetic_passes(
    n_frames: int,
    size: int = 64,
    *,
    square: int = 24,
    velocity: tuple[float, float] = (2.0, 1.0),
    start: tuple[float, float] = (8.0, 12.0),
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Render passes of a textured square moving at a constant ``velocity`` (pixels/frame, x, y)
    over a static textured background, as the dict ``destruct.render.exr.read_exr`` returns:
    ``R,G,B,A`` (beauty, scene-linear), ``depth.Z``, ``N.X..Z``, ``motion.X/Y``, ``back.X/Y``,
    ``occlusion.Y``, ``id``. The square's texture moves with it (sampled bilinearly at sub-pixel
    positions), so the motion vectors are exact: I_{t+1}(p + motion_t(p)) = I_t(p).

    Background pixels (alpha 1, a far wall) have zero motion; background pixels the square
    covers in the next frame are occluded (``occlusion.Y`` = 1).
    """
    rng = np.random.default_rng(seed)
    bg = _texture(rng, size, size, 8) * 0.6
    tex_size = square + 2
    sq_tex = _texture(rng, tex_size, tex_size, 4) * 0.8 + 0.2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    vx, vy = velocity

    def square_at(t: int):
        x0, y0 = start[0] + vx * t, start[1] + vy * t
        u, v = xs - x0, ys - y0  # texture coordinates of each pixel centre
        inside = (u >= 0) & (u < square) & (v >= 0) & (v < square)
        return u, v, inside

    def sample_tex(u, v):
        from scipy.ndimage import map_coordinates

        out = np.empty(u.shape + (3,), np.float32)
        for c in range(3):
            out[..., c] = map_coordinates(
                sq_tex[..., c], [v + 0.5, u + 0.5], order=1, mode="nearest"
            )
        return out

    frames = []
    for t in range(n_frames):
        u, v, inside = square_at(t)
        _, _, inside_next = square_at(t + 1)
        rgb = np.where(inside[..., None], sample_tex(u, v), bg)
        motion = np.zeros((size, size, 2), np.float32)
        motion[inside] = (vx, vy)
        back = np.zeros((size, size, 2), np.float32)
        back[inside] = (-vx, -vy)
        # the square's own points leave the image; background points get covered by the square
        nx, ny = xs + motion[..., 0], ys + motion[..., 1]
        off = (nx < 0) | (nx >= size) | (ny < 0) | (ny >= size)
        occl = (off | (~inside & inside_next)).astype(np.float32)
        depth = np.where(inside, 5.0, 20.0).astype(np.float32)
        normal = np.zeros((size, size, 3), np.float32)
        normal[..., 2] = 1.0
        frames.append(
            {
                "R": rgb[..., 0],
                "G": rgb[..., 1],
                "B": rgb[..., 2],
                "A": np.ones((size, size), np.float32),
                "depth.Z": depth,
                "N.X": normal[..., 0],
                "N.Y": normal[..., 1],
                "N.Z": normal[..., 2],
                "motion.X": motion[..., 0],
                "motion.Y": motion[..., 1],
                "back.X": back[..., 0],
                "back.Y": back[..., 1],
                "occlusion.Y": occl,
                "id": inside.astype(np.uint32),
            }
        )
    return frames


def write_model_index_only(folder: str | Path, class_name: str) -> Path:
    """A folder holding just ``model_index.json`` with ``_class_name`` (family detection tests)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


def synthetic_frames(
    n_frames: int,
    size: int = 64,
    *,
    velocity: tuple[float, float] = (2.0, 1.0),
    kinds=("depth", "normal"),
    first: int = 1001,
    seed: int = 0,
):
    """:func:`synthetic_passes` as ``refine.temporal.FrameInput`` (sRGB beauty, float control
    images from ``refine.conditioning``), numbered from ``first``."""
    from destruct.render.passes import linear_to_srgb
    from refine.conditioning import depth_to_control, normal_to_control, seg_to_control
    from refine.temporal import FrameInput

    out = []
    for k, p in enumerate(synthetic_passes(n_frames, size, velocity=velocity, seed=seed)):
        controls = []
        for kind in kinds:
            if kind == "depth":
                controls.append(depth_to_control(p["depth.Z"], 4.0, 25.0))
            elif kind == "normal":
                controls.append(normal_to_control(np.stack([p["N.X"], p["N.Y"], p["N.Z"]], -1)))
            else:
                controls.append(seg_to_control(np.where(p["id"] > 0, 1, 0)))
        out.append(
            FrameInput(
                frame=first + k,
                beauty=linear_to_srgb(np.stack([p["R"], p["G"], p["B"]], -1)),
                controls=controls,
                motion=np.stack([p["motion.X"], p["motion.Y"]], -1),
                back=np.stack([p["back.X"], p["back.Y"]], -1),
                occlusion=p["occlusion.Y"],
            )
        )
    return out
