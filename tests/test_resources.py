"""Memory guards: a stage refuses to start when its estimate exceeds the memory available."""

from __future__ import annotations

import pytest

from destruct import resources
from destruct.errors import UserError
from destruct.shot import shot_from_dict
from destruct.stages import Stage

GIB = 2**30


def test_default_shot_fits_this_machine():
    shot = shot_from_dict({})
    for stage in Stage:
        assert resources.estimate(shot, stage) < 8 * GIB


def test_estimates_grow_with_the_sizes_they_depend_on():
    small = shot_from_dict({"fracture": {"pieces": 100}, "camera": {"resolution": [320, 240]}})
    big = shot_from_dict(
        {
            "fracture": {"pieces": 100_000},
            "camera": {"resolution": [8192, 8192]},
            "debris": {"max_particles": 10_000_000},
        }
    )
    for stage in Stage:
        assert resources.estimate(big, stage) > resources.estimate(small, stage)
    assert resources.estimate(big, Stage.RENDER) > 24 * GIB


def test_refusal_names_the_setting_to_lower():
    big = shot_from_dict({"camera": {"resolution": [8192, 8192]}})
    with pytest.raises(
        UserError, match=r"stage 'render' needs about .* GiB .* lower camera.resolution"
    ):
        resources.check(big, Stage.RENDER, avail=4 * GIB)
    assert resources.check(big, Stage.PREPARE, avail=4 * GIB) < 4 * GIB
