"""A stand-in preference model for the tests (no weights): a pure function of the
prompt and the PNG bytes, with prompts that make it misbehave on purpose."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import prip_scoring  # noqa: E402


def stub_value(prompt: str, png: bytes) -> float:
    """The score the stub gives: byte sum mod 1000 / 1000, plus len(prompt) / 100."""
    return (sum(png) % 1000) / 1000.0 + len(prompt) / 100.0


class StubScorer(prip_scoring.Scorer):
    name = "stub"
    version = "0.1"

    def score(self, prompt, pngs):
        if prompt == "fail":
            raise RuntimeError("the model broke")
        scores = [stub_value(prompt, p) for p in pngs]
        if prompt == "nan":
            scores[0] = float("nan")
        if prompt == "wrong count":
            scores = scores[:-1]
        return scores


def main():
    """Serves the stub on 127.0.0.1 (a free port), prints the port, serves until killed."""
    server = prip_scoring.serve(prip_scoring.Service([StubScorer()]), "127.0.0.1", 0)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
