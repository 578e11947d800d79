"""Command-line options of the PRIP extension (read by the web UI before it starts)."""

from typing import Any


def preload(parser: Any) -> None:
    parser.add_argument("--prip-model", type=str, default=None, help="PRIP model: a packaged name or a checkpoint folder (default: default)")
    parser.add_argument("--prip-device", type=str, default=None, help="PRIP device: auto, cpu or cuda:N (default: auto; one that fails falls back to the CPU)")
    parser.add_argument("--prip-lib", type=str, default=None, help="path to a libprip_abi build (default: the one in the prip-refiner package)")
