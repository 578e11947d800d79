"""Run by the web UI when it starts, in its Python: installs the prip-refiner package
(the refiner library and its binding, built for this platform; no Rust needed) with pip
when it is missing, too old, or built for another platform. $PRIP_WHEEL names what pip
installs: a wheel file, or a requirement (default prip_binding.REQUIREMENT, found on the
configured index or through PIP_FIND_LINKS). Never fails the web UI's start: without the
package the extension keeps prompts as written and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import prip_binding  # noqa: E402 - needs the extension folder on sys.path


def problem() -> str | None:
    """Why the installed package cannot be used (missing, too old, its library built for
    another platform), or None when it can."""
    try:
        prip_binding.check()
        prip_binding.prip_refiner.load(prip_binding.prip_refiner.find_library(bundled=True))
    except prip_binding.PripError as e:
        return str(e)
    return None


def main() -> int:
    why = problem()
    if why is None:
        print(f"PRIP: using prip-refiner {prip_binding.prip_refiner.__version__}")
        return 0
    spec = os.environ.get("PRIP_WHEEL") or prip_binding.REQUIREMENT
    print(f"PRIP: {why}; installing {spec} with pip")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--upgrade", "--force-reinstall", spec])
    if done.returncode != 0:
        print(
            f"PRIP: pip could not install {spec}. Set PRIP_WHEEL to the prip-refiner wheel built for this "
            "platform (or PIP_FIND_LINKS to its folder) and restart the web UI; until then the extension "
            "keeps prompts as written."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
