"""The run directory: manifest, resume, inputs hashes, skipped stages, exit codes (DESIGN.md 2).

The stages here are small stand-ins registered in place of the real ones, so these tests check
the orchestration alone; each real stage has its own tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

import destruct
from destruct import stages as stage_registry
from destruct.errors import StageNotBuilt, StageSkipped, UserError
from destruct.io import load_npz, save_npz
from destruct.pipeline import run
from destruct.shot import shot_from_dict
from destruct.stages import Stage

CALLS: list[str] = []


def fake_prepare(ctx):
    CALLS.append("prepare")
    save_npz(
        ctx.path("fracture", "pieces.npz"),
        "destruct.pieces/1",
        n=np.array(ctx.shot.fracture.pieces),
    )
    return {"pieces": ctx.shot.fracture.pieces}


def fake_simulate(ctx):
    CALLS.append("simulate")
    n = int(load_npz(ctx.path("fracture", "pieces.npz"), "destruct.pieces/1")["n"])
    for f in ctx.frames:
        save_npz(
            ctx.path("sim", f"frame.{f:04d}.npz"), "destruct.sim/1", y=np.full(n, f, np.float32)
        )
    return {"bonds_broken": 0}


def fake_render(ctx):
    for f in ctx.frames_todo():
        CALLS.append(f"render {f}")
        y = load_npz(ctx.path("sim", f"frame.{f:04d}.npz"), "destruct.sim/1")["y"]
        ctx.path("passes", f"{f}.txt").write_text(str(float(y.sum())))
        ctx.frame_done(f)
    return {}


def fake_refine(ctx):
    CALLS.append("refine")
    raise StageSkipped("no weights: run `destruct models pull sd15`")


def fake_encode(ctx):
    CALLS.append("encode")
    return {"frames": len(list(ctx.path("passes").glob("*.txt")))}


@pytest.fixture(autouse=True)
def fake_stages(monkeypatch):
    monkeypatch.setattr(
        stage_registry,
        "ENTRY_POINTS",
        {
            Stage.PREPARE: "test_pipeline:fake_prepare",
            Stage.SIMULATE: "test_pipeline:fake_simulate",
            Stage.RENDER: "test_pipeline:fake_render",
            Stage.REFINE: "test_pipeline:fake_refine",
            Stage.ENCODE: "test_pipeline:fake_encode",
        },
    )
    # the fake render's one file per frame (the fake simulate writes the real sim/ names)
    monkeypatch.setitem(
        stage_registry.FRAME_OUTPUTS, Stage.RENDER, lambda shot, f: [f"passes/{f}.txt"]
    )
    CALLS.clear()


def small(**over):
    d = {"shot": {"name": "t", "frames": 4, "start_frame": 1}, "fracture": {"pieces": 5}}
    for k, v in over.items():
        d.setdefault(k, {}).update(v)
    return shot_from_dict(d)


def test_full_run_writes_manifest_with_design_keys(tmp_path):
    r = run(small(), tmp_path / "run")
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["format"] == "destruct.manifest/1" and m["seed"] == 0 and m["backend"] == "auto"
    assert set(m) >= {"shot_hash", "versions", "stages"}
    st = m["stages"]
    assert st["prepare"]["status"] == "done" and st["prepare"]["figures"] == {"pieces": 5}
    assert st["render"]["frames_done"] == [1, 2, 3, 4]
    assert st["refine"]["status"] == "skipped" and "destruct models pull" in st["refine"]["reason"]
    assert st["encode"]["figures"] == {"frames": 4}
    for e in st.values():
        assert {"status", "inputs_hash"} <= set(e)
    assert (tmp_path / "run" / "shot.toml").is_file() and r.manifest == m


def test_second_run_skips_done_stages_and_retries_skipped(tmp_path):
    run(small(), tmp_path)
    CALLS.clear()
    run(small(), tmp_path)
    assert CALLS == ["refine"]


def test_changed_inputs_rerun_the_stage_and_downstream_only(tmp_path):
    run(small(), tmp_path)
    CALLS.clear()
    run(small(camera={"focal_mm": 50.0}), tmp_path)
    assert CALLS == ["render 1", "render 2", "render 3", "render 4", "refine", "encode"]
    CALLS.clear()
    run(small(fracture={"pieces": 6}), tmp_path)
    assert CALLS[:2] == ["prepare", "simulate"]


def test_force_reruns(tmp_path):
    run(small(), tmp_path)
    CALLS.clear()
    run(small(), tmp_path, "prepare", force=True)
    assert CALLS == ["prepare"]


def test_frame_ranges_resume_per_frame(tmp_path):
    run(small(), tmp_path, "prepare,simulate")
    CALLS.clear()
    r = run(small(), tmp_path, "render", frames="2:3")
    assert CALLS == ["render 2", "render 3"]
    assert r.manifest["stages"]["render"]["status"] == "partial"
    CALLS.clear()
    r = run(small(), tmp_path, "render")
    assert CALLS == ["render 1", "render 4"] and r.manifest["stages"]["render"]["status"] == "done"


def test_stage_alone_needs_its_upstream(tmp_path):
    with pytest.raises(UserError, match="needs 'prepare' done"):
        run(small(), tmp_path, "simulate")


def test_bad_flags(tmp_path):
    with pytest.raises(UserError, match="unknown stage xray"):
        run(small(), tmp_path, "prepare,xray")
    with pytest.raises(UserError, match="inside the shot's frames 1:4"):
        run(small(), tmp_path, frames="0:9")
    with pytest.raises(UserError, match="use A:B"):
        run(small(), tmp_path, frames="a-b")


def test_never_writes_into_a_foreign_folder(tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(UserError, match="holds no destruct manifest"):
        run(small(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holiday.jpg"]


def test_stage_not_built_exits_3(tmp_path, monkeypatch):
    monkeypatch.setitem(
        stage_registry.ENTRY_POINTS, Stage.RENDER, "destruct.not_a_module:run_render"
    )
    with pytest.raises(StageNotBuilt, match="'render' is not built yet"):
        run(small(), tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["stages"]["simulate"]["status"] == "done" and "render" not in m["stages"]


def test_info_json_prints_manifest(tmp_path):
    run(small(), tmp_path / "run")
    r = run_cli("info", tmp_path / "run", "--json")
    assert r.returncode == 0
    info = json.loads(r.stdout)
    assert info["stages"]["prepare"]["figures"]["pieces"] == 5
    assert info["stages"]["refine"]["status"] == "skipped"
    r = run_cli("info", tmp_path / "nothing")
    assert r.returncode == 2 and "holds no destruct manifest.json" in r.stderr


def test_python_api_run_matches_cli_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = destruct.run(small(), stages="prepare")
    assert r.run_dir == (tmp_path / "renders" / "t").resolve()


def test_stage_not_built_is_exit_code_3_through_the_cli(tmp_path, monkeypatch, capsys):
    from destruct.cli import main

    monkeypatch.setitem(
        stage_registry.ENTRY_POINTS, Stage.RENDER, "destruct.not_a_module:run_render"
    )
    shot = tmp_path / "t.toml"
    shot.write_text(small().to_toml())
    assert main(["run", str(shot), "--out", str(tmp_path / "run"), "--quiet"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: stage 'render' is not built yet")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_prints_the_resume_line_records_the_stage_and_resumes(
    tmp_path, monkeypatch, capsys, signal_name
):
    """Ctrl-C (SIGINT; typer turns it into exit code 130) or a farm manager's SIGTERM in the
    middle of render: exit code 130, the resume line on stderr, the stage recorded as
    interrupted with the frames it finished; the same command again renders only the rest."""
    import os
    import signal

    from destruct.cli import main
    from destruct.pipeline import INTERRUPTED

    def render_two_then_ctrl_c(ctx):
        for f in ctx.frames_todo()[:2]:
            CALLS.append(f"render {f}")
            ctx.path("passes", f"{f}.txt").write_text("0")
            ctx.frame_done(f)
        os.kill(os.getpid(), getattr(signal, signal_name))

    monkeypatch.setattr(
        "test_pipeline.fake_interrupted_render", render_two_then_ctrl_c, raising=False
    )
    monkeypatch.setitem(
        stage_registry.ENTRY_POINTS, Stage.RENDER, "test_pipeline:fake_interrupted_render"
    )
    shot = tmp_path / "t.toml"
    shot.write_text(small().to_toml())
    args = ["run", str(shot), "--out", str(tmp_path / "run"), "--quiet"]
    # a shell starts a background job (`pytest &`) with SIGINT ignored: give Python's own back
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(args) == 130
    finally:
        signal.signal(signal.SIGINT, old)
    assert capsys.readouterr().err.strip().splitlines()[-1] == INTERRUPTED
    render = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["render"]
    assert render["status"] == "interrupted" and render["frames_done"] == [1, 2]
    monkeypatch.setitem(stage_registry.ENTRY_POINTS, Stage.RENDER, "test_pipeline:fake_render")
    CALLS.clear()
    assert main(args) == 0
    assert CALLS == ["render 3", "render 4", "refine", "encode"]


DAMAGES = {
    "cut short": lambda text: text[: len(text) // 2],
    "stages a list": lambda text: _edit(text, lambda m: m.update(stages=[])),
    "stage a string": lambda text: _edit(text, lambda m: m["stages"].update(prepare="done")),
    "frames_done text": lambda text: _edit(
        text, lambda m: m["stages"]["render"].update(frames_done="abc")
    ),
    "frames_done null": lambda text: _edit(
        text, lambda m: m["stages"]["render"].update(frames_done=None)
    ),
    "figures a list": lambda text: _edit(text, lambda m: m["stages"]["prepare"].update(figures=[])),
}


def _edit(text, change):
    m = json.loads(text)
    change(m)
    return json.dumps(m)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_manifest_is_one_user_error_and_force_starts_it_over(tmp_path, capsys, damage):
    """A manifest cut short or hand-edited into the wrong shape: run and info give one line
    naming the file and the fix (--force); --force keeps the damaged file aside and reruns."""
    from destruct.cli import main

    run(small(), tmp_path)
    path = tmp_path / "manifest.json"
    damaged = DAMAGES[damage](path.read_text())
    path.write_text(damaged)
    with pytest.raises(UserError, match="manifest.json is (damaged|not valid JSON).*--force"):
        run(small(), tmp_path)
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    CALLS.clear()
    r = run(small(), tmp_path, force=True)
    assert (
        CALLS[:2] == ["prepare", "simulate"] and r.manifest["stages"]["render"]["status"] == "done"
    )
    assert (tmp_path / "manifest.json.damaged").read_text() == damaged


def test_frames_whose_files_were_deleted_are_redone(tmp_path):
    """A stage recorded done whose files were deleted since is not up to date: render redoes
    the frames that lost a file, simulate runs again."""
    run(small(), tmp_path)
    (tmp_path / "passes" / "3.txt").unlink()
    CALLS.clear()
    r = run(small(), tmp_path)
    assert CALLS == ["render 3", "refine"]  # refine: skipped, so tried again
    assert r.manifest["stages"]["render"]["status"] == "done"
    (tmp_path / "sim" / "frame.0002.npz").unlink()
    CALLS.clear()
    run(small(), tmp_path)
    assert CALLS[0] == "simulate" and (tmp_path / "sim" / "frame.0002.npz").is_file()
    # a partial render (a farm chunk) whose recorded frame lost its file: redone with the rest
    run(small(), tmp_path, "render", frames="1:2", force=True)
    (tmp_path / "passes" / "1.txt").unlink()
    CALLS.clear()
    run(small(), tmp_path, "render")
    assert CALLS == ["render 1", "render 3", "render 4"]


def _bump_manifest(root: str, key: str, times: int) -> None:
    from destruct.rundir import RunDir

    run_dir = RunDir(root)
    for i in range(times):
        with run_dir.update() as m:
            m.setdefault("counts", {})[f"{key}{i}"] = i


def test_two_processes_updating_the_manifest_lose_nothing(tmp_path):
    """Two ``--frames`` ranges on one run dir update the manifest at once: the lock makes each
    read-modify-write whole, so no update is lost."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump_manifest, args=(str(tmp_path), k, 40)) for k in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    counts = json.loads((tmp_path / "manifest.json").read_text())["counts"]
    assert sorted(counts) == sorted(f"{k}{i}" for k in "ab" for i in range(40))


def test_cli_run_without_a_shot_runs_the_bundled_default_into_renders_default(tmp_path):
    r = run_cli("run", "--stages", "prepare", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "renders" / "default"
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["stages"]["prepare"]["status"] == "done"
    assert 780 <= m["stages"]["prepare"]["figures"]["pieces"] <= 900
    assert (run_dir / "fracture" / "pieces.npz").is_file()
    assert destruct.load_shot(run_dir / "shot.toml").hash() == m["shot_hash"]


def _move_owner_to(run_dir, stage: str, host: str, pid: int, started=None) -> None:
    """Make the manifest say that ``stage`` is run by process ``pid`` of ``host``."""
    path = run_dir / "manifest.json"
    m = json.loads(path.read_text())
    m["stages"][stage]["owner"] = {"host": host, "pid": pid, "started": started}
    path.write_text(json.dumps(m))


def test_a_run_with_other_inputs_cannot_take_over_a_running_stage(tmp_path, monkeypatch):
    """Shot A renders on a farm node; shot B (another camera) on the same folder is refused
    while A's render is running; when B forces its way in anyway (A's process is not visible
    from B's host), A stops at its next frame instead of recording its frames as B's, and B's
    record stays B's."""
    from destruct.pipeline import inputs_hash

    a, b = small(), small(camera={"focal_mm": 50.0})
    state = {}

    def render_a_while_b_starts(ctx):
        for f in ctx.frames_todo():
            if f == 2 and "refused" not in state:
                _move_owner_to(tmp_path, "render", "farm-node-7", 1234)
                with pytest.raises(UserError, match="running for other inputs"):
                    run(b, tmp_path, "render", frames="1:1")
                state["refused"] = True
                monkeypatch.setitem(
                    stage_registry.ENTRY_POINTS, Stage.RENDER, "test_pipeline:fake_render"
                )
                run(b, tmp_path, "render", force=True)  # B takes the folder over
            ctx.path("passes", f"{f}.txt").write_text("A")
            ctx.frame_done(f)
        return {}

    monkeypatch.setattr("test_pipeline.fake_render_a", render_a_while_b_starts, raising=False)
    monkeypatch.setitem(stage_registry.ENTRY_POINTS, Stage.RENDER, "test_pipeline:fake_render_a")
    with pytest.raises(UserError, match="another run with other inputs took over the render"):
        run(a, tmp_path, "prepare,simulate,render")
    render = json.loads((tmp_path / "manifest.json").read_text())["stages"]["render"]
    assert render["inputs_hash"] == inputs_hash(b, Stage.RENDER)
    assert render["status"] == "done" and render["frames_done"] == [1, 2, 3, 4]


def test_force_does_not_take_over_a_stage_whose_run_is_alive_on_this_host(tmp_path, monkeypatch):
    """While A's render runs in a live process here, B's --force is refused too, naming the
    process, before it writes anything; A's frames stay A's and it finishes."""
    import os

    from destruct.pipeline import inputs_hash

    a, b = small(), small(camera={"focal_mm": 50.0})
    seen = {}

    def render_a_while_b_forces(ctx):
        for f in ctx.frames_todo():
            if f == 2:
                with pytest.raises(UserError) as e:
                    run(b, tmp_path, "render", force=True)
                seen["message"] = str(e.value)
                # the refused run wrote nothing over A's: not its shot, not the shot's hash
                assert (tmp_path / "shot.toml").read_text() == a.to_toml()
                assert json.loads((tmp_path / "manifest.json").read_text())["shot_hash"] == a.hash()
            ctx.path("passes", f"{f}.txt").write_text("A")
            ctx.frame_done(f)
        return {}

    monkeypatch.setattr("test_pipeline.fake_render_a", render_a_while_b_forces, raising=False)
    monkeypatch.setitem(stage_registry.ENTRY_POINTS, Stage.RENDER, "test_pipeline:fake_render_a")
    run(a, tmp_path, "prepare,simulate,render")
    assert f"by process {os.getpid()} on this host" in seen["message"]
    assert "--force only takes over the stage of a run that is gone" in seen["message"]
    render = json.loads((tmp_path / "manifest.json").read_text())["stages"]["render"]
    assert render["inputs_hash"] == inputs_hash(a, Stage.RENDER)
    assert render["status"] == "done" and render["frames_done"] == [1, 2, 3, 4]
    assert {p.read_text() for p in (tmp_path / "passes").glob("*.txt")} == {"A"}


@pytest.mark.parametrize("gone", ["exited", "pid reused"])
def test_a_stage_left_running_by_a_gone_process_here_is_taken_over_without_force(tmp_path, gone):
    """A run killed on this host leaves its stage marked running; another shot's run sees that
    its process is gone (or that its PID now belongs to a process started later) and takes the
    stage over without --force."""
    import socket
    import subprocess

    from destruct.io import this_process
    from destruct.pipeline import inputs_hash

    a, b = small(), small(camera={"focal_mm": 50.0})
    run(a, tmp_path, "prepare,simulate")
    path = tmp_path / "manifest.json"
    m = json.loads(path.read_text())
    m["stages"]["render"] = {"status": "running", "inputs_hash": "A", "frames_done": [1]}
    path.write_text(json.dumps(m))
    if gone == "exited":
        p = subprocess.Popen(["true"])
        p.wait()
        _move_owner_to(tmp_path, "render", socket.gethostname(), p.pid)
    else:  # this process, but recorded as started earlier: the PID was reused
        me = this_process()
        _move_owner_to(tmp_path, "render", me["host"], me["pid"], me["started"] - 1)
    run(b, tmp_path, "render")
    render = json.loads(path.read_text())["stages"]["render"]
    assert render["inputs_hash"] == inputs_hash(b, Stage.RENDER)
    assert render["status"] == "done" and render["frames_done"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "edit", ["markup in a reason", "a number as reason", "NaN", "nested 100000 deep"]
)
def test_info_on_odd_manifests_prints_or_says_one_line(tmp_path, capsys, edit):
    """destruct info shows text as text (a "[/x]" is not rich markup) and refuses what is not
    JSON (NaN, absurd nesting) with one line instead of a traceback."""
    from destruct.cli import main

    run(small(), tmp_path)
    path = tmp_path / "manifest.json"
    m = json.loads(path.read_text())
    if edit == "markup in a reason":
        m["stages"]["refine"]["reason"] = "[/x] closes [bold]nothing"
        path.write_text(json.dumps(m))
    elif edit == "a number as reason":
        m["stages"]["refine"]["reason"] = 42
        path.write_text(json.dumps(m))
    elif edit == "NaN":
        path.write_text(json.dumps(m)[:-1] + ', "x": NaN}')
    else:
        path.write_text(
            '{"format": "destruct.manifest/1", "x": ' + "[" * 100000 + "]" * 100000 + "}"
        )
    rc = main(["info", str(tmp_path)])
    out, err = capsys.readouterr()
    if edit.startswith(("markup", "a number")):
        assert rc == 0 and ("[/x] closes [bold]nothing" in out or "42" in out), out
    else:
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "not valid JSON" in err


def test_run_json_prints_the_manifest_alone_on_stdout(tmp_path, monkeypatch, capsys):
    """What a library prints during a stage (Taichi's banner) goes to stderr: stdout of
    ``run --json`` parses as the manifest."""
    from destruct.cli import main

    def chatty_simulate(ctx):
        print("[Taichi] version 1.7.4, llvm 15.0.4")  # as taichi does on import
        return fake_simulate(ctx)

    monkeypatch.setattr("test_pipeline.chatty_simulate", chatty_simulate, raising=False)
    monkeypatch.setitem(
        stage_registry.ENTRY_POINTS, Stage.SIMULATE, "test_pipeline:chatty_simulate"
    )
    shot = tmp_path / "t.toml"
    shot.write_text(small().to_toml())
    assert main(["run", str(shot), "--out", str(tmp_path / "run"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["stages"]["simulate"]["status"] == "done"
    assert "[Taichi] version" in err


def test_python_api_takes_lists_and_checks_arguments_before_writing(tmp_path):
    """run() takes stage names or Stage members and frame numbers as Python gives them;
    arguments of the wrong type (TypeError) or frames outside the shot (UserError) are refused
    before anything is written, so a done stage is never marked failed by a bad call."""
    r = run(small(), tmp_path / "a", stages=["prepare", Stage.SIMULATE, "render"], frames=(2, 3))
    assert CALLS == ["prepare", "simulate", "render 2", "render 3"]
    assert r.manifest["stages"]["render"]["frames_done"] == [2, 3]
    CALLS.clear()
    run(small(), tmp_path / "a", stages="render", frames=np.int64(4))
    assert CALLS == ["render 4"]
    before = (tmp_path / "a" / "manifest.json").read_text()
    for bad, error in (
        ({"frames": [99999]}, UserError),
        ({"frames": [2.5]}, TypeError),
        ({"frames": ["2"]}, TypeError),
        ({"frames": [True]}, TypeError),
        ({"stages": 5}, TypeError),
        ({"stages": ["xray"]}, UserError),
    ):
        with pytest.raises(error):
            run(small(), tmp_path / "a", **{"stages": "render", **bad})
    with pytest.raises(TypeError, match="give destruct.load_shot"):
        run(str(tmp_path / "shot.toml"), tmp_path / "b")
    with pytest.raises(TypeError, match="give destruct.load_shot"):
        destruct.prepare(None)
    assert (tmp_path / "a" / "manifest.json").read_text() == before
    assert not (tmp_path / "b").exists()


def test_run_json_prints_the_error_as_json_when_the_run_fails(tmp_path, capsys):
    from destruct.cli import main

    shot = tmp_path / "t.toml"
    shot.write_text(small().to_toml())
    code = main(["run", str(shot), "--out", str(tmp_path / "run"), "--json", "--frames", "0:99"])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: --frames '0:99'")
    assert json.loads(out) == {"error": err.strip().removeprefix("error: "), "exit_code": 2}
