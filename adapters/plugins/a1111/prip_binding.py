"""The prip-refiner package (the refiner library and its binding) as the extension uses
it: one refiner for the whole web UI, or why the package cannot be used. The extension
still loads without the package, and every prompt is then used as written, with the
reason in the image's infotext. Named apart from other extensions' modules: the web UI
shares one sys.path between them."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

# The package this extension runs on, as install.py asks pip for it, and the ABI
# version of the binding it needs.
REQUIREMENT = "prip-refiner>=0.1,<0.2"
ABI = (1, 2)
INSTALL = (
    "restart the web UI, whose start runs the extension's install.py to pip install it (set PRIP_WHEEL "
    f"to a prip-refiner wheel file, or PIP_FIND_LINKS to its folder, when your index has none), or pip "
    f"install '{REQUIREMENT}' into the web UI's Python"
)
T = TypeVar("T")

try:
    import prip_refiner
    from prip_refiner import PripError
except ImportError as e:
    prip_refiner = None  # type: ignore[assignment]
    MISSING = str(e)

    class PripError(Exception):  # type: ignore[no-redef]
        """A one-line reason the prompts are used as written."""


# One refiner for the whole web UI: loading the model is the expensive part.
REFINERS = prip_refiner.Cache() if prip_refiner is not None else None


def check() -> None:
    """PripError, saying what to install, unless the package is here, new enough, and
    its library loads on this platform."""
    if prip_refiner is None:
        raise PripError(f"the prip-refiner package is not installed ({MISSING}): {INSTALL}")
    prip_refiner.require(*ABI, requirement=REQUIREMENT)


def run(config: dict[str, Any], call: Callable[[Any], T], library: str | None, on_fallback: Callable[[str], None]) -> T:
    """``call`` with the web UI's refiner (opened with ``config`` from ``library`` or
    the package's own, on the CPU when the device fails: ``on_fallback`` says so)."""
    check()
    assert REFINERS is not None
    return REFINERS.run(config, call, library, on_fallback)


def unload() -> bool:
    """Frees the model; true when one was loaded."""
    return REFINERS is not None and REFINERS.unload()
