"""Package list only: assets/ sits at the top of the checkout (DESIGN.md section 1) and ships
inside the wheel as ``destruct.assets``, which pyproject.toml alone cannot say next to a
package search. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

CODE = ["destruct", "destruct.*", "sim_kernels", "sim_kernels.*", "refine", "refine.*"]

setup(
    packages=find_packages(include=CODE) + ["destruct.assets"],
    package_dir={"destruct.assets": "assets"},
)
