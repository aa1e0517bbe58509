"""The render stage on a tiny synthetic run: files, EXR layers, Cryptomatte, resume."""

from __future__ import annotations

import numpy as np
import pytest
from _render_synth import box_pieces, sim_frame, write_run

from destruct.render.cryptomatte import crypto_hash, read_manifest
from destruct.render.exr import CHANNELS, CODECS, read_exr, read_exr_header, write_exr


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_exr_round_trip_is_exact(tmp_path, codec):
    """Every codec of ``render.exr_compression`` is lossless and named in the header."""
    import OpenEXR

    rng = np.random.default_rng(0)
    layers = {
        "R": rng.random((24, 32)).astype(np.float16),
        "depth.Z": np.where(rng.random((24, 32)) > 0.5, np.inf, rng.random((24, 32)) * 50).astype(
            np.float32
        ),
        "motion.X": rng.normal(size=(24, 32)).astype(np.float32),
        "id": rng.integers(0, 2**32 - 1, (24, 32), dtype=np.uint32),
    }
    write_exr(tmp_path / "a.exr", layers, compression=codec)
    back = read_exr(tmp_path / "a.exr")
    assert set(back) == set(layers)
    header = read_exr_header(tmp_path / "a.exr")
    assert header["compression"] == getattr(OpenEXR, CODECS[codec])
    for k, v in layers.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)
    chroma = read_exr_header(tmp_path / "a.exr")["chromaticities"]
    np.testing.assert_allclose(
        chroma, (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290), atol=1e-6
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # atomic: no temp left


def test_zstd_on_an_openexr_without_it_names_the_upgrade(tmp_path, monkeypatch):
    import OpenEXR

    from destruct.errors import UserError

    monkeypatch.delattr(OpenEXR, "ZSTD_COMPRESSION")
    with pytest.raises(UserError, match=r"exr_compression = 'zstd' needs .*openexr>=3.5.*zip"):
        write_exr(tmp_path / "a.exr", {"R": np.zeros((2, 2), np.float16)}, compression="zstd")
    assert not list(tmp_path.iterdir())


def test_cryptomatte_hash_known_value_and_no_nan():
    # the id float must be finite and not denormal (exponent nudged off 0 and 255)
    h = crypto_hash("column_03.piece_0012")
    f = np.array([h], np.uint32).view(np.float32)[0]
    assert np.isfinite(f) and (abs(f) > np.finfo(np.float32).tiny)
    import mmh3

    raw = mmh3.hash("column_03.piece_0012", 0, signed=False)
    assert h in (raw, raw ^ (1 << 23))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    from destruct.render import run_render
    from destruct.rundir import RunDir
    from destruct.shot import shot_from_dict
    from destruct.stages import Stage, StageContext

    run = tmp_path_factory.mktemp("run")
    centers = [[x * 1.0, 0.5 + y * 1.0, 0.0] for x in range(3) for y in range(2)]
    pc = box_pieces(centers, [[0.95, 0.95, 0.95]] * 6, interior=[False, True] * 3)
    rubble = {
        "id": np.array([2], np.int32),
        "position": np.array([[1.0, 2.4, 0.6]], np.float32),
        "rotation": np.array([[1, 0, 0, 0]], np.float32),
        "velocity": np.zeros((1, 3), np.float32),
        "radius": np.array([0.2], np.float32),
        "material": np.zeros(1, np.int32),
    }
    frames = {
        f: sim_frame(f, np.array(centers) + [0.05 * k, 0, 0], rubble=rubble)
        for k, f in enumerate(range(1001, 1004))
    }
    write_run(run, pc, frames)
    shot = shot_from_dict(
        {
            "shot": {"name": "syn", "frames": 3, "start_frame": 1001},
            "camera": {
                "position": [1.0, 1.5, 7.0],
                "look_at": [1.0, 1.0, 0.0],
                "resolution": [96, 64],
            },
            "render": {"exr_compression": "zips"},
        }
    )
    ctx = StageContext(shot=shot, run=RunDir(run), stage=Stage.RENDER, frames=[1001, 1002, 1003])
    figures = run_render(ctx)
    return run, pc, ctx, figures


def test_stage_writes_every_pass_and_records_frames(rendered):
    import OpenEXR

    run, _, ctx, figures = rendered
    assert figures["frames_rendered"] == 3 and 0 < figures["near"] < figures["far"]
    for f in (1001, 1002, 1003):
        header = read_exr_header(run / "passes" / f"syn.{f:04d}.exr")
        assert header["compression"] == OpenEXR.ZIPS_COMPRESSION  # the shot's codec
        for p in ("beauty", "depth", "normal", "seg"):
            assert (run / "passes" / p / f"syn.{f:04d}.png").is_file()
    assert ctx.run.stage("render")["frames_done"] == [1001, 1002, 1003]
    from destruct.render import run_render

    assert run_render(ctx)["frames_rendered"] == 0  # resume: nothing left to do


def test_exr_layers_ids_and_manifest(rendered):
    run, pc, _, _ = rendered
    d = read_exr(run / "passes" / "syn.1002.exr")
    for ch in (*CHANNELS, "CryptoObject00.R", "CryptoObject02.A"):
        assert ch in d, ch
    assert (
        d["R"].dtype == np.float16
        and d["depth.Z"].dtype == np.float32
        and d["id"].dtype == np.uint32
    )
    ids = set(np.unique(d["id"]).tolist())
    assert ids == {0, 1, 2, 3, 4, 5, 6, 6 + 1 + 2}  # every piece, the rubble bit, background
    assert np.isinf(d["depth.Z"][d["id"] == 0]).any()  # sky
    manifest = read_manifest(read_exr_header(run / "passes" / "syn.1002.exr"))
    assert set(manifest) >= {str(n) for n in pc["names"]}
    # pixels of piece 3 carry its name's hash in rank 0 with full coverage
    h = np.uint32(int(manifest[str(pc["names"][2])], 16)).view(np.float32)
    m = d["id"] == 3
    np.testing.assert_array_equal(d["CryptoObject00.R"][m], h)
    np.testing.assert_array_equal(d["CryptoObject00.G"][m], 1.0)
    # pieces move +0.05 m in x per frame: motion.X > 0 and back.X < 0 on them
    piece = (d["id"] > 0) & (d["id"] <= 6) & (d["occlusion.Y"] == 0)
    assert np.all(d["motion.X"][piece] > 0) and np.all(d["back.X"][piece] < 0)


def test_pngs_are_controlnet_ready(rendered):
    import imageio.v3 as iio
    from PIL import Image

    run, _, _, _ = rendered
    with Image.open(run / "passes" / "seg" / "syn.1002.png") as png:
        assert png.mode == "P"  # paletted: readers expand it to the palette's RGB
    seg = iio.imread(run / "passes" / "seg" / "syn.1002.png")
    from refine.conditioning import ADE20K_PALETTE

    colours = {tuple(c) for c in seg.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in ADE20K_PALETTE}  # nearest-neighbour: palette colours only
    assert (6, 230, 230) in colours  # sky
    depth = iio.imread(run / "passes" / "depth" / "syn.1002.png")
    assert depth.max() > 200 and depth.min() == 0


def test_manifest_lists_pieces_and_only_the_rubble_in_view():
    from destruct.render.cryptomatte import cryptomatte_channels

    names = ["a.piece_0000", "a.piece_0001", "rubble.000000", "rubble.000001"]
    ids = np.array([[0, 1], [4, 4]], np.uint32)  # piece 2 hidden, rubble 0 absent, rubble 1 present
    _, header = cryptomatte_channels(ids, names, always=2)
    assert set(read_manifest(header)) == {"a.piece_0000", "a.piece_0001", "rubble.000001"}


def test_missing_egl_is_a_user_error_with_the_apt_line(monkeypatch):
    import pyrender

    from destruct.errors import UserError
    from destruct.render.gl import APT_LINE, GLRenderer

    def broken(*a, **k):
        raise RuntimeError("Unable to load EGL library")

    monkeypatch.setattr(pyrender, "OffscreenRenderer", broken)
    with pytest.raises(UserError) as e:
        GLRenderer(64, 48)
    assert APT_LINE in str(e.value) and "apt-get install" in APT_LINE


def test_plate_replaces_sky_and_ground(tmp_path):
    import imageio.v3 as iio

    from destruct.render import run_render
    from destruct.rundir import RunDir
    from destruct.stages import Stage, StageContext

    run = tmp_path / "run"
    pc = box_pieces([[0.0, 0.5, 0.0]], [[1.0, 1.0, 1.0]])
    write_run(run, pc, {1001: sim_frame(1001, [[0.0, 0.5, 0.0]])})
    plates = tmp_path / "plates"
    plates.mkdir()
    iio.imwrite(plates / "bg.1001.png", np.full((48, 64, 3), (200, 60, 30), np.uint8))
    shot_file = tmp_path / "shot.toml"
    shot_file.write_text(
        '[shot]\nname = "pl"\nframes = 1\n[camera]\nposition = [0.0, 1.0, 6.0]\nlook_at = [0.0, 0.5, 0.0]\n'
        'resolution = [64, 48]\n[render]\nplate = "plates/bg.####.png"\n'
    )
    from destruct.shot import load_shot

    shot = load_shot(shot_file)
    run_render(StageContext(shot=shot, run=RunDir(run), stage=Stage.RENDER, frames=[1001]))
    d = read_exr(run / "passes" / "pl.1001.exr")
    bg = d["id"] == 0
    rgb = np.stack([d[c] for c in "RGB"], -1).astype(np.float32)
    from destruct.render.passes import srgb_to_linear

    expect = srgb_to_linear(np.array([200, 60, 30]) / 255.0)
    from scipy.ndimage import binary_dilation

    away = ~binary_dilation(~bg, iterations=2)  # clear of the anti-aliased silhouette
    assert away.sum() > 2000  # no ground, no sky: the plate everywhere else
    np.testing.assert_allclose(rgb[away], np.tile(expect, (away.sum(), 1)), atol=2e-3)
    assert np.all(d["A"][bg] == 0) and np.all(d["A"][~bg] == 1)


def test_plate_of_the_wrong_size_or_missing_is_a_user_error(tmp_path):
    import imageio.v3 as iio

    from destruct.errors import UserError
    from destruct.render import load_plate

    iio.imwrite(tmp_path / "bg.1001.png", np.zeros((40, 64, 3), np.uint8))
    with pytest.raises(UserError, match="64x40"):
        load_plate(str(tmp_path / "bg.####.png"), 1001, 64, 48)
    with pytest.raises(UserError, match="missing"):
        load_plate(str(tmp_path / "bg.####.png"), 1002, 64, 40)
    lin = load_plate(str(tmp_path / "bg.####.png"), 1001, 64, 40)
    assert lin.shape == (40, 64, 3) and lin.dtype == np.float32 and lin.max() == 0
    (tmp_path / "bg.1003.png").write_text("garbage")  # not an image
    with pytest.raises(UserError, match="bg.1003.png is not a readable image.*render.plate"):
        load_plate(str(tmp_path / "bg.####.png"), 1003, 64, 40)


def test_sim_from_another_fracture_or_blown_up_is_a_user_error(tmp_path):
    from destruct.errors import UserError
    from destruct.render import RenderSetup
    from destruct.shot import shot_from_dict

    pc = box_pieces([[0.0, 0.5, 0.0], [2.0, 0.5, 0.0]], [[1.0, 1.0, 1.0]] * 2)
    shot = shot_from_dict({"shot": {"name": "bad", "frames": 1}})
    write_run(tmp_path, pc, {1001: sim_frame(1001, [[0.0, 0.5, 0.0]])})
    with pytest.raises(UserError, match="another fracture"):
        RenderSetup(shot, tmp_path)
    write_run(tmp_path, pc, {1001: sim_frame(1001, [[0.0, np.nan, 0.0], [2.0, 0.5, 0.0]])})
    with pytest.raises(UserError, match="not finite"):
        RenderSetup(shot, tmp_path)
    # a camera that looks away from everything: the user error names the building's centre
    away = shot_from_dict(
        {
            "shot": {"name": "bad", "frames": 1},
            "camera": {"position": [1, 1, 10], "look_at": [1, 1, 40]},
        }
    )
    write_run(tmp_path, pc, {1001: sim_frame(1001, [[0.0, 0.5, 0.0], [2.0, 0.5, 0.0]])})
    with pytest.raises(UserError, match=r"behind the camera.*camera.look_at.*\[1.0, 0.5, 0.0\]"):
        RenderSetup(away, tmp_path)


@pytest.mark.parametrize("offset", [(0.0, 0.0), (60.0, -40.0)])
def test_beauty_shading_is_the_diffuse_sun_and_sky_with_the_box_shadow_on_the_ground(offset):
    """A unit box on the ground under the sun: the lit top face and lit ground show albedo x
    (sky + sun x cos / pi x 0.96^2) through pyrender's gamma 2.2; the ground where the box
    blocks the sun shows albedo x sky only. The shadow map is fitted to the box wherever it
    stands on the 100 m ground square (``offset``: its x, z), and ground beyond the map is
    lit."""
    from destruct.camera import CameraFrame, look_at_rotation
    from destruct.render import gl as G
    from destruct.render.scene import PieceMesh, bodies_from_sim, material_looks

    o = np.array([offset[0], 0.0, offset[1]])
    pc = box_pieces([o + [0.0, 0.5, 0.0]], [[1.0, 1.0, 1.0]])
    looks = material_looks(pc["material_names"])
    pm = PieceMesh(pc, looks)
    mesh = pm.pose(bodies_from_sim(sim_frame(1001, [o + [0.0, 0.5, 0.0]]), 1, 1))
    pos = o + [-4.0, 3.0, -4.0]
    cam = CameraFrame(pos, look_at_rotation(pos, o + [0.0, 0.3, 0.0]), 35.0, 36.0, 160, 120)
    box = (o + [-0.5, 0.0, -0.5], o + [0.5, 1.0, 0.5])
    gl = G.GLRenderer(160, 120, ground_half_size=100.0, shadow_bounds=box)
    try:
        img = gl.render(mesh, cam, 0.05, 200.0).astype(np.float64)
    finally:
        gl.close()
    sun = np.asarray(G.SUN_DIRECTION) / np.linalg.norm(G.SUN_DIRECTION)
    nl = -sun[1]  # both the top face and the ground face +y
    direct = 0.96 * 0.96 / np.pi * G.SUN_INTENSITY * np.asarray(G.SUN_COLOR) * nl
    sky = np.asarray(G.SKY_AMBIENT)

    def pixel(p):
        uv, _ = cam.project(np.array([p], float) + o)
        u, v = np.floor(uv[0]).astype(int)
        return img[v, u, :3]

    def expect(albedo, light):
        return 255.0 * np.clip(np.asarray(albedo) * light, 0, 1) ** (1 / 2.2)

    np.testing.assert_allclose(
        pixel([0.0, 1.0, 0.0]), expect(looks[0].color, sky + direct), atol=2.0
    )
    for lit in ([1.5, 0.0, -1.5], [-1.0, 0.0, 2.0]):  # in and beyond the shadow map
        np.testing.assert_allclose(pixel(lit), expect(G.GROUND_COLOR, sky + direct), atol=2.0)
    # (-0.9, 0, -0.8) + s (0.45, 0.8, 0.4) enters the box at s ~ 0.9: in its shadow
    np.testing.assert_allclose(pixel([-0.9, 0.0, -0.8]), expect(G.GROUND_COLOR, sky), atol=2.0)


def test_colour_only_read_equals_pyrenders_own_read():
    """GLRenderer reads the colour alone (no depth readback); pyrender's own read of the same
    scene gives the same RGBA, byte for byte."""
    from destruct.camera import CameraFrame, look_at_rotation
    from destruct.render import gl as G
    from destruct.render.scene import PieceMesh, bodies_from_sim, material_looks

    pc = box_pieces([[0.0, 0.5, 0.0], [1.2, 0.4, 0.3]], [[1.0, 1.0, 1.0], [0.6, 0.8, 0.5]])
    mesh = PieceMesh(pc, material_looks(pc["material_names"]))
    posed = mesh.pose(bodies_from_sim(sim_frame(1001, [[0.0, 0.5, 0.0], [1.2, 0.4, 0.3]]), 2, 2))
    pos = np.array([-4.0, 3.0, -4.0])
    cam = CameraFrame(pos, look_at_rotation(pos, [0.5, 0.3, 0.0]), 35.0, 36.0, 160, 120)
    gl = G.GLRenderer(
        160, 120, ground_half_size=50.0, shadow_bounds=([-0.5, 0, -0.5], [1.5, 1, 0.6])
    )
    try:
        ours = gl.render(posed, cam, 0.05, 200.0)
        del gl._renderer._renderer._read_main_framebuffer  # pyrender's method again
        stock = gl.render(posed, cam, 0.05, 200.0)
    finally:
        gl.close()
    assert ours.shape == (120, 160, 4) and ours.dtype == np.uint8
    assert len(np.unique(ours[..., 0])) > 10  # pieces, ground, shadow and sky
    np.testing.assert_array_equal(ours, stock)


def test_threaded_stage_writes_what_the_sequential_path_writes(rendered, tmp_path):
    """The stage overlaps GL, passes and writers on threads; frame 1002's files must equal
    those of the plain one-after-the-other path (GL render, all passes, write_frame)."""
    import imageio.v3 as iio

    from destruct.render import RenderSetup, write_frame
    from destruct.render.gl import GLRenderer
    from destruct.render.passes import frame_passes, raster_frame

    run, _, ctx, _ = rendered
    setup = RenderSetup(ctx.shot, run)

    def ras(f):
        bodies, _ = setup.load(f)
        return raster_frame(setup.mesh.pose(bodies), bodies, setup.cameras[f], setup.ground)

    r, nxt, prev = ras(1002), ras(1003), ras(1001)
    cam = setup.cameras[1002]
    gl = GLRenderer(
        cam.width,
        cam.height,
        ground_half_size=setup.ground.half_size,
        ground_center=setup.ground.center,
        shadow_bounds=setup.bounds,
    )
    try:
        rgba = gl.render(r.mesh, cam, 0.05, setup.gl_far)
    finally:
        gl.close()
    p = frame_passes(r, nxt=nxt, prev=(prev.cam, prev.bodies), gl_rgba=rgba, classes=setup.classes)
    passes = list(ctx.shot.render.passes)
    write_frame(
        tmp_path,
        "syn",
        1002,
        p,
        passes,
        exr=True,
        png=True,
        near=setup.near,
        far=setup.far,
        names=setup.names,
        n_pieces=setup.mesh.n_pieces,
    )
    a, b = read_exr(run / "passes" / "syn.1002.exr"), read_exr(tmp_path / "syn.1002.exr")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for sub in ("beauty", "depth", "normal", "seg"):
        np.testing.assert_array_equal(
            iio.imread(run / "passes" / sub / "syn.1002.png"),
            iio.imread(tmp_path / sub / "syn.1002.png"),
        )


def test_many_writers_write_the_same_files(rendered, tmp_path, monkeypatch):
    """On a many-core machine the PNGs of a frame are written side by side (five writer
    threads for 16 cores) and OpenEXR compresses on 16: every file equals the two-writer
    render's, byte for byte."""
    import shutil

    import OpenEXR

    from destruct.render import run_render
    from destruct.rundir import RunDir
    from destruct.stages import Stage, StageContext

    run, _, ctx, _ = rendered
    shutil.copytree(run, tmp_path / "run")
    threads = OpenEXR.global_thread_count()
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    try:
        run_render(
            StageContext(
                shot=ctx.shot,
                run=RunDir(tmp_path / "run"),
                stage=Stage.RENDER,
                frames=[1001, 1002, 1003],
                force=True,
            )
        )
    finally:
        OpenEXR.set_global_thread_count(threads)
    files = sorted(p.relative_to(run) for p in (run / "passes").rglob("*.[pe][nx][gr]"))
    assert len(files) == 15  # three EXRs, twelve PNGs
    for rel in files:
        assert (tmp_path / "run" / rel).read_bytes() == (run / rel).read_bytes(), rel
