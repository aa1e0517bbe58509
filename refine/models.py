"""Model weights: the recommended sets, ``destruct models pull|list``, and local resolution.

Weights are only ever read from a local folder or the local Hugging Face cache; nothing here
downloads except :func:`pull`, which a user runs on a machine with internet. Only configs and
``.safetensors`` are fetched; pickled formats (``.bin``, ``.ckpt``, ``.pt``, ``.pth``) are
refused when found, with the way to convert them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from destruct.errors import UserError, first_line

#: Pickle-based weight files that torch would have to unpickle to read: never loaded.
PICKLED_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")

#: Files ``pull`` fetches: configs, tokenizer files and the full-precision safetensors of the
#: components refine loads; not a repo's root-level single-file checkpoints, fp16/EMA variants
#: or the safety checker (several GB each and never loaded).
_PIPELINE_PATTERNS = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer*/*.json",
    "tokenizer*/*.txt",
    "text_encoder*/config.json",
    "text_encoder*/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
_SINGLE_MODEL_PATTERNS = ["config.json", "diffusion_pytorch_model.safetensors"]


@dataclass(frozen=True)
class ModelSpec:
    """One recommended model repo."""

    family: str  # "sd15" | "sdxl"
    role: str  # "base" | "controlnet" | "vae"
    kind: str | None  # control kind for a ControlNet: depth | normal | seg | union
    repo: str
    allow_patterns: tuple[str, ...]


RECOMMENDED: dict[str, list[ModelSpec]] = {
    "sd15": [
        ModelSpec(
            "sd15",
            "base",
            None,
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            tuple(_PIPELINE_PATTERNS),
        ),
        ModelSpec(
            "sd15",
            "controlnet",
            "depth",
            "lllyasviel/control_v11f1p_sd15_depth",
            tuple(_SINGLE_MODEL_PATTERNS),
        ),
        ModelSpec(
            "sd15",
            "controlnet",
            "normal",
            "lllyasviel/control_v11p_sd15_normalbae",
            tuple(_SINGLE_MODEL_PATTERNS),
        ),
        ModelSpec(
            "sd15",
            "controlnet",
            "seg",
            "lllyasviel/control_v11p_sd15_seg",
            tuple(_SINGLE_MODEL_PATTERNS),
        ),
    ],
    "sdxl": [
        ModelSpec(
            "sdxl",
            "base",
            None,
            "stabilityai/stable-diffusion-xl-base-1.0",
            tuple(_PIPELINE_PATTERNS),
        ),
        ModelSpec(
            "sdxl",
            "controlnet",
            "union",
            "xinsir/controlnet-union-sdxl-1.0",
            tuple(_SINGLE_MODEL_PATTERNS),
        ),
        ModelSpec(
            "sdxl", "vae", None, "madebyollin/sdxl-vae-fp16-fix", tuple(_SINGLE_MODEL_PATTERNS)
        ),
    ],
}


class MissingWeights(Exception):
    """Weights not found locally; ``command`` is the exact command that fetches them."""

    def __init__(self, name: str, command: str):
        super().__init__(
            f"{name} is not a local folder nor in the local Hugging Face cache; run: {command}"
        )
        self.name = name
        self.command = command


def pull_command(name: str) -> str:
    """The command that fetches ``name``: a family of the recommended set or a repo id."""
    family = family_of_repo(name)
    return f"destruct models pull {family or name}"


def family_of_repo(repo: str) -> str | None:
    """``"sd15"``/``"sdxl"`` when ``repo`` is in a recommended set, else None."""
    for family, specs in RECOMMENDED.items():
        if repo == family or any(s.repo == repo for s in specs):
            return family
    return None


def _hub_cache(cache_dir: str | os.PathLike | None) -> str | None:
    return None if cache_dir is None else str(cache_dir)


def pull(name: str, cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Download a recommended family (``"sd15"``, ``"sdxl"``) or one repo id into the Hugging
    Face cache: configs and safetensors only. Returns the local snapshot folders."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    if name in RECOMMENDED:
        specs = RECOMMENDED[name]
    elif "/" in name and not Path(name).exists():
        specs = [ModelSpec("", "", None, name, tuple(_PIPELINE_PATTERNS + _SINGLE_MODEL_PATTERNS))]
    else:
        raise UserError(
            f"models pull: {name!r} is neither a recommended set ({', '.join(RECOMMENDED)}) "
            "nor a Hugging Face repo id (org/name)"
        )
    paths = []
    for spec in specs:
        try:
            path = snapshot_download(
                spec.repo,
                allow_patterns=list(spec.allow_patterns),
                ignore_patterns=["*" + s for s in PICKLED_SUFFIXES],
                cache_dir=_hub_cache(cache_dir),
            )
        except RepositoryNotFoundError:
            raise UserError(
                f"models pull: the Hugging Face Hub has no repo {spec.repo!r} (or it needs a "
                "login: hf auth login)"
            ) from None
        except OSError as e:  # no network (LocalEntryNotFoundError), HTTP errors, a full disk
            why = first_line(e)
            raise UserError(
                f"models pull: cannot download {spec.repo} ({why}); run it where huggingface.co "
                "(or HF_ENDPOINT) is reachable, or copy the model folder here and give its path "
                "in refine.model"
            ) from None
        paths.append(Path(path))
    return paths


def list_models(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """The recommended models and whether each is in the local cache: one dict per model with
    ``family, role, kind, repo, present, path, bytes``."""
    rows = []
    for specs in RECOMMENDED.values():
        for s in specs:
            try:
                path = resolve(s.repo, cache_dir=cache_dir)
            except MissingWeights:
                path = None
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path else 0
            rows.append(
                {
                    "family": s.family,
                    "role": s.role,
                    "kind": s.kind,
                    "repo": s.repo,
                    "present": path is not None,
                    "path": str(path) if path else None,
                    "bytes": size,
                }
            )
    return rows


def resolve(name: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A model folder from a local path or a repo id in the local Hugging Face cache (no
    network). Raises :class:`MissingWeights` with the command to fetch it, or UserError for a
    path that is not a usable model folder (a pickled file, a missing folder)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    p = Path(name).expanduser()
    if p.suffix.lower() in PICKLED_SUFFIXES:
        raise UserError(_pickled_message(p))
    if p.is_file():
        raise UserError(
            f"refine model {p} is a single file; destruct loads a diffusers model folder "
            "(model_index.json or config.json + .safetensors); convert it with diffusers' "
            "from_single_file(...).save_pretrained(folder, safe_serialization=True)"
        )
    if p.is_dir():
        return p
    name = str(name)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_like_path:
        raise UserError(
            f"refine model folder {name} does not exist (give a folder or an org/name repo id)"
        )
    try:
        return Path(snapshot_download(name, local_files_only=True, cache_dir=_hub_cache(cache_dir)))
    except LocalEntryNotFoundError:
        raise MissingWeights(name, pull_command(name)) from None


def check_safetensors(folder: str | os.PathLike) -> None:
    """Refuse a model folder whose weights are pickled (.bin/.ckpt/...) instead of safetensors."""
    folder = Path(folder)
    weights = [f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in PICKLED_SUFFIXES]
    for f in weights:
        if not any(f.parent.glob("*.safetensors")):
            raise UserError(_pickled_message(f))


def _pickled_message(path: Path) -> str:
    return (
        f"{path}: pickled weights ({path.suffix}) are refused because loading them can run code; "
        "convert them to safetensors on a trusted machine (diffusers: "
        "Model.from_pretrained(folder, use_safetensors=False).save_pretrained(folder, "
        "safe_serialization=True); single files: the Hugging Face 'convert to safetensors' tool) "
        "or pull the safetensors release with `destruct models pull`"
    )
