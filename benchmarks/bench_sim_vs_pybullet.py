"""sim_vs_pybullet: the same fractured building collapsing in destruct and in PyBullet.

Both get the pieces of the prepare stage as convex hulls with the same masses, friction and
gravity, and the same trigger: the ground-floor columns are removed and there are no bonds
(PyBullet has no glue). PyBullet steps at 240 Hz; destruct at 24 fps with its default substeps.
Reported per piece count: wall time per simulated second for each and the speed-up, and the
agreement of the physics: final mean height (ratio to PyBullet's), share of pieces at rest
(difference in points) and the worst penetration (the same geometric measure applied to both
engines' final poses).

A collapse is chaotic: a mass changed by one part in 1e9 gives another pile, and the deepest
overlap of 4000 pieces at one instant ranged 2.2-10.9 cm over six such runs before contacts
scaled their masses (sim_kernels.solve.MASS_SCALE_PER_M), 0.25-0.75 cm since: the single
figure of one run says little. So destruct also runs PERTURBED more times with one piece's
mass scaled by 1 + 1e-9 (timing only the first run); ``penetration_destruct_worst_m`` is the
worst over all its runs, and the penetration criterion of ``agrees`` is judged on it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

CACHE = Path(__file__).resolve().parent / ".cache"
FRICTION = 0.6
REST_SPEED = 0.1  # m/s: a piece slower than this counts as at rest
PERTURBED = 2  # extra destruct runs with one mass scaled by 1 + 1e-9 (see the module docstring)
FPS, SUBSTEPS = 24, 8
PYBULLET_HZ = 240


def building(pieces: int) -> dict[str, list | np.ndarray]:
    """Hull points (world, per piece a list of hulls), masses and kinds of the fractured default
    building at ``pieces``, cached under benchmarks/.cache (npz, no pickles)."""
    path = CACHE / f"building_{pieces}.npz"
    if not path.is_file():
        from destruct.fracture import prepare
        from destruct.io import save_npz
        from destruct.shot import shot_from_dict

        scene = prepare(shot_from_dict({"fracture": {"pieces": pieces}}))
        hulls = [h for p in scene.pieces for h in p.hulls]
        owner = np.concatenate([np.full(len(p.hulls), i) for i, p in enumerate(scene.pieces)])
        save_npz(
            path,
            "destruct.benchbuilding/1",
            hull_points=np.concatenate(hulls),
            hull_offset=np.cumsum([0] + [len(h) for h in hulls]),
            hull_owner=owner,
            mass=np.array([p.mass for p in scene.pieces]),
            com=np.array([p.com for p in scene.pieces]),
            low_column=np.array([p.kind == "column" and p.com[1] < 3.5 for p in scene.pieces]),
        )
    from destruct.io import load_npz

    d = load_npz(path, "destruct.benchbuilding/1")
    off = d["hull_offset"]
    hulls = [d["hull_points"][off[i] : off[i + 1]] for i in range(len(off) - 1)]
    keep = np.flatnonzero(~d["low_column"])
    per_piece = [
        [h for h, o in zip(hulls, d["hull_owner"]) if o == i] for i in range(len(d["mass"]))
    ]
    return {"hulls": [per_piece[i] for i in keep], "mass": d["mass"][keep], "com": d["com"][keep]}


def _centre(hulls: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Volume-weighted centroid and total volume of a compound of hulls."""
    from destruct.world import hull_data

    data = [hull_data(h) for h in hulls]
    vol = sum(d["volume"] for d in data)
    return sum(d["centroid"] * d["volume"] for d in data) / vol, vol


def run_destruct(b: dict, seconds: float, perturb: int = -1) -> dict:
    """The collapse in destruct; ``perturb`` >= 0 scales that piece's mass by 1 + 1e-9."""
    from destruct.world import World

    w = World(gravity=(0, -9.81, 0), ground=True, ground_friction=FRICTION, backend="cpu")
    locals_ = []
    for k, (hulls, mass) in enumerate(zip(b["hulls"], b["mass"])):
        c, vol = _centre(hulls)
        local = [h - c for h in hulls]
        locals_.append(local)
        if k == perturb:
            mass = mass * (1 + 1e-9)
        w.add_body(
            local if len(local) > 1 else local[0],
            density=mass / vol,
            position=c,
            friction=FRICTION,
            restitution=0.1,
        )
    w.step(1 / FPS, substeps=SUBSTEPS)  # compile and upload outside the timed part
    frames = round(seconds * FPS)
    t0 = time.perf_counter()
    for _ in range(frames):
        w.step(1 / FPS, substeps=SUBSTEPS)
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "sim_seconds": frames / FPS,
        "pos": w.positions(),
        "rot": w.rotations(),
        "vel": w.velocities(),
        "local": locals_,
    }


def run_pybullet(b: dict, seconds: float) -> dict:
    import pybullet as pb

    cid = pb.connect(pb.DIRECT)
    try:
        pb.setGravity(0, -9.81, 0, physicsClientId=cid)
        pb.setTimeStep(1 / PYBULLET_HZ, physicsClientId=cid)
        plane = pb.createCollisionShape(pb.GEOM_PLANE, planeNormal=[0, 1, 0], physicsClientId=cid)
        ground = pb.createMultiBody(0, plane, physicsClientId=cid)
        pb.changeDynamics(ground, -1, lateralFriction=FRICTION, physicsClientId=cid)
        ids, locals_ = [], []
        for hulls, mass in zip(b["hulls"], b["mass"]):
            c, _ = _centre(hulls)
            local = [h - c for h in hulls]
            locals_.append(local)
            body = _pybullet_body(pb, cid, local, float(mass), c)
            for link in range(-1, len(local) - 1):
                pb.changeDynamics(
                    body, link, lateralFriction=FRICTION, restitution=0.1, physicsClientId=cid
                )
            ids.append(body)
        steps = round(seconds * PYBULLET_HZ)
        t0 = time.perf_counter()
        for _ in range(steps):
            pb.stepSimulation(physicsClientId=cid)
        wall = time.perf_counter() - t0
        pos, rot, vel = [], [], []
        for body in ids:
            p, q = pb.getBasePositionAndOrientation(body, physicsClientId=cid)
            v, _ = pb.getBaseVelocity(body, physicsClientId=cid)
            pos.append(p)
            rot.append((q[3], q[0], q[1], q[2]))  # xyzw -> wxyz
            vel.append(v)
        # PyBullet's base frame is the inertial frame it computed; our local frames are centred on
        # the hull centroid, which createMultiBody keeps as the base origin (no inertial offset).
        return {
            "wall": wall,
            "sim_seconds": steps / PYBULLET_HZ,
            "pos": np.array(pos),
            "rot": np.array(rot),
            "vel": np.array(vel),
            "local": locals_,
        }
    finally:
        pb.disconnect(cid)


def _pybullet_body(pb, cid, local: list[np.ndarray], mass: float, centre: np.ndarray) -> int:
    """One convex mesh, or for a compound the first hull as the base and the others as links on
    fixed joints (PyBullet has no compound of convex meshes), the mass split by hull volume."""
    from destruct.world import hull_data

    shapes = [
        pb.createCollisionShape(pb.GEOM_MESH, vertices=h.tolist(), physicsClientId=cid)
        for h in local
    ]
    vols = np.array([hull_data(h)["volume"] for h in local])
    masses = (mass * vols / vols.sum()).tolist()
    n = len(local) - 1
    return pb.createMultiBody(
        masses[0],
        shapes[0],
        basePosition=centre.tolist(),
        linkMasses=masses[1:],
        linkCollisionShapeIndices=shapes[1:],
        linkVisualShapeIndices=[-1] * n,
        linkPositions=[[0, 0, 0]] * n,
        linkOrientations=[[0, 0, 0, 1]] * n,
        linkInertialFramePositions=[[0, 0, 0]] * n,
        linkInertialFrameOrientations=[[0, 0, 0, 1]] * n,
        linkParentIndices=[0] * n,
        linkJointTypes=[pb.JOINT_FIXED] * n,
        linkJointAxis=[[0, 0, 1]] * n,
        physicsClientId=cid,
    )


def worst_penetration(result: dict) -> float:
    """Deepest vertex of any hull inside the ground or inside another piece's hull [m]."""
    from destruct.world import hull_data

    rot = Rotation.from_quat(result["rot"][:, [1, 2, 3, 0]])  # scipy wants xyzw
    world = [
        [rot[i].apply(h) + result["pos"][i] for h in hulls]
        for i, hulls in enumerate(result["local"])
    ]
    deepest = max(0.0, -min(float(min(h[:, 1].min() for h in hs)) for hs in world))
    radius = np.array(
        [
            max(np.linalg.norm(h - result["pos"][i], axis=1).max() for h in hs)
            for i, hs in enumerate(world)
        ]
    )
    tree = cKDTree(result["pos"])
    for i, j in tree.query_pairs(2 * radius.max()):
        if np.linalg.norm(result["pos"][i] - result["pos"][j]) > radius[i] + radius[j]:
            continue
        for a, b in ((i, j), (j, i)):
            for hb in world[b]:
                pl = hull_data(hb)["planes"]
                for ha in world[a]:
                    depth = (
                        pl[:, 3][None, :] - ha @ pl[:, :3].T
                    )  # (verts, planes) >0 inside that plane
                    inside = depth.min(axis=1)
                    if inside.max() > 0:
                        deepest = max(deepest, float(inside.max()))
    return deepest


def compare(pieces: int, seconds: float) -> dict:
    b = building(pieces)
    d = run_destruct(b, seconds)
    p = run_pybullet(b, seconds)
    rest_d = float(np.mean(np.linalg.norm(d["vel"], axis=1) < REST_SPEED))
    rest_p = float(np.mean(np.linalg.norm(p["vel"], axis=1) < REST_SPEED))
    height_d, height_p = float(d["pos"][:, 1].mean()), float(p["pos"][:, 1].mean())
    rec = {
        "name": "collapse_no_bonds",
        "pieces": len(b["mass"]),
        "fractured_pieces": pieces,
        "simulated_seconds": float(seconds),
        "destruct_s_per_sim_s": d["wall"] / d["sim_seconds"],
        "pybullet_s_per_sim_s": p["wall"] / p["sim_seconds"],
        "speedup": (p["wall"] / p["sim_seconds"]) / (d["wall"] / d["sim_seconds"]),
        "mean_height_destruct": height_d,
        "mean_height_pybullet": height_p,
        "height_ratio": height_d / height_p,
        "at_rest_destruct": rest_d,
        "at_rest_pybullet": rest_p,
        "at_rest_diff_points": 100.0 * abs(rest_d - rest_p),
        "penetration_destruct_m": worst_penetration(d),
        "penetration_pybullet_m": worst_penetration(p),
    }
    rec["penetration_destruct_worst_m"] = max(
        [rec["penetration_destruct_m"]]
        + [
            worst_penetration(run_destruct(b, seconds, perturb=k * len(b["mass"]) // PERTURBED))
            for k in range(PERTURBED)
        ]
    )
    rec["agrees"] = bool(
        abs(rec["height_ratio"] - 1) <= 0.15
        and rec["at_rest_diff_points"] <= 10
        and rec["penetration_destruct_worst_m"] < 0.02
    )
    return rec


def run(quick: bool = False) -> list[dict]:
    sizes = (500,) if quick else (500, 1000, 2000, 4000)
    seconds = 0.5 if quick else 1.0
    return [compare(n, seconds) for n in sizes]


if __name__ == "__main__":
    from benchmarks.runner import main

    main(only="sim_vs_pybullet")
