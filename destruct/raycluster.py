"""Connecting to Ray (DESIGN.md section 9), an optional extra: ``pip install 'destruct[farm]'``."""

from __future__ import annotations

from typing import Any

from destruct.errors import UserError


def connect(address: str | None = "auto", *, num_cpus: int | None = None) -> Any:
    """Return the ``ray`` module, initialised against ``address``.

    ``"local"`` starts a private local cluster (``num_cpus`` workers); ``"auto"`` joins the
    cluster this machine belongs to (``ray start --head`` / RAY_ADDRESS); anything else is a
    ``ray://host:port`` or ``host:port`` address. An already initialised Ray is reused.
    """
    try:
        import ray
    except ModuleNotFoundError:
        raise UserError(
            "Ray is not installed: pip install 'destruct[farm]' (or run without --ray)"
        ) from None
    if ray.is_initialized():
        return ray
    try:
        if address in (None, "local"):
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise UserError(
            f"cannot reach a Ray cluster at {address!r} ({e}); start one with `ray start --head` "
            "or pass --ray local"
        ) from None
    return ray
