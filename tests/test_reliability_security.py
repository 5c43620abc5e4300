"""Security: nobody gets in. The address guard's decision table (no connection opened),
redirects into private space on a loopback-only fixture web, tar member names that cannot
escape, checkpoints that cannot run code, and opt-outs honoured end to end.

Every packet these tests send goes to 127.0.0.1; `no_foreign_connections` fails a test that
would open a socket to any other address.
"""

from __future__ import annotations

import ast
import io
import os
import re
import socket
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reliability_helpers import (
    IN_PROCESS,
    ROOT,
    assert_status_invariant,
    build,
    odd_images,
    tar_members,
    write_queries,
)

from pipeline import guard as guard_mod
from pipeline.fetch import Fetcher, FetchOptions, x_robots_opt_out
from pipeline.fixtures.web import FixtureWeb
from pipeline.guard import AddressGuard

PUBLIC = "93.184.215.14"
#: Fake DNS: name -> answers. Names not here fail to resolve.
DNS = {
    "public.example": [PUBLIC],
    "internal.example": ["10.1.2.3"],
    "metadata.example": ["169.254.169.254"],
    "rebind.example": [PUBLIC, "127.0.0.2"],
    "cgnat.example": ["100.64.1.1"],
    "ula.example": ["fd00::5"],
    "mapped.example": ["::ffff:10.0.0.1"],
    "linklocal6.example": ["fe80::1"],
}


class FakeResolver:
    """Answers from DNS and records each question; never touches the network."""

    def __init__(self):
        self.asked: list[str] = []

    def __call__(self, host: str, port: int):
        self.asked.append(host)
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return DNS[host]


@pytest.fixture(autouse=True)
def no_foreign_connections(monkeypatch):
    """Fail on any TCP connection that is not to loopback 127.0.0.1 (the fixture web)."""
    real = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1"):
            raise AssertionError(f"a test tried to connect to {address!r}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", _no_dns)


def _no_dns(host, *args, **kwargs):
    if host in ("127.0.0.1", "::1", "localhost") or host is None:
        return _real_getaddrinfo(host, *args, **kwargs)
    raise AssertionError(f"a test tried to resolve {host!r} with the system resolver")


_real_getaddrinfo = socket.getaddrinfo

# --- the decision function, against a table ----------------------------------------------------

#: host -> (allowed, words the reason must contain). None as reason: allowed.
TABLE = {
    "169.254.169.254": (False, "metadata"),
    "2852039166": (False, "metadata"),  # 169.254.169.254 in decimal
    "::ffff:127.0.0.1": (False, "ipv4_mapped"),
    "[::ffff:127.0.0.1]": (False, "ipv4_mapped"),
    "::ffff:169.254.169.254": (False, ""),
    "0.0.0.0": (False, "unspecified"),
    "0": (False, "unspecified"),
    "[::]": (False, "unspecified"),
    "2130706433": (False, "loopback"),  # decimal 127.0.0.1
    "0x7f000001": (False, "loopback"),  # hex
    "0x7F.0.0.1": (False, "loopback"),
    "0177.0.0.1": (False, "loopback"),  # octal
    "017700000001": (False, "loopback"),
    "127.1": (False, "loopback"),
    "127.255.255.254": (False, "loopback"),
    "localhost": (False, "loopback"),
    "LOCALHOST.": (False, "loopback"),
    "api.localhost": (False, "loopback"),
    "[::1]": (False, "loopback"),
    "10.0.0.1": (False, "private"),
    "172.16.5.4": (False, "private"),
    "192.168.0.1": (False, "private"),
    "0xa.0.0.1": (False, "private"),
    "100.64.0.1": (False, "cgnat"),
    "100.127.255.254": (False, "cgnat"),
    "fc00::1": (False, "private"),
    "fd12:3456:789a::1": (False, "private"),
    "fe80::1": (False, "link_local"),
    "fe80::1%eth0": (False, "link_local"),
    "febf::1": (False, "link_local"),
    "224.0.0.1": (False, "multicast"),
    "ff02::1": (False, "multicast"),
    "240.0.0.1": (False, "240.0.0.1"),  # reserved (Python files it under private)
    "192.0.0.170": (False, "192.0.0.170"),  # IETF protocol assignments
    "64:ff9b::a00:1": (False, "tunnel_to_private"),  # NAT64 of 10.0.0.1
    "2002:7f00:1::": (False, "tunnel_to_loopback"),  # 6to4 of 127.0.0.1
    "256.1.1.1": (False, "bad_ip_literal"),
    "1.2.3.0x100": (False, "bad_ip_literal"),
    "internal.example": (False, "private"),
    "metadata.example": (False, "metadata"),
    "rebind.example": (False, "loopback"),
    "cgnat.example": (False, "cgnat"),
    "ula.example": (False, "private"),
    "mapped.example": (False, "ipv4_mapped"),
    "linklocal6.example": (False, "link_local"),
    "100.128.0.1": (True, None),  # just above 100.64/10
    "172.32.0.1": (True, None),  # just above 172.16/12
    "8.8.8.8": (True, None),
    "2606:4700:4700::1111": (True, None),
    "public.example": (True, None),
    "PUBLIC.EXAMPLE.": (True, None),
}


@pytest.mark.parametrize("host", sorted(TABLE))
def test_guard_decision_table(host):
    allowed, words = TABLE[host]
    resolver = FakeResolver()
    decision = AddressGuard(resolver=resolver).check(host, 80)
    assert decision.allowed is allowed, decision
    if allowed:
        assert decision.address and decision.status is None
    else:
        assert decision.status == "blocked_address" and decision.address is None
        assert words in decision.reason
    # Only real names reach DNS; IP literals in any spelling and localhost never do.
    name = host.rstrip(".").lower()
    assert resolver.asked == ([name] if name in DNS else [])


def test_names_that_do_not_resolve_fail_without_a_block():
    decision = AddressGuard(resolver=FakeResolver()).check("nowhere.example", 80)
    assert (decision.allowed, decision.status) == (False, "fetch_failed")


def test_a_public_answer_is_pinned():
    decision = AddressGuard(resolver=FakeResolver()).check("public.example", 443)
    assert decision.address == PUBLIC


# --- redirects into private space, on a loopback fixture web ------------------------------------


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    images = tmp_path_factory.mktemp("sec-images")
    (images / "a.jpg").write_bytes(odd_images()["grey.jpg"])
    with FixtureWeb(image_dir=images) as server:
        yield server


def redirect_targets(port: int) -> dict[str, str]:
    return {
        "metadata": "http://169.254.169.254/latest/meta-data/iam/",
        "private": "http://10.0.0.1/a.jpg",
        "mapped-loopback": f"http://[::ffff:127.0.0.1]:{port}/images/a.jpg",
        "other-loopback-decimal": f"http://2130706434:{port}/images/a.jpg",
        "other-loopback-hex": f"http://0x7f000002:{port}/images/a.jpg",
        "localhost": f"http://localhost:{port}/images/a.jpg",
        "name-to-private": f"http://internal.example:{port}/images/a.jpg",
        "name-to-metadata": "http://metadata.example/latest/",
        "rebinding-name": f"http://rebind.example:{port}/images/a.jpg",
        "cgnat": "http://100.100.1.1/a.jpg",
        "ula": "http://[fd00::1]/a.jpg",
        "link-local-v6": "http://[fe80::1]/a.jpg",
    }


@pytest.mark.parametrize("name", sorted(redirect_targets(1)))
def test_redirect_into_private_space_is_blocked(web, name, monkeypatch):
    from urllib.parse import quote

    target = redirect_targets(web.port)[name]
    connected = []
    real = guard_mod.urllib3_connection.create_connection

    def record(address, *args, **kwargs):
        connected.append(address[0])
        return real(address, *args, **kwargs)

    monkeypatch.setattr(guard_mod.urllib3_connection, "create_connection", record)
    options = FetchOptions(allowed_networks=("127.0.0.1/32",), retries=0, total_timeout=10)
    fetcher = Fetcher(options, resolver=FakeResolver())
    web.reset_hits()
    try:
        result = fetcher.fetch(web.url("/e/redirect-to?url=" + quote(target, safe="")))
    finally:
        fetcher.close()
    assert result.status == "blocked_address", (result.status, result.reason)
    assert result.redirects == 1
    assert set(connected) == {"127.0.0.1"}  # the only address ever connected to
    assert web.hits("/images/a.jpg") == 0


def test_the_job_without_the_switch_sends_nothing_to_loopback(web, tmp_path):
    """Without --allow-private-addresses every loopback URL ends blocked_address and the
    server sees no request at all (not even robots.txt)."""
    urls = [web.url("/images/a.jpg"), web.url("/private/x.jpg"),
            f"http://localhost:{web.port}/images/a.jpg", f"http://2130706433:{web.port}/images/a.jpg",
            f"http://[::ffff:127.0.0.1]:{web.port}/images/a.jpg"]  # fmt: skip
    captions = [f"a red circle photo number {i}" for i in range(len(urls))]
    pq.write_table(pa.table({"url": urls, "caption": captions}), tmp_path / "c.parquet")
    web.reset_hits()
    rc = build(write_queries(tmp_path), tmp_path / "out", [tmp_path / "c.parquet"], *IN_PROCESS,
               fetch=True)  # fmt: skip
    assert rc == 0
    rows = assert_status_invariant(tmp_path / "out", len(urls))
    assert {r["status"] for r in rows} == {"blocked_address"}
    assert web.requests == []


# --- opt-outs, end to end ---------------------------------------------------------------------


def test_robots_and_x_robots_tag_are_honoured_by_the_job(web, tmp_path):
    paths = {"/private/one.jpg": ("opted_out", "robots.txt"),
             "/private/deep/two.jpg": ("opted_out", "robots.txt"),
             "/e/noai.jpg": ("opted_out", "x-robots-tag noai"),
             "/e/noimageai.jpg": ("opted_out", "x-robots-tag noimageai"),
             "/images/a.jpg": ("kept", None)}  # fmt: skip
    urls = [web.url(p) for p in paths]
    captions = [f"a red circle photo number {i}" for i in range(len(urls))]
    pq.write_table(pa.table({"url": urls, "caption": captions}), tmp_path / "c.parquet")
    web.reset_hits()
    rc = build(write_queries(tmp_path), tmp_path / "out", [tmp_path / "c.parquet"],
               "--allow-private-addresses", *IN_PROCESS, fetch=True)  # fmt: skip
    assert rc == 0
    rows = {r["url"]: r for r in assert_status_invariant(tmp_path / "out", len(urls))}
    for path, (status, reason) in paths.items():
        assert (rows[web.url(path)]["status"], rows[web.url(path)]["reason"]) == (status, reason)
    assert web.hits("/private/one.jpg") == web.hits("/private/deep/two.jpg") == 0
    assert web.hits("/robots.txt") >= 1
    agents = {agent for _m, _p, agent in web.requests}
    assert agents and all(a.startswith("wit-builder/") for a in agents)


@pytest.mark.parametrize(
    "header,expected",
    [("noai", "noai"), ("NoImageAI", "noimageai"), ("noindex, nofollow", "noindex"),
     ("googlebot: noai", None), ("wit-builder: noimageai", "noimageai"),
     ("max-image-preview: large", None), ("otherbot: noai, wit-builder: none", "none"),
     ("", None), ("unavailable_after: 25 Jun 2030 15:00:00 PST", None)],
)  # fmt: skip
def test_x_robots_tag_directives(header, expected):
    assert x_robots_opt_out(header) == expected


# --- tar member names ---------------------------------------------------------------------------

SAFE_MEMBER = re.compile(r"^[0-9a-f]{16}\.(jpg|txt|json)$")


@pytest.fixture(scope="module")
def built_shards(web, tmp_path_factory):
    root = tmp_path_factory.mktemp("sec-shards")
    urls = [web.url("/images/a.jpg") + f"?n={i}" for i in range(3)]
    captions = ["../../etc/passwd red circle", "/abs/path red circle", "a\\..\\..\\red circle"]
    pq.write_table(pa.table({"url": urls, "caption": captions}), root / "c.parquet")
    rc = build(write_queries(root), root / "out", [root / "c.parquet"], "--allow-private-addresses",
               "--image-size", "32", *IN_PROCESS, fetch=True)  # fmt: skip
    assert rc == 0
    return root / "out"


def test_written_member_names_are_plain_file_names(built_shards):
    members = tar_members(built_shards)
    assert members and all(SAFE_MEMBER.match(n) for tar in members.values() for n in tar)
    for tar_path in sorted((built_shards / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            assert all(m.isreg() and m.mode == 0o644 for m in tar.getmembers())


def test_written_shards_extract_inside_the_target_under_the_data_filter(built_shards, tmp_path):
    for tar_path in sorted((built_shards / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp_path / "x", filter="data")
    assert all(p.parent == tmp_path / "x" for p in (tmp_path / "x").rglob("*"))


def hostile_tar(good_jpg: bytes, outside: Path) -> bytes:
    """A shard whose member names and links try to reach outside the reader's folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name, data=b"", kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("../escape.txt", b"a red circle that escaped")
        add(f"{outside}/absolute.txt", b"a red circle written by absolute path")
        add("k1/../../up.jpg", good_jpg)
        add("k2.txt", kind=tarfile.SYMTYPE, link="/etc/hostname")
        add("k2.jpg", kind=tarfile.SYMTYPE, link=f"{outside}/secret.jpg")
        add("k3.txt", kind=tarfile.LNKTYPE, link="/etc/passwd")
        add("k4.jpg", good_jpg)
        add("k4.txt", b"a red circle that is fine")
    return buf.getvalue()


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_hostile_member_names_do_not_escape_when_shards_are_read(tmp_path, monkeypatch):
    from train.data import iter_captions
    from train.eval.datasets import iter_shard_samples

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"SECRET")
    work = tmp_path / "work" / "shards"
    work.mkdir(parents=True)
    shard = work / "00000.tar"
    shard.write_bytes(hostile_tar(odd_images()["grey.jpg"], outside))
    monkeypatch.chdir(work)
    before = _tree(tmp_path)
    captions = list(iter_captions([str(shard)]))
    samples = list(iter_shard_samples([str(shard)]))
    assert _tree(tmp_path) == before  # nothing written anywhere
    secret = (outside / "secret.jpg").read_bytes()
    etc = [Path(p).read_bytes() for p in ("/etc/hostname", "/etc/passwd") if Path(p).is_file()]
    blobs = [c.encode() for c in captions] + [v for s in samples for v in s.values()
                                              if isinstance(v, bytes)]  # fmt: skip
    assert all(secret not in b and not any(e and e in b for e in etc) for b in blobs)
    assert "a red circle that is fine" in captions


# --- checkpoints cannot run code ----------------------------------------------------------------


class _Payload:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_with_a_code_payload_is_refused_and_nothing_runs(tmp_path):
    import torch

    from train.checkpoint import load_checkpoint, load_model
    from train.eval.load import LoadError, load_for_eval

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError):
        load_model(path)
    with pytest.raises(LoadError):
        load_for_eval(str(path))
    assert not marker.exists()


def test_every_torch_load_in_the_packages_passes_weights_only_true():
    calls = []
    for folder in ("train", "pipeline", "querylist"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch"):  # fmt: skip
                    kw = {k.arg: k.value for k in node.keywords}
                    ok = isinstance(kw.get("weights_only"), ast.Constant) and kw[
                        "weights_only"].value is True  # fmt: skip
                    calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", ok))
    assert calls, "expected torch.load calls in train/"
    assert [c for c, ok in calls if not ok] == []
