"""`evolveopt bench cluster`: both modes on a private local Ray cluster, from the driver's view."""

from __future__ import annotations

import json

import pytest

from evolveopt.cli import main
from evolveopt.measure.cluster_occupancy import evaluations, format_cluster, profile


def test_profile_is_the_time_weighted_mean_and_the_peak_over_the_window():
    intervals = [(0.0, 4.0), (1.0, 3.0), (2.0, 6.0), (5.0, 9.0)]
    assert profile(intervals, 0.0, 4.0) == (2.0, 3)  # 4 + 2 + 2 covered seconds over 4; three at once in [2, 3)
    assert profile(intervals, 4.0, 8.0) == (1.25, 2)  # 2 + 3 over 4; (0, 4) ends where the window starts
    assert profile([(0.0, 1.0), (1.0, 2.0)], 0.0, 2.0) == (1.0, 1)  # one ending as the next starts: never both
    assert profile(intervals, 3.0, 3.0) == (0.0, 0)


def test_an_evaluation_runs_from_its_first_submission_to_its_last_collection():
    from evolveopt.measure.cluster_occupancy import Record

    class Unit:
        def __init__(self, *genomes):
            self.genomes = tuple({"g": g} for g in genomes)

    records = [Record(1, Unit("a", "b"), 0.0, 2.0, 0.5, 1.5), Record(1, Unit("a"), 0.0, 3.0, 1.5, 2.5),
               Record(2, Unit("a"), 4.0, 5.0, 4.0, 5.0)]  # batch 2: a's next rung, another evaluation
    assert sorted(evaluations(records)) == [(0.0, 2.0), (0.0, 3.0), (4.0, 5.0)]


@pytest.mark.ray
@pytest.mark.slow
def test_bench_cluster_runs_both_modes_on_two_local_workers_and_reports_sane_fields(capsys):
    pytest.importorskip("ray")
    assert main(["bench", "cluster", "--workers", "2", "--generations", "2", "--budget", "6",
                 "--population", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["mode"]: row for row in report["rows"]}
    assert set(rows) == {"generational", "steady_state"}
    gen, steady = rows["generational"], rows["steady_state"]
    for row in rows.values():
        assert row["workers"] == 2 and row["workers_warmed"] == 2 and row["population"] == 8
        assert row["generations"] == 2 and row["budget"] == 6
        assert row["units"] > 0 and row["wall_s"] > 0 and row["genomes_per_s"] > 0
        assert 0 < row["window_s"] <= row["wall_s"] + 0.1
        assert 0 < row["busy"] <= 1 and 0 < row["busy_whole_run"] <= 1
        assert 1 <= row["units_running_max"] <= 2  # never more units running than the cluster's CPUs
        assert row["units_in_flight_max"] >= 1 and row["evaluations_in_flight_max"] >= 1
        assert row["dispatch_ms_per_unit"] > 0 and row["dispatch_cpu_ms_per_unit"] > 0
        assert row["worker_pss_mib"] > 0 and row["memory_available_min_gib"] > 0
    assert steady["genomes"] == 16 and steady["width"] == 4  # 2 epochs × 8; 2 workers × in_flight_per_worker 2
    assert steady["evaluations_in_flight_max"] <= 4
    assert gen["genomes"] == 8 + (8 - 3) and gen["width"] is None  # generation 1 keeps the paper's 3 elites
    assert steady["units"] >= 16  # every evaluation has a unit per task not in the cache
    table = format_cluster(report)
    assert "  2 generational" in table and "  2 steady_state" in table and "busy>=90%" in table
    assert "dispatch<=5ms" in table and "warm-up:" in table


def test_bench_cluster_refuses_bad_options_in_one_line_before_any_cluster_starts(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit:
        main(["bench", "cluster", "--workers", "2,0"])
    assert exit.value.code == 2 and "every worker count must be at least 1" in capsys.readouterr().err
    assert main(["bench", "cluster", "--workers", "2", "--config", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.yaml: no such config file" in err[0]
    assert main(["bench", "cluster", "--workers", "2", "--population", "3"]) == 2  # below the paper's elites
    assert "search.elites" in capsys.readouterr().err
