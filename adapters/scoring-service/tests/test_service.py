"""The scoring service's protocol layer and its ImageReward/HPSv2 adapters, with the
packages' model construction (where weights would download) replaced by stubs."""

import base64
import json
import threading
import urllib.error
import urllib.request

import pytest

import prip_scoring
from stub_scorer import StubScorer, stub_value

PNG = prip_scoring.PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR fake image bytes"
PNG2 = prip_scoring.PNG_SIGNATURE + b"another"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture()
def url():
    server = prip_scoring.serve(prip_scoring.Service([StubScorer()]), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(url, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/score", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_info_names_protocol_and_scorers(url):
    with urllib.request.urlopen(url + "/info", timeout=10) as r:
        info = json.loads(r.read())
    assert info == {"protocol": "prip-score/1", "scorers": [{"name": "stub", "version": "0.1"}], "default": "stub"}


def test_one_score_per_image_in_order(url):
    status, answer = post(url, {"prompt": "a cat", "images": [b64(PNG), b64(PNG2)]})
    assert status == 200
    assert answer["scorer"] == "stub" and answer["version"] == "0.1"
    assert answer["scores"] == pytest.approx([stub_value("a cat", PNG), stub_value("a cat", PNG2)])


def test_nan_becomes_null(url):
    status, answer = post(url, {"prompt": "nan", "images": [b64(PNG), b64(PNG2)]})
    assert status == 200
    assert answer["scores"][0] is None and answer["scores"][1] == pytest.approx(stub_value("nan", PNG2))


@pytest.mark.parametrize(
    "body,status,needle",
    [
        (b"{not json", 400, "not JSON"),
        ({"images": ["x"]}, 400, "prompt"),
        ({"prompt": "a", "images": []}, 400, "non-empty"),
        ({"prompt": "a", "images": ["%%%"]}, 400, "base64"),
        ({"prompt": "a", "images": [b64(b"GIF89a")]}, 400, "not a PNG"),
        ({"prompt": "a", "images": [b64(PNG)], "scorer": "pickscore"}, 404, "no scorer 'pickscore'"),
        ({"prompt": "a", "images": [b64(PNG)] * 65}, 413, "at most 64"),
        ({"prompt": "fail", "images": [b64(PNG)]}, 500, "the model broke"),
    ],
)
def test_bad_requests_get_error_answers(url, body, status, needle):
    got, answer = post(url, body)
    assert got == status
    assert needle in answer["error"]


class FakeImageReward:
    """ImageReward's model: score() returns a float for one image, a list for several."""

    def score(self, prompt, images):
        values = [len(prompt) + i for i, _ in enumerate(images)]
        return values[0] if len(values) == 1 else values


def test_imagereward_adapter_reads_both_answer_shapes(monkeypatch):
    monkeypatch.setattr(prip_scoring, "_pil_images", lambda pngs: list(pngs))
    seen = {}

    def loader(device):
        seen["device"] = device
        return FakeImageReward()

    s = prip_scoring.ImageRewardScorer("cuda:1", loader=loader)
    assert seen["device"] == "cuda:1" and s.name == "imagereward"
    assert s.score("abc", [PNG]) == [3.0]
    assert s.score("abc", [PNG, PNG2]) == [3.0, 4.0]


def test_hpsv2_adapter_reads_numpy_like_answers(monkeypatch):
    monkeypatch.setattr(prip_scoring, "_pil_images", lambda pngs: list(pngs))

    class Arr(list):
        """hpsv2.score returns one 1-element array per image."""

    def loader(device, version):
        assert version == "v2.1"
        return lambda images, prompt: [Arr([0.25 + i]) for i, _ in enumerate(images)]

    s = prip_scoring.Hpsv2Scorer("cpu", "v2.1", loader=loader)
    assert s.version.endswith("/v2.1")
    assert s.score("x", [PNG, PNG2]) == [0.25, 1.25]


def test_non_finite_model_outputs_become_none():
    assert prip_scoring._floats([1.0, float("inf"), "x"], 3) == [1.0, None, None]
    assert prip_scoring._floats(2, 1) == [2.0]


def test_real_png_decodes_when_pillow_is_there():
    Image = pytest.importorskip("PIL.Image")
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format="PNG")
    (img,) = prip_scoring._pil_images([buf.getvalue()])
    assert img.size == (8, 8) and img.mode == "RGB"
