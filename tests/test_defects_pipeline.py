"""Issue 20, pipeline side: each test failed before its fix.

1. an input named by two --input patterns is read once (and the plan says so);
2. an option neither wit-build's nor Beam's exits 2 with a suggestion;
6. a gzipped WARC/WAT is decompressed once, damage still reported from that one pass;
7. site-local IPv6 (fec0::/10) is refused by the address guard;
9. --page-delay and --pages-per-host reach the crawl; robots.txt Crawl-delay still wins.
"""

from __future__ import annotations

import io
import ipaddress

import pyarrow as pa
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline import cli, read_warc
from pipeline.read import plan_inputs, read_unit
from pipeline.status_io import read_status

IN_PROCESS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
GOOD = "a small red circle on a white background"


def rows_of(plan, on_error=None):
    tables = [t for u in plan.units for t in read_unit(u, on_error)]
    return pa.concat_tables(tables).to_pylist() if tables else []


# --- 1. repeated or overlapping --input patterns ------------------------------------------


def _tsv(path, rows):
    path.write_text("url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c in rows), encoding="utf-8")


def test_a_file_named_twice_is_planned_once(tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    _tsv(pool / "x.tsv", [("http://127.0.0.1:9/x.jpg", GOOD)])
    _tsv(pool / "y.tsv", [("http://127.0.0.1:9/y.jpg", GOOD)])
    x = str(pool / "x.tsv")
    x_again = str(pool) + "/./x.tsv"  # another spelling of the same file
    plan = plan_inputs([x, str(pool / "*.tsv"), x_again])
    assert sorted(plan.files) == [x, str(pool / "y.tsv")]
    assert [u["path"] for u in plan.units].count(x) == 1
    assert len(rows_of(plan)) == 2
    assert plan.duplicates_dropped == [x, x_again]
    assert "read once" in capsys.readouterr().err


def test_no_duplicates_means_an_empty_list(tmp_path):
    _tsv(tmp_path / "x.tsv", [("http://127.0.0.1:9/x.jpg", GOOD)])
    assert plan_inputs([str(tmp_path / "x.tsv")]).duplicates_dropped == []


def test_overlapping_inputs_finish_the_job(tmp_path):
    """The issue's run: caption-rejected rows read twice collided on their row: uid."""
    pool = tmp_path / "pool"
    pool.mkdir()
    _tsv(
        pool / "x.tsv",
        [("http://127.0.0.1:9/1.jpg", GOOD), ("http://127.0.0.1:9/2.jpg", ""),
         ("http://127.0.0.1:9/3.jpg", "a")],
    )  # fmt: skip
    (tmp_path / "q.txt").write_text("circle\n", encoding="utf-8")
    out = tmp_path / "out"
    rc = cli.main([
        "--querylist", str(tmp_path / "q.txt"), "--out", str(out), "--no-fetch", "--lid", "none",
        "--input", str(pool / "x.tsv"), "--input", str(pool / "*.tsv"), *IN_PROCESS,
    ])  # fmt: skip
    assert rc == 0
    assert read_status(str(out)).num_rows == 3


# --- 2. unknown options ---------------------------------------------------------------------


BASE = ["--querylist", "q.txt", "--input", "c.tsv", "--out", "o"]


@pytest.mark.parametrize(
    ("typo", "meant"),
    [(["--no-fecth"], "--no-fetch"), (["--per-query-capp", "5"], "--per-query-cap"),
     (["--direct-num-workers=2"], "--direct_num_workers")],
)  # fmt: skip
def test_unknown_option_exits_2_with_a_suggestion(typo, meant, capsys, monkeypatch):
    import pipeline.job

    monkeypatch.setattr(pipeline.job, "run_job", lambda cfg: pytest.fail("the job started"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*BASE, *typo])
    assert exit_info.value.code == 2
    name = typo[0].split("=", 1)[0]
    assert f"unknown option {name} (did you mean {meant}?)" in capsys.readouterr().err


def test_unknown_option_without_a_near_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*BASE, "--zzzzqqqq"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option --zzzzqqqq" in err and "did you mean" not in err


def test_beam_options_still_pass_through(monkeypatch):
    import pipeline.job

    seen = {}

    def fake_run_job(cfg):
        seen["beam_args"] = cfg.beam_args
        raise ValueError("stop here")

    monkeypatch.setattr(pipeline.job, "run_job", fake_run_job)
    beam = ["--runner=PortableRunner", "--job_endpoint", "localhost:8099",
            "--environment_type=LOOPBACK", "--direct_num_workers", "2", "--save_main_session",
            "--experiments=use_runner_v2", "--experiments", "x", "--job-server-timeout", "5",
            "--flink_master", "h:8081", "--parallelism", "4", "--sdk_container_image=i"]  # fmt: skip
    assert cli.main([*BASE, *beam]) == 2  # the fake job's ValueError
    assert seen["beam_args"] == beam


def test_every_registered_beam_option_is_accepted():
    from apache_beam.options.pipeline_options import PipelineOptions

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    import argparse

    names = set()
    for cls in subclasses(PipelineOptions):
        parser = argparse.ArgumentParser(add_help=False)
        try:
            cls._add_argparse_args(parser)
        except Exception:  # noqa: BLE001 - a test-only subclass may clash; others still count
            continue
        names |= {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    assert len(names) > 100
    assert names <= cli.beam_option_names()


# --- 6. WARC/WAT decompressed once ------------------------------------------------------------


def _warc(pages: int) -> bytes:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
    for i in range(pages):
        body = f'<img src="/{i}.jpg" alt="{GOOD} {i}">'.encode() + b" " * 5000
        writer.write_record(
            writer.create_warc_record(
                f"https://s.org/{i}", "response", payload=io.BytesIO(body), http_headers=headers
            )
        )
    return buf.getvalue()


class _CountingOpen:
    """Wraps FileSystems.open: counts opens and the raw bytes read from each path."""

    def __init__(self, real):
        self.real = real
        self.opens = 0
        self.bytes = 0

    def __call__(self, path, *args, **kwargs):
        self.opens += 1
        f = self.real(path, *args, **kwargs)
        counter = self
        real_read = f.read

        def read(*a, **k):
            data = real_read(*a, **k)
            counter.bytes += len(data)
            return data

        f.read = read
        return f


@pytest.mark.parametrize("damaged", [False, True])
def test_gzip_warc_is_read_and_decompressed_once(tmp_path, monkeypatch, damaged):
    data = _warc(40)
    if damaged:
        data = data[: len(data) * 2 // 3]
    path = tmp_path / "a.warc.gz"
    path.write_bytes(data)
    counting = _CountingOpen(read_warc.FileSystems.open)
    monkeypatch.setattr(read_warc.FileSystems, "open", counting)
    errors = []
    rows = rows_of(plan_inputs([str(path)]), lambda p, m: errors.append(m))
    assert counting.opens == 1
    assert counting.bytes <= len(data)
    if damaged:
        assert 10 < len(rows) < 40
        assert len(errors) == 1 and "damaged gzip" in errors[0]
    else:
        assert len(rows) == 40 and errors == []


def test_one_pass_reports_every_kind_of_gzip_damage(tmp_path):
    one = _warc(1)
    cases = {
        "cut.warc.gz": one * 3 + one[: len(one) // 2],
        "text.warc.gz": b"WARC/1.0\r\nthis is not a record\r\n" * 20,
        "bad-deflate.warc.gz": b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate" * 100,
        "cut.wat.gz": one[: len(one) // 2],
        "empty.warc.gz": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    errors = {}
    plan = plan_inputs([str(tmp_path / "*.gz")])
    rows = rows_of(plan, lambda p, m: errors.setdefault(p.rsplit("/", 1)[-1], m))
    assert len(rows) == 3
    assert set(errors) == set(cases) - {"empty.warc.gz"}
    assert all("damaged gzip" in m for m in errors.values()), errors


# --- 7. site-local IPv6 -------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["fec0::1", "fed0::1", "feff:ffff::1", "fec0::1%eth0"])
def test_site_local_ipv6_is_refused(address):
    from pipeline.guard import AddressGuard, classify_address

    assert classify_address(ipaddress.ip_address(address)) == "site_local"
    decision = AddressGuard(resolver=lambda h, p: [address.split("%")[0]]).check(
        "sitelocal.example.com", 80
    )
    assert not decision.allowed and decision.reason.startswith("site_local ")


def test_guard_table_in_the_docs_lists_site_local():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    assert "| `site_local` | fec0::/10" in text


# --- 9. page crawl flags ------------------------------------------------------------------------


class _Robots:
    def __init__(self, delay):
        self.delay = delay

    def crawl_delay(self, url):
        return self.delay


class _Fetcher:
    def __init__(self, delay):
        self.robots = _Robots(delay)


PAGES = [*BASE[:2], "--input", "p.txt", "--out", "o", "--input-format", "pages"]


def test_page_delay_and_pages_per_host_flags_reach_the_crawl():
    from pipeline.crawl import crawl_delay

    args = cli.build_parser().parse_args([*PAGES, "--page-delay", "0.1", "--pages-per-host", "6"])
    opts = cli._crawl_options(args)
    assert (opts.page_delay, opts.pages_in_flight_per_host) == (0.1, 6)
    assert crawl_delay(_Fetcher(None), "http://s.org/a", opts) == 0.1
    assert crawl_delay(_Fetcher(3.0), "http://s.org/a", opts) == 3.0  # robots.txt wins
    defaults = cli._crawl_options(cli.build_parser().parse_args(PAGES))
    assert (defaults.page_delay, defaults.pages_in_flight_per_host) == (1.0, 2)


@pytest.mark.parametrize("bad", [["--page-delay", "-1"], ["--pages-per-host", "0"]])
def test_bad_crawl_flags_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*PAGES, *bad])
    assert exit_info.value.code == 2
    assert bad[0] in capsys.readouterr().err
