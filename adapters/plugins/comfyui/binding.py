"""The prip-refiner package (the refiner library and its binding) as the node uses it:
one refiner for the whole server, or why the package cannot be used. The node still
loads without the package, and every prompt is then used as written, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

# The package this node runs on, as requirements.txt and pyproject.toml ask pip for it
# (a test checks they agree), and the ABI version of the binding it needs.
REQUIREMENT = "prip-refiner>=0.1,<0.2"
ABI = (1, 2)
REQUIREMENTS_TXT = Path(__file__).resolve().parent / "requirements.txt"
T = TypeVar("T")

try:
    import prip_refiner
    from prip_refiner import PripError
except ImportError as e:
    prip_refiner = None  # type: ignore[assignment]
    MISSING = str(e)

    class PripError(Exception):  # type: ignore[no-redef]
        """A one-line reason the prompt is used as written."""


# One refiner for the whole server: loading the model is the expensive part.
REFINERS = prip_refiner.Cache() if prip_refiner is not None else None


def run(config: dict[str, Any], call: Callable[[Any], T], on_fallback: Callable[[str], None]) -> T:
    """``call`` with the server's refiner (opened with ``config``, on the CPU when the
    device fails: ``on_fallback`` says so); PripError when the package is missing or
    too old, naming what to install."""
    if prip_refiner is None or REFINERS is None:
        raise PripError(
            f"the prip-refiner package is not installed ({MISSING}): in ComfyUI's Python, "
            f"pip install -r {REQUIREMENTS_TXT} (with PIP_FIND_LINKS naming the folder of the wheel), "
            "or pip install the prip-refiner wheel for this platform"
        )
    prip_refiner.require(*ABI, requirement=REQUIREMENT)
    return REFINERS.run(config, call, on_fallback=on_fallback)


def unload() -> bool:
    """Frees the model; true when one was loaded."""
    return REFINERS is not None and REFINERS.unload()
