"""The TD-facing benchmark suite (issue 9): ``destruct bench`` or ``python -m benchmarks``.

Each ``bench_<name>.py`` module exposes ``run(quick: bool = False) -> list[dict]``: one record
per measured case with a ``"name"`` and its figures. The runner repeats, takes medians and writes
JSON + Markdown (+ a scaling plot) to ``benchmarks/results/``.
"""
