"""Wedges: the cartesian product of shot variants, each a full run (DESIGN.md section 5, issue 11).

``destruct wedge SHOT --set fracture.pieces=400,800 --set charges.0.impulse=1e4,2e4`` writes one
run directory per variant under the wedge folder, runs them one after another or as Ray tasks,
then a labelled ``contact_sheet.png`` (the middle frame of each variant) and an index in JSON
and Markdown.
"""

from __future__ import annotations

import copy
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from destruct.errors import UserError
from destruct.io import atomic_write_bytes, save_json, save_png
from destruct.shot import Shot, shot_from_dict, tomllib

INDEX_FORMAT = "destruct.wedge/1"


@dataclass
class Variant:
    name: str
    values: dict[str, Any]
    shot: Shot


def parse_set(text: str) -> tuple[str, list[Any]]:
    """``"charges.0.impulse=1e4,2e4"`` -> ``("charges.0.impulse", [10000.0, 20000.0])``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise UserError(f"--set {text!r}: use key=v1,v2 (e.g. fracture.pieces=400,800)")
    return key, [_value(v.strip(), key) for v in _split(raw)]


def _split(raw: str) -> list[str]:
    """Split on commas outside brackets, so ``camera.position=[1,2,3],[4,5,6]`` works."""
    out, depth, cur = [], 0, ""
    for ch in raw:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def _value(text: str, key: str) -> Any:
    """A TOML value (number, bool, array, quoted string); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text.replace("_", "").replace("-", "").isalnum():
            return text
        raise UserError(
            f'--set {key}: cannot read value {text!r}; use TOML syntax, e.g. 1e4, true, "name"'
        ) from None


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (``charges.0.impulse``) in the raw shot dictionary."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(
                    f"--set {key}: {'.'.join(parts[:i]) or 'shot'} has {len(node)} entries; index {part!r} is not one of them"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise UserError(f"--set {key}: {'.'.join(parts[:i])} is a value, not a table")


def variants(shot_path: Path, sets: list[str]) -> list[Variant]:
    """Validated shots of the cartesian product of the ``--set`` values."""
    if not sets:
        raise UserError("wedge needs at least one --set key=v1,v2")
    raw = tomllib.loads(Path(shot_path).read_text())
    base_name = raw.get("shot", {}).get("name", "shot")
    axes = [parse_set(s) for s in sets]
    keys = [k for k, _ in axes]
    for k in keys:
        if keys.count(k) > 1:
            raise UserError(f"--set {k} is given twice; list every value in one: --set {k}=a,b,c")
    out = []
    for i, combo in enumerate(itertools.product(*(vals for _, vals in axes))):
        data = copy.deepcopy(raw)
        values = {}
        for (key, _), v in zip(axes, combo):
            _assign(data, key, v)
            values[key] = v
        name = f"{base_name}_w{i:02d}"
        data.setdefault("shot", {})["name"] = name
        data.setdefault("output", {}).pop("dir", None)
        shot = shot_from_dict(
            data, Path(shot_path).resolve().parent, f"{shot_path} (variant {i}: {values})"
        )
        out.append(Variant(name, values, shot))
    return out


def _run_one(shot: Shot, out: str, stages: str | None) -> dict[str, Any]:
    from destruct.pipeline import run

    return run(shot, out, stages, quiet=True).manifest


def run_wedge(
    shot_path: Path,
    sets: list[str],
    *,
    out: Path | None = None,
    stages: str | None = None,
    ray_address: str | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Run every variant; write the contact sheet and the index. Returns the index."""
    from destruct.shot import load_shot

    load_shot(shot_path)  # the base shot itself must be valid
    vs = variants(shot_path, sets)
    root = Path(out) if out else Path("renders") / f"{Path(shot_path).stem}_wedge"
    root.mkdir(parents=True, exist_ok=True)
    say = log or (lambda m: print(m, file=sys.stderr))
    manifests: list[dict[str, Any]]
    if ray_address:
        from destruct.raycluster import connect

        ray = connect(ray_address)
        task = ray.remote(num_cpus=1, max_retries=2)(_run_one)
        refs = [task.remote(v.shot, str((root / v.name).resolve()), stages) for v in vs]
        say(f"wedge: {len(vs)} variants submitted to Ray")
        manifests = ray.get(refs)
    else:
        manifests = []
        for v in vs:
            say(f"wedge: {v.name} {v.values}")
            manifests.append(_run_one(v.shot, str(root / v.name), stages))
    index = {
        "format": INDEX_FORMAT,
        "shot": str(Path(shot_path).resolve()),
        "folder": str(root.resolve()),
        "axes": [parse_set(s)[0] for s in sets],
        "variants": [
            {
                "name": v.name,
                "values": v.values,
                "run_dir": v.name,
                "stages": {
                    k: {"status": e.get("status"), "figures": e.get("figures", {})}
                    for k, e in m.get("stages", {}).items()
                },
            }
            for v, m in zip(vs, manifests)
        ],
    }
    save_json(root / "index.json", index)
    atomic_write_bytes(root / "index.md", _markdown(index).encode())
    sheet = contact_sheet(root, vs)
    if sheet is not None:
        index["contact_sheet"] = sheet.name
        save_json(root / "index.json", index)
    return index


def _markdown(index: dict[str, Any]) -> str:
    axes = index["axes"]
    lines = [
        f"# Wedge of {index['shot']}",
        "",
        "| variant | " + " | ".join(axes) + " | stages |",
        "|---" * (len(axes) + 2) + "|",
    ]
    for v in index["variants"]:
        st = ", ".join(f"{k}: {e['status']}" for k, e in v["stages"].items())
        lines.append(
            f"| [{v['name']}]({v['run_dir']}/) | "
            + " | ".join(str(v["values"][a]) for a in axes)
            + f" | {st} |"
        )
    return "\n".join(lines) + "\n"


def _middle_frame(run_dir: Path, shot: Shot) -> np.ndarray | None:
    """The variant's middle frame: refined if present, else the coarse beauty pass."""
    from destruct.io import read_image

    frames = shot.frame_numbers()
    f = frames[len(frames) // 2]
    for p in (
        run_dir / "refine" / f"{shot.shot.name}.{f:04d}.png",
        run_dir / "passes" / "beauty" / f"{shot.shot.name}.{f:04d}.png",
    ):
        if p.is_file():
            return read_image(
                p, f"re-run the variant: destruct run {run_dir / 'shot.toml'} --force"
            )[..., :3]
    return None


def contact_sheet(root: Path, vs: list[Variant], tile_width: int = 480) -> Path | None:
    """One labelled tile per variant, in a grid; None when no variant has a rendered frame."""
    from PIL import Image, ImageDraw

    tiles = []
    for v in vs:
        img = _middle_frame(root / v.name, v.shot)
        h = round(tile_width * v.shot.camera.resolution[1] / v.shot.camera.resolution[0])
        tile = Image.new("RGB", (tile_width, h + 22), (24, 24, 24))
        if img is not None:
            tile.paste(Image.fromarray(img).resize((tile_width, h)), (0, 22))
        label = v.name + "  " + "  ".join(f"{k}={val}" for k, val in v.values.items())
        ImageDraw.Draw(tile).text(
            (6, 5), label if img is not None else label + "  (no frame)", fill=(235, 235, 235)
        )
        tiles.append((tile, img is not None))
    if not any(ok for _, ok in tiles):
        return None
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    tw, th = tiles[0][0].size
    sheet = Image.new("RGB", (cols * tw, rows * th), (0, 0, 0))
    for i, (t, _) in enumerate(tiles):
        sheet.paste(t, ((i % cols) * tw, (i // cols) * th))
    return save_png(root / "contact_sheet.png", np.asarray(sheet))
