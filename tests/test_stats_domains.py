"""wit-stats by domain and link rot, on OUT folders built like tests/test_stats.py builds them.

Expected numbers are computed in plain Python from the rows written, never with the SQL.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_stats import SOURCES, build_out, run_cli

from pipeline.schema import STATUS_SCHEMA
from pipeline.stats.domains import FETCHED

HOSTS = ["img.example.com", "CDN.Example.net", "photos.example.org.", "[2001:db8::1]", ""]


def with_hosts(rows: list[dict]) -> list[dict]:
    """Spread the rows over a few hosts, in odd spellings (case, port, user, trailing dot)."""
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        host = HOSTS[i % len(HOSTS)]
        if host:
            port = ":8080" if i % 3 == 0 else ""
            user = "u:p@" if i % 7 == 0 else ""
            row["url"] = f"https://{user}{host}{port}/p/{i}.jpg?x=1"
        else:
            row["url"] = f"not a url {i}"
        out.append(row)
    return out


def host_of(url: str) -> str:
    if "://" not in url:
        return "(no host)"
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    host = netloc[: netloc.index("]") + 1] if netloc.startswith("[") else netloc.split(":")[0]
    return host.lower().rstrip(".") or "(no host)"


def write_status(root, rows: list[dict]) -> None:
    cols = STATUS_SCHEMA.names
    for old in (root / "status").glob("part-*.parquet"):
        old.unlink()
    for k, src in enumerate(SOURCES):
        part = [{c: r[c] for c in cols} for r in rows if r["source"] == src]
        pq.write_table(
            pa.Table.from_pylist(part, STATUS_SCHEMA), root / f"status/part-{k:05d}.parquet"
        )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs over the same URLs: the later one lost some images and gained opt-outs."""
    base = tmp_path_factory.mktemp("domains")
    earlier, later = base / "EARLIER", base / "LATER"
    data = build_out(earlier)
    rows = with_hosts(data["rows"])
    write_status(earlier, rows)
    shutil.copytree(earlier, later)
    now = []
    for i, row in enumerate(rows):
        row = dict(row)
        if row["status"] == "kept" and i % 5 == 0:
            row.update(status="fetch_failed", reason="http_404", shard=None, key=None)
        elif row["status"] == "kept" and i % 7 == 1:
            row.update(status="fetch_failed", reason="dns nxdomain", shard=None, key=None)
        elif row["status"] == "kept" and i % 11 == 2:
            row.update(status="opted_out", reason="robots.txt", shard=None, key=None)
        elif row["status"] == "kept" and i % 13 == 3:
            row.update(status="not_selected", shard=None, key=None)
        now.append(row)
    write_status(later, now)
    old_time = 1_700_000_000
    os.utime(earlier / "manifest.json", (old_time, old_time))
    os.utime(later / "manifest.json", (old_time + 3 * 86400, old_time + 3 * 86400))
    return dict(earlier=earlier, later=later, before=rows, after=now)


def report(capsys, *argv) -> dict:
    code, out, _ = run_cli(capsys, *argv, "--format", "json")
    assert code == 0
    return json.loads(out)["tables"]


def test_success_rate_and_reasons_by_domain(runs, capsys):
    tables = report(capsys, runs["later"], "--domains", "3")
    fetched = [r for r in runs["after"] if r["status"] in FETCHED]
    by_host = collections.defaultdict(collections.Counter)
    for r in fetched:
        by_host[host_of(r["url"])][r["status"]] += 1
    ranked = sorted(by_host, key=lambda h: (-sum(by_host[h].values()), h))
    rows = tables["domains"]["rows"]
    assert [r["domain"] for r in rows[:3]] == ranked[:3]
    for row in rows[:3]:
        counts = by_host[row["domain"]]
        assert row["fetched"] == sum(counts.values())
        assert row["kept"] == counts["kept"]
        assert row["success_rate"] == pytest.approx(counts["kept"] / sum(counts.values()))
        for status in FETCHED[1:]:
            assert row[status] == counts[status]
    assert rows[3]["domain"] == f"({len(ranked) - 3} other domains)"
    assert rows[-1]["domain"] == f"(all {len(ranked)} domains)"
    assert rows[-1]["fetched"] == len(fetched)
    assert {"img.example.com", "cdn.example.net", "photos.example.org", "[2001:db8::1]",
            "(no host)"} == set(by_host)  # fmt: skip

    reasons = collections.defaultdict(collections.Counter)
    for r in fetched:
        if r["status"] != "kept":
            reasons[host_of(r["url"])][(r["status"], r["reason"] or "")] += 1
    got = collections.defaultdict(list)
    for row in tables["domain_reasons"]["rows"]:
        got[row["domain"]].append(((row["status"], row["reason"]), row["rows"]))
    assert set(got) <= set(ranked[:3])
    for host, found in got.items():
        top = sorted(reasons[host].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        assert found == top
        total = sum(by_host[host].values())
        shares = [r["share_of_domain"] for r in tables["domain_reasons"]["rows"]
                  if r["domain"] == host]  # fmt: skip
        assert shares == pytest.approx([n / total for _, n in top])


def test_domains_zero_leaves_the_tables_out(runs, capsys):
    tables = report(capsys, runs["later"], "--domains", "0")
    assert "domains" not in tables and "domain_reasons" not in tables


def test_link_rot_between_two_runs(runs, capsys):
    tables = report(capsys, runs["later"], "--since", runs["earlier"])
    kept_before = {r["url"] for r in runs["before"] if r["status"] == "kept"}
    now = {}
    for r in sorted(
        runs["after"], key=lambda r: (r["status"] != "kept", r["status"], r["reason"] or "")
    ):
        now.setdefault(r["url"], r)
    outcome = collections.Counter(
        now[u]["status"] if u in now and now[u]["status"] in FETCHED else "gone"
        for u in kept_before
    )
    metric = {r["metric"]: r["value"] for r in tables["link_rot"]["rows"]}
    refetched = sum(n for s, n in outcome.items() if s != "gone")
    assert metric["URLs kept in the earlier run"] == len(kept_before)
    assert metric["of those, fetched again in this run"] == refetched
    assert metric["still kept"] == outcome["kept"]
    assert metric["now fetch_failed"] == outcome["fetch_failed"] > 0
    assert metric["now opted_out"] == outcome["opted_out"] > 0
    assert metric["not fetched in this run"] == outcome["gone"] > 0
    assert metric["link rot rate (failed now / fetched again)"] == pytest.approx(
        outcome["fetch_failed"] / refetched
    )
    assert metric["days between"] == 3.0
    reasons = {(r["status"], r["reason"]): r["rows"] for r in tables["link_rot_reasons"]["rows"]}
    expected = collections.Counter(
        (now[u]["status"], now[u]["reason"])
        for u in kept_before
        if u in now and now[u]["status"] in ("fetch_failed", "opted_out")
    )
    assert reasons == dict(expected)
    lost = collections.Counter(
        host_of(u) for u in kept_before if u in now and now[u]["status"] == "fetch_failed"
    )
    by_domain = {r["domain"]: r["failed_now"] for r in tables["link_rot_domains"]["rows"]}
    assert {h: n for h, n in by_domain.items() if n} == dict(lost)


def test_text_report_shows_rates_as_percentages(runs, capsys):
    code, out, _ = run_cli(capsys, runs["later"], "--since", runs["earlier"], "--domains", "2")
    assert code == 0
    assert "== Fetch outcome by domain (top 2 by fetched rows) ==" in out
    assert "== Link rot since the earlier run" in out
    section = out.split("== Fetch outcome by domain")[1].split("==")[1]
    assert "%" in section


def test_a_missing_earlier_out_is_one_line(runs, capsys, tmp_path):
    code, _, err = run_cli(capsys, runs["later"], "--since", tmp_path / "nowhere")
    assert code == 2 and "not found" in err
