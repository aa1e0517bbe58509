"""The benchmark runner's bookkeeping: medians over repeats, tables, README update, plot."""

from __future__ import annotations

from benchmarks import runner


def test_medians_group_cases_and_take_the_median():
    runs = [
        [
            {"name": "sim", "pieces": 500, "seconds": 1.0},
            {"name": "sim", "pieces": 1000, "seconds": 4.0},
        ],
        [
            {"name": "sim", "pieces": 500, "seconds": 3.0},
            {"name": "sim", "pieces": 1000, "seconds": 2.0},
        ],
        [
            {"name": "sim", "pieces": 500, "seconds": 2.0},
            {"name": "sim", "pieces": 1000, "seconds": 9.0},
        ],
    ]
    out = {r["pieces"]: r for r in runner.medians(runs)}
    assert out[500]["seconds"] == 2.0 and out[1000]["seconds"] == 4.0 and out[500]["repeats"] == 3


def test_markdown_table_has_every_field():
    md = runner.markdown_table([{"name": "a", "x": 1.23456}, {"name": "b", "y": 2}])
    assert md.splitlines()[0] == "| name | x | y |" and "| a | 1.235 |  |" in md


def test_readme_table_is_replaced_between_markers(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{runner.START}\nold\n{runner.END}\noutro\n")
    monkeypatch.setattr(runner, "README", readme)
    assert runner.update_readme("| new |\n")
    assert readme.read_text() == f"intro\n{runner.START}\n| new |\n{runner.END}\noutro\n"


def test_scaling_plot_fits_the_exponent(tmp_path):
    recs = [{"name": "stack", "pieces": n, "seconds_per_step": 1e-5 * n} for n in (250, 1000, 4000)]
    p = runner.scaling_plot({"sim": recs}, tmp_path / "s.png")
    assert p is not None and p.stat().st_size > 1000


def test_only_matches_names_exactly_before_substrings():
    assert runner.discover("sim") == ["bench_sim"]
    assert runner.discover("bench_sim_vs_pybullet") == ["bench_sim_vs_pybullet"]
    assert runner.discover("sim,usd") == ["bench_sim", "bench_usd"]
    assert "bench_sim_vs_pybullet" in runner.discover("pybullet")


def test_readme_table_matches_the_committed_results():
    text = runner.README.read_text()
    table = text.split(runner.START + "\n", 1)[1].split(runner.END, 1)[0]
    assert table == (runner.RESULTS / "summary.md").read_text()
