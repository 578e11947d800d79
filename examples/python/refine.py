"""Refine prompts from Python through libprip_abi, with the ctypes binding the ComfyUI
node and the A1111 extension use (the prip-refiner package, adapters/python/src).

    python3 examples/python/refine.py target/release/libprip_abi.so '{"model": "default"}' "a cat"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "adapters" / "python" / "src"))

from prip_refiner import PripError, Refiner  # noqa: E402


def main() -> int:
    if len(sys.argv) < 4:
        print(f"usage: {sys.argv[0]} LIBRARY CONFIG_JSON PROMPT...", file=sys.stderr)
        return 2
    try:
        with Refiner(Path(sys.argv[1]), json.loads(sys.argv[2])) as prip:
            for result in prip.refine([{"prompt": p, "seed": 7} for p in sys.argv[3:]]):
                print(result.get("refined", result.get("error")))
    except PripError as e:
        print(f"prip: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
