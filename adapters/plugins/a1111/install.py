"""Run by the web UI when it starts: makes sure libprip_abi can be found, building it
with cargo when the extension lives in a PRIP checkout and no library exists yet."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from libprip import PripError, build_library, find_library  # noqa: E402


def main() -> int:
    here = Path(__file__).resolve().parent
    try:
        print(f"PRIP: using {find_library(here)}")
        return 0
    except PripError as missing:
        print(f"PRIP: {missing}; trying to build it")
    try:
        print(f"PRIP: built {build_library()}")
        return 0
    except PripError as e:
        print(f"PRIP: {e}. The extension will keep prompts as written until a library is installed.")
        return 0


if __name__ == "__main__":
    sys.exit(main())
