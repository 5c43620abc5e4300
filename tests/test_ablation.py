"""bench/ablation_balance.py and its report helpers, and a tiny end-to-end run of the real\ncommands (wit-build, wit-train, wit-eval) that checks the JSON against the docs table."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "ablation_balance.py"


def _load():
    spec = importlib.util.spec_from_file_location("ablation_balance", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ablation_balance"] = mod
    spec.loader.exec_module(mod)
    return mod


ab = _load()
import ablation_report as rep  # noqa: E402 - importable once the script put bench/ on the path


def test_scaled_cap_keeps_the_requested_share_of_a_zipf_pool():
    from pipeline.fixtures.longtail import zipf_counts

    counts = zipf_counts(150, 30000, 1.1)
    t = ab.scaled_cap(counts, 0.25)
    kept = sum(min(c, t) for c in counts)
    below = sum(min(c, t - 1) for c in counts)
    assert kept >= 0.25 * 30000 > below  # the smallest such cap
    # On this pool the share rule lands near the median count and caps the whole head.
    assert abs(t - statistics.median(counts)) <= 0.1 * statistics.median(counts)
    assert all(c > t for c in counts[:50])
    assert ab.scaled_cap(counts, 1.0) == max(counts)
    with pytest.raises(ValueError):
        ab.scaled_cap(counts, 0.0)


def test_frequency_thirds_rank_by_pool_count():
    counts = {"a": 1, "b": 50, "c": 7, "d": 7, "e": 3, "f": 90, "g": 2}
    thirds = ab.frequency_thirds(counts)
    assert thirds == {"head": ["f", "b"], "torso": ["c", "d", "e"], "tail": ["g", "a"]}
    assert sorted(sum(thirds.values(), [])) == sorted(counts)


def test_group_views_keep_every_class_but_only_the_group_images(tmp_path):
    test = tmp_path / "test"
    for cls in ("red_circle", "blue_star", "green_square"):
        (test / cls).mkdir(parents=True)
        for i in range(2):
            (test / cls / f"{i}.jpg").write_bytes(b"x")
    groups = {"head": ["red circle"], "torso": ["blue star"], "tail": ["green square"]}
    views = ab.make_group_views(test, groups, tmp_path / "views")
    tail = views["tail"]
    assert sorted(p.name for p in tail.iterdir()) == ["blue_star", "green_square", "red_circle"]
    assert len(list((tail / "green_square").iterdir())) == 2
    assert list((tail / "red_circle").iterdir()) == []
    with pytest.raises(ab.AblationError, match="no folder"):
        ab.make_group_views(test, {"head": ["purple ring"]}, tmp_path / "v2")


def test_replace_section_rewrites_only_the_marked_part():
    old = f"# Experiments\n\nintro\n\n{rep.SECTION_BEGIN}\nold table\n{rep.SECTION_END}\n\nafter\n"
    new = rep.replace_section(old, f"{rep.SECTION_BEGIN}\nnew table\n{rep.SECTION_END}")
    assert "old table" not in new and "new table" in new
    assert new.startswith("# Experiments\n\nintro") and new.endswith("after\n")
    appended = rep.replace_section("# Experiments\n", f"{rep.SECTION_BEGIN}\nx\n{rep.SECTION_END}")
    assert appended.count(rep.SECTION_BEGIN) == 1


def test_verdict_claims_a_difference_only_beyond_the_seed_noise():
    def runs(b_tail):
        out = []
        for seed, (bt, ut) in enumerate(zip(b_tail, [0.10, 0.12, 0.11], strict=True)):
            base = {"top1": 0.5, "mean_per_class_recall": 0.5, "head": 0.8, "torso": 0.5}
            out.append({"seed": seed, "corpus": "balanced", **base, "tail": bt})
            out.append({"seed": seed, "corpus": "unbalanced", **base, "tail": ut})
        return out

    assert "tail recall +20.0 points (balanced better)" in rep.verdict(
        rep.summarize(runs([0.30, 0.32, 0.31]))
    )
    assert "tail recall +0.0 points (within" in rep.verdict(rep.summarize(runs([0.10, 0.12, 0.11])))


def _pct(stat_text: str) -> tuple[float, float | None]:
    mean, _, std = stat_text.partition(" ± ")
    return float(mean), (float(std) if std else None)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_run_writes_json_and_a_docs_table_that_agree(tmp_path):
    out = tmp_path / "ablation.json"
    docs = tmp_path / "experiments.md"
    docs.write_text(
        f"# Experiments\n\nhand-written text\n\n{rep.SECTION_BEGIN}\nstale\n{rep.SECTION_END}\n"
    )
    plot = tmp_path / "img" / "ablation.png"
    argv = [
        "--out", str(out), "--seeds", "2", "--work", str(tmp_path / "work"),
        "--docs", str(docs), "--plot", str(plot),
        "--n-concepts", "6", "--n-pairs", "150", "--test-per-class", "3",
        "--steps", "3", "--batch-size", "8", "--warmup", "1", "--vocab", "600",
        "--build-arg=--lid=none",
    ]  # fmt: skip
    assert ab.main(argv) == 0

    result = json.loads(out.read_text())
    runs = result["runs"]
    assert len(runs) == 4
    assert {(r["seed"], r["corpus"]) for r in runs} == {
        (s, c) for s in (0, 1) for c in ("balanced", "unbalanced")
    }
    for r in runs:
        assert set(r) == {
            "seed",
            "corpus",
            "top1",
            "mean_per_class_recall",
            "head",
            "torso",
            "tail",
        }
        for m in rep.METRICS:
            assert 0.0 <= r[m] <= 1.0
        # uniform test set, equal thirds: top-1 is the mean of the three thirds' recalls
        assert r["top1"] == pytest.approx((r["head"] + r["torso"] + r["tail"]) / 3, abs=1e-9)
        assert r["mean_per_class_recall"] == pytest.approx(r["top1"], abs=1e-9)

    corpora = result["corpora"]
    # Without language ID and with the cap at the largest count, nothing is dropped.
    assert corpora["unbalanced"]["kept"] == 150
    assert corpora["balanced"]["cap"] < corpora["unbalanced"]["cap"]
    assert corpora["balanced"]["kept"] < corpora["unbalanced"]["kept"]
    for q, k in corpora["balanced"]["kept_per_concept"].items():
        assert k <= corpora["balanced"]["cap"], q
    assert result["groups"]["head"] and result["groups"]["tail"]

    # The docs table agrees with the runs in the JSON (recomputed here, not read back).
    text = docs.read_text()
    assert "stale" not in text and "hand-written text" in text
    table = rep.parse_section_table(text)
    assert set(table) == {"balanced", "unbalanced"}
    for corpus, row in table.items():
        assert int(row["pairs kept"].replace(",", "")) == corpora[corpus]["kept"]
        for m in rep.METRICS:
            values = [r[m] for r in runs if r["corpus"] == corpus]
            mean, std = _pct(row[rep.METRIC_TITLES[m]])
            assert mean == pytest.approx(100 * statistics.fmean(values), abs=0.051)
            assert std == pytest.approx(100 * statistics.stdev(values), abs=0.051)
    assert plot.is_file() and plot.stat().st_size > 1000
    assert "img/ablation.png" in text


def test_bad_arguments_fail_with_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        ab.main(["--out", "x.json", "--seeds", "0"])
    assert exc.value.code == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
