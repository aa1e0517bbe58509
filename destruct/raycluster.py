"""Connecting to Ray (DESIGN.md section 9), an optional extra: ``pip install 'destruct[farm]'``."""

from __future__ import annotations

import re
from typing import Any

from destruct.errors import UserError, first_line


def check_address(address: str | None) -> None:
    """Refuse a --ray value that is no Ray address before any stage runs (not after hours of
    simulation and rendering, when refine first connects)."""
    if address is None or re.fullmatch(r"auto|local|(ray://)?[\w.-]+:\d{1,5}", address):
        return
    raise UserError(
        f"--ray {address!r} is not a Ray address; give auto, local, host:port or ray://host:port"
    )


def connect(address: str | None = "auto", *, num_cpus: int | None = None) -> Any:
    """Return the ``ray`` module, initialised against ``address``.

    ``"local"`` starts a private local cluster (``num_cpus`` workers); ``"auto"`` joins the
    cluster this machine belongs to (``ray start --head`` / RAY_ADDRESS); anything else is a
    ``ray://host:port`` or ``host:port`` address. An already initialised Ray is reused.
    """
    check_address(address)
    try:
        import ray
    except ModuleNotFoundError:
        raise UserError(
            "Ray is not installed: pip install 'destruct[farm]' (or run without --ray)"
        ) from None
    except ImportError as e:  # installed but broken (a missing shared library)
        raise UserError(
            f"Ray does not import ({e}); reinstall it: pip install --force-reinstall "
            "'destruct[farm]' (or run without --ray)"
        ) from None
    if ray.is_initialized():
        return ray
    try:
        if address in (None, "local"):
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        why = first_line(e)
        raise UserError(
            f"cannot reach a Ray cluster at {address!r} ({why}); start one with `ray start "
            "--head` or pass --ray local"
        ) from None
    return ray
