"""PRIP's reference scoring service: ImageReward and HPSv2 behind the HTTP scoring
protocol `prip-score/1` (docs/scoring-protocol.md), for the trainer's PPO rewards and
image evaluation. Run it on the GPU box:

    python3 -m pip install -r requirements.txt
    python3 prip_scoring.py --listen 0.0.0.0:8790 --scorers imagereward,hpsv2 --device cuda

The standard library serves HTTP; the models come from the `image-reward` and `hpsv2`
packages, imported when a scorer is first built (their weights download on first use).
One request is scored at a time: the models share one GPU and are not thread-safe.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Sequence

PROTOCOL = "prip-score/1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGES = 64
MAX_BODY_BYTES = 64 << 20


class ScorerError(Exception):
    """A request the protocol refuses: (HTTP status, one-line message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Scorer:
    """One preference model: `score(prompt, pngs)` -> one float (or None) per image."""

    name = ""
    version = ""

    def score(self, prompt: str, pngs: Sequence[bytes]) -> List[Optional[float]]:
        raise NotImplementedError


def _pil_images(pngs: Sequence[bytes]):
    from PIL import Image  # imported here: the protocol layer needs no Pillow

    return [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]


def _floats(values, n: int) -> List[Optional[float]]:
    """A model's output (a float, a list, numpy values) as n floats; non-finite -> None."""
    if not isinstance(values, (list, tuple)):
        values = [values] if n == 1 else list(values)
    out: List[Optional[float]] = []
    for v in values:
        # numpy scalars and 1-element arrays both end up as a plain float.
        try:
            f = float(v[0]) if hasattr(v, "__len__") else float(v)
        except (TypeError, ValueError, IndexError):
            f = float("nan")
        out.append(f if math.isfinite(f) else None)
    return out


def load_imagereward_model(device: str):
    """ImageReward-v1.0 (downloads its checkpoint on first use)."""
    import ImageReward as RM  # package `image-reward`

    return RM.load("ImageReward-v1.0", device=device)


class ImageRewardScorer(Scorer):
    """ImageReward (Xu et al. 2023): BLIP + MLP; normalised reward, higher is better."""

    name = "imagereward"

    def __init__(self, device: str, loader: Callable = load_imagereward_model):
        self.model = loader(device)
        self.version = _package_version("image-reward")

    def score(self, prompt, pngs):
        # `score` takes a list of PIL images and returns a list (one image: a float).
        return _floats(self.model.score(prompt, _pil_images(pngs)), len(pngs))


def load_hpsv2_scorer(device: str, version: str):
    """HPSv2's scoring function (downloads its checkpoint on first call)."""
    import hpsv2  # package `hpsv2`

    def run(images, prompt):
        return hpsv2.score(images, prompt, hps_version=version)

    return run


class Hpsv2Scorer(Scorer):
    """HPSv2 / v2.1 (Wu et al. 2023): OpenCLIP ViT-H-14 fine-tune, cosine score."""

    name = "hpsv2"

    def __init__(self, device: str, hps_version: str = "v2.1", loader: Callable = load_hpsv2_scorer):
        self.run = loader(device, hps_version)
        self.version = f"{_package_version('hpsv2')}/{hps_version}"

    def score(self, prompt, pngs):
        return _floats(self.run(_pil_images(pngs), prompt), len(pngs))


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - an unknown version is not an error
        return "unknown"


BUILDERS: Dict[str, Callable[..., Scorer]] = {
    "imagereward": lambda args: ImageRewardScorer(args.device),
    "hpsv2": lambda args: Hpsv2Scorer(args.device, args.hps_version),
}


class Service:
    """The protocol, without HTTP: requests in, (status, JSON object) out."""

    def __init__(self, scorers: Sequence[Scorer]):
        if not scorers:
            raise ValueError("at least one scorer")
        self.scorers = {s.name: s for s in scorers}
        self.default = scorers[0].name
        self.lock = threading.Lock()

    def info(self) -> dict:
        return {
            "protocol": PROTOCOL,
            "scorers": [{"name": s.name, "version": s.version} for s in self.scorers.values()],
            "default": self.default,
        }

    def score(self, body: bytes) -> dict:
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ScorerError(400, f"body is not JSON: {e}")
        if not isinstance(req, dict):
            raise ScorerError(400, "body is not a JSON object")
        prompt = req.get("prompt")
        if not isinstance(prompt, str):
            raise ScorerError(400, "\"prompt\" must be a string")
        name = req.get("scorer") or self.default
        scorer = self.scorers.get(name)
        if scorer is None:
            raise ScorerError(404, f"no scorer {name!r} (this service has: {', '.join(self.scorers)})")
        images = req.get("images")
        if not isinstance(images, list) or not images:
            raise ScorerError(400, "\"images\" must be a non-empty list of base64 PNG strings")
        if len(images) > MAX_IMAGES:
            raise ScorerError(413, f"{len(images)} images, at most {MAX_IMAGES} per request")
        pngs = []
        for i, text in enumerate(images):
            if not isinstance(text, str):
                raise ScorerError(400, f"images[{i}] is not a string")
            try:
                png = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ScorerError(400, f"images[{i}] is not base64: {e}")
            if not png.startswith(PNG_SIGNATURE):
                raise ScorerError(400, f"images[{i}] is not a PNG")
            pngs.append(png)
        with self.lock:
            try:
                scores = scorer.score(prompt, pngs)
            except Exception as e:  # noqa: BLE001 - a model failure is the client's 500
                raise ScorerError(500, f"{scorer.name}: {type(e).__name__}: {e}")
        scores = [s if s is None or math.isfinite(s) else None for s in (float(x) if x is not None else None for x in scores)]
        return {"scorer": scorer.name, "version": scorer.version, "scores": scores}


def make_handler(service: Service):
    class Handler(BaseHTTPRequestHandler):
        server_version = "prip-scoring/1"

        def _send(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path == "/info":
                self._send(200, service.info())
            elif self.path == "/healthz":
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": f"no route GET {self.path}"})

        def do_POST(self):  # noqa: N802
            if self.path != "/score":
                self._send(404, {"error": f"no route POST {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._send(413, {"error": f"body of {length} bytes, at most {MAX_BODY_BYTES}"})
                return
            body = self.rfile.read(length)
            try:
                self._send(200, service.score(body))
            except ScorerError as e:
                self._send(e.status, {"error": e.message})

        def log_message(self, fmt, *args):  # one line per request on stderr
            sys.stderr.write("prip-scoring: " + (fmt % args) + "\n")

    return Handler


def serve(service: Service, host: str, port: int) -> ThreadingHTTPServer:
    """A server bound to (host, port); port 0 picks a free one. Call serve_forever()."""
    return ThreadingHTTPServer((host, port), make_handler(service))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8790", help="HOST:PORT")
    p.add_argument("--scorers", default="imagereward", help="comma-separated: imagereward,hpsv2 (the first is the default)")
    p.add_argument("--device", default="cuda", help="torch device: cuda, cuda:1, cpu")
    p.add_argument("--hps-version", default="v2.1", choices=["v2.0", "v2.1"])
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    names = [n.strip() for n in args.scorers.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown or not names:
        print(f"prip-scoring: unknown scorer(s) {unknown}; known: {', '.join(BUILDERS)}", file=sys.stderr)
        return 2
    service = Service([BUILDERS[n](args) for n in names])
    server = serve(service, host or "127.0.0.1", int(port))
    print(f"prip-scoring: {PROTOCOL} on http://{server.server_address[0]}:{server.server_address[1]} "
          f"scorers {', '.join(names)}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
