"""The fixture web does what each endpoint's name says, checked with plain `requests`."""

from __future__ import annotations

import io
import socket
import threading
import time
import urllib.robotparser
import warnings

import pytest
import requests
from conftest import shared_path
from PIL import Image

from pipeline.fixtures import payloads
from pipeline.fixtures.web import HUGE_BYTES, FixtureWeb


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(root / "sub" / "a.png")
    (root / "b.jpg").write_bytes(payloads.jpeg())
    pages = {
        "gallery": [("/images/b.jpg", 'a red "circle" & more'), ("../images/sub/a.png", "x")],
        "raw": "<html><body><img src=q.jpg alt=raw></body></html>",
    }
    with FixtureWeb(image_dir=root, pages=pages) as server:
        yield server


def _decode(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


def _port_is_closed(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) != 0


# -- serving -------------------------------------------------------------------------------


def test_base_url_is_loopback_with_ephemeral_port(web):
    assert web.base_url.startswith("http://127.0.0.1:")
    assert web.port > 0
    assert web.url("/e/404") == web.base_url + "/e/404"
    assert web.url("e/404") == web.base_url + "/e/404"


def test_images_are_served_with_content_type_from_extension(web):
    r = requests.get(web.url("/images/sub/a.png"), timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "image/png"
    assert _decode(r.content).size == (20, 10)
    r = requests.get(web.url("/images/b.jpg"), timeout=5)
    assert r.headers["Content-Type"] == "image/jpeg"
    assert r.content == payloads.jpeg()


def test_missing_image_and_path_traversal_are_404(web):
    assert requests.get(web.url("/images/nope.jpg"), timeout=5).status_code == 404
    assert requests.get(web.url("/images/../../etc/passwd"), timeout=5).status_code == 404
    assert requests.get(web.url("/images/%2e%2e/%2e%2e/etc/passwd"), timeout=5).status_code == 404


def test_real_photos_from_shared_data_are_served_byte_for_byte():
    folder = shared_path("flickr8k-1k", "images")
    files = sorted(folder.glob("*.jpg"))[:3]
    with FixtureWeb(image_dir=folder) as server:
        for f in files:
            r = requests.get(server.url(f"/images/{f.name}"), timeout=5)
            assert r.status_code == 200
            assert r.content == f.read_bytes()
            _decode(r.content)


def test_pages_have_escaped_img_tags_and_hits_are_counted(web):
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    before = web.hits("/pages/gallery.html")
    r = requests.get(web.url("/pages/gallery.html"), timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    imgs = [(n.attributes["src"], n.attributes["alt"]) for n in HTMLParser(r.text).css("img")]
    assert imgs == [("/images/b.jpg", 'a red "circle" & more'), ("../images/sub/a.png", "x")]
    assert web.hits("/pages/gallery.html") == before + 1
    assert web.hits(web.url("/pages/gallery.html?x=1")) == before + 1
    raw = requests.get(web.url("/pages/raw.html"), timeout=5)
    assert raw.text == "<html><body><img src=q.jpg alt=raw></body></html>"
    assert requests.get(web.url("/pages/absent.html"), timeout=5).status_code == 404
    assert web.hits("/never/asked") == 0


def test_head_requests_get_headers_without_body(web):
    r = requests.head(web.url("/e/noai.jpg"), timeout=5)
    assert r.status_code == 200
    assert r.headers["X-Robots-Tag"] == "noai"
    assert r.content == b""


def test_robots_txt_disallows_private_and_private_still_serves_an_image(web):
    parser = urllib.robotparser.RobotFileParser(web.url("/robots.txt"))
    parser.read()
    assert not parser.can_fetch("wit-builder", web.url("/private/photo.jpg"))
    assert parser.can_fetch("wit-builder", web.url("/images/b.jpg"))
    r = requests.get(web.url("/private/photo.jpg"), timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    _decode(r.content)


# -- misbehaviour --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [404, 500])
def test_error_codes(web, code):
    r = requests.get(web.url(f"/e/{code}"), timeout=5)
    assert r.status_code == code


def test_429_always_with_retry_after(web):
    for _ in range(2):
        r = requests.get(web.url("/e/429"), timeout=5)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"


def test_429_once_then_image_per_token(web):
    first = requests.get(web.url("/e/429-once/tok1.jpg"), timeout=5)
    assert first.status_code == 429 and first.headers["Retry-After"] == "1"
    second = requests.get(web.url("/e/429-once/tok1.jpg"), timeout=5)
    assert second.status_code == 200
    _decode(second.content)
    other = requests.get(web.url("/e/429-once/tok2.jpg"), timeout=5)
    assert other.status_code == 429
    assert web.hits("/e/429-once/tok1.jpg") == 2


def test_slow_outlasts_a_read_timeout(web):
    with pytest.raises(requests.Timeout):
        requests.get(web.url("/e/slow.jpg?s=3"), timeout=(2, 0.5))


def test_slow_answers_with_an_image_when_waited_for(web):
    r = requests.get(web.url("/e/slow.jpg?s=0.2"), timeout=5)
    assert r.status_code == 200
    _decode(r.content)


def test_redirect_chain_has_the_named_length(web):
    r = requests.get(web.url("/e/redirect/4.jpg"), timeout=5)
    assert r.status_code == 200
    assert len(r.history) == 4
    assert all(h.status_code == 302 for h in r.history)
    _decode(r.content)
    with requests.Session() as s:
        s.max_redirects = 3
        with pytest.raises(requests.TooManyRedirects):
            s.get(web.url("/e/redirect/4.jpg"), timeout=5)


def test_redirect_loop_raises_too_many_redirects(web):
    with pytest.raises(requests.TooManyRedirects):
        requests.get(web.url("/e/loop.jpg"), timeout=5)


def test_redirect_to_points_anywhere(web):
    target = web.url("/e/tiny.jpg")
    r = requests.get(web.url("/e/redirect-to"), params={"url": target}, timeout=5)
    assert [h.status_code for h in r.history] == [302]
    assert r.url == target
    r = requests.get(web.url("/e/redirect-to"), allow_redirects=False, timeout=5)
    assert r.status_code == 400
    # The Location header is passed through verbatim, e.g. to a private address.
    r = requests.get(
        web.url("/e/redirect-to"),
        params={"url": "http://169.254.169.254/latest/meta-data/"},
        allow_redirects=False,
        timeout=5,
    )
    assert r.headers["Location"] == "http://169.254.169.254/latest/meta-data/"


def test_huge_body_length_and_early_abort(web):
    with requests.get(web.url("/e/huge.jpg"), stream=True, timeout=10) as r:
        assert r.headers["Content-Type"] == "image/jpeg"
        assert int(r.headers["Content-Length"]) == HUGE_BYTES
        total = sum(len(c) for c in r.iter_content(1 << 20))
    assert total == HUGE_BYTES
    # A client that stops after its byte limit just closes; the server survives it.
    with requests.get(web.url("/e/huge.jpg"), stream=True, timeout=10) as r:
        assert len(r.raw.read(1 << 20)) == 1 << 20
    assert requests.get(web.url("/e/404"), timeout=5).status_code == 404


def test_huge_without_length_is_only_bounded_by_the_reader(web):
    with requests.get(web.url("/e/huge-no-length.jpg"), stream=True, timeout=10) as r:
        assert "Content-Length" not in r.headers
        total = sum(len(c) for c in r.iter_content(1 << 20))
    assert total == HUGE_BYTES


def test_trickle_defeats_a_per_read_timeout(web):
    # The answer takes 1.6 s in all, longer than the 1 s read timeout, yet every read gets
    # bytes within 0.1 s, so the timeout never fires: only a total deadline would stop it.
    r = requests.get(web.url("/e/trickle.jpg?s=1.6"), timeout=(2, 1))
    assert r.status_code == 200
    _decode(r.content)
    assert requests.get(web.url("/e/trickle.jpg?s=x"), timeout=5).status_code == 400


def test_wrong_type_is_a_jpeg_labelled_html(web):
    r = requests.get(web.url("/e/wrong-type.jpg"), timeout=5)
    assert r.headers["Content-Type"].startswith("text/html")
    assert _decode(r.content).format == "JPEG"


def test_truncated_jpeg_fails_to_load(web):
    r = requests.get(web.url("/e/truncated.jpg"), timeout=5)
    assert r.headers["Content-Type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))  # the header still parses
    assert img.format == "JPEG"
    with pytest.raises(OSError, match="truncated"):
        img.load()


def test_not_image_bytes_fail_to_open(web):
    r = requests.get(web.url("/e/not-image.jpg"), timeout=5)
    assert r.headers["Content-Type"] == "image/jpeg"
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(r.content))


def test_bomb_png_is_small_and_trips_pil_bomb_check(web):
    r = requests.get(web.url("/e/bomb.png"), timeout=10)
    assert r.headers["Content-Type"] == "image/png"
    assert len(r.content) < 512 * 1024
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(r.content))
    # With the limit just below its size PIL only warns: the declared size is real.
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = payloads.BOMB_SIDE**2 - 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = Image.open(io.BytesIO(r.content))
        assert img.size == (payloads.BOMB_SIDE, payloads.BOMB_SIDE)
        assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
    finally:
        Image.MAX_IMAGE_PIXELS = old


@pytest.mark.parametrize("tag", ["noai", "noimageai"])
def test_x_robots_tag_opt_out(web, tag):
    r = requests.get(web.url(f"/e/{tag}.jpg"), timeout=5)
    assert r.status_code == 200
    assert r.headers["X-Robots-Tag"] == tag
    _decode(r.content)


def test_empty_and_tiny_images(web):
    r = requests.get(web.url("/e/empty.jpg"), timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert r.content == b""
    r = requests.get(web.url("/e/tiny.jpg"), timeout=5)
    assert _decode(r.content).size == (1, 1)


def test_unknown_fixture_path_is_404(web):
    assert requests.get(web.url("/e/no-such-thing"), timeout=5).status_code == 404


# -- lifecycle -----------------------------------------------------------------------------


def test_port_is_closed_after_exit_even_with_a_sleeping_request():
    with FixtureWeb() as server:
        port = server.port
        errors = []

        def sleeper():
            try:
                requests.get(server.url("/e/slow.jpg?s=30"), timeout=10)
            except requests.RequestException as exc:
                errors.append(exc)

        t = threading.Thread(target=sleeper)
        t.start()
        for _ in range(500):
            if server.hits("/e/slow.jpg"):
                break
            time.sleep(0.01)
        assert server.hits("/e/slow.jpg") == 1
    # Exiting woke the sleeping handler, so the client sees the connection end at once.
    t.join(timeout=5)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], requests.ConnectionError)
    assert _port_is_closed("127.0.0.1", port)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url


def test_two_servers_get_different_ports_and_can_restart():
    with FixtureWeb() as a, FixtureWeb() as b:
        assert a.port != b.port
    a.start()
    try:
        assert requests.get(a.url("/e/404"), timeout=5).status_code == 404
    finally:
        a.stop()
    a.stop()  # stopping twice is harmless


def test_bad_image_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        FixtureWeb(image_dir=tmp_path / "missing")


def _ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback (::1) here")
def test_ipv6_loopback(tmp_path):
    (tmp_path / "a.jpg").write_bytes(payloads.jpeg())
    with FixtureWeb(image_dir=tmp_path, host="::1") as server:
        assert server.base_url.startswith("http://[::1]:")
        r = requests.get(server.url("/images/a.jpg"), timeout=5)
        assert r.status_code == 200 and r.content == payloads.jpeg()
        assert requests.get(server.url("/e/500"), timeout=5).status_code == 500
        port = server.port
    assert _port_is_closed("::1", port)
