"""BL-7.6: ``backlink costs`` (rows, tables, JSON, errors) and the paper-style benchmark."""
import json

import pytest

from backlink.experiments.cli import main
from backlink.reference.costs import PAPER_CLAIMS, cost_rows, format_paper_table, paper_footer
from backlink.reference.flops import partition_costs
from backlink.reference.memory import activation_bytes
from backlink.reference.models import INFOPRO_TABLES, build_model, cuts_from_table, make_partition
from backlink.reference.simulator import simulate
from backlink.spec import Method


def test_rows_are_the_models_figures():
    rows = cost_rows(["resnet32"], [16], Ks=(8,), Ps=(0, 1, 3))
    bp, greedy, link, too_long = rows
    graph = build_model("resnet32")
    part = make_partition(graph, cuts_from_table(graph, INFOPRO_TABLES[32, 8]))
    assert greedy["cuts_from"] == "infopro" and greedy["cuts"] == list(part.cuts)
    assert bp["memory_reduction"] == 0 and bp["runtime_reduction"] == 0
    want = activation_bytes(graph, part, Method("backlink", link_length=1), 16, "float32").peak
    assert link["memory_bytes"] == want
    t = simulate("backlink", **partition_costs(graph, part, 16), link_length=1, batches=100).makespan
    assert link["runtime"] == t
    assert link["memory_vs_greedy"] == pytest.approx(want / greedy["memory_bytes"] - 1)
    assert 0 < greedy["memory_reduction"] and link["memory_reduction"] < greedy["memory_reduction"]
    assert "error" in too_long and "link_length" in too_long["error"]


def test_even_cuts_where_infopro_has_no_table():
    (_, row) = cost_rows(["resnet8"], [4], Ks=(3,), Ps=(1,))
    assert row["cuts_from"] == "even" and len(row["cuts"]) == 2


def test_cli_table_json_and_footer(capsys):
    assert main(["costs", "--models", "resnet110", "--batch", "8", "--K", "2", "16", "--P", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "resnet110 (32x32x3), batch 8" in out and "infopro" in out and "even" in out
    assert f"{100 * PAPER_CLAIMS['memory_reduction']:.0f}% less memory" in out
    assert main(["costs", "--models", "resnet8", "--batch", "4", "--K", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in data["rows"]] == ["bp", "greedy", "backlink", "backlink", "backlink"]
    assert main(["costs", "--models", "resnet8", "--batch", "4", "--K", "2", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "BackLink P=1" in out
    assert "Paper (Guo" not in out  # the footer is for ResNet-110 only


def test_cli_errors_name_the_field(capsys):
    assert main(["costs", "--models", "resnet8", "--batch", "4", "8", "16"]) == 2
    assert "field 'batch'" in capsys.readouterr().err
    assert main(["costs", "--models", "resnet9"]) == 2
    assert "field 'model'" in capsys.readouterr().err


def test_paper_table_and_footer_pick_the_best_backlink_rows():
    rows = cost_rows(["resnet110"], [4], Ks=(4, 16), Ps=(0, 1))
    table = format_paper_table(rows)
    assert table.splitlines()[1].split() == ["K", "greedy", "BackLink", "P=1"]
    best = max((r for r in rows if r["method"] == "backlink"), key=lambda r: r["memory_reduction"])
    assert f"{100 * best['memory_reduction']:.0f}% activation memory (K={best['K']}, P=1)" in paper_footer(rows)


def test_benchmark_script_checks_the_model(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "costs_table.py"
    spec = importlib.util.spec_from_file_location("costs_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert len(mod.check_model_against_engine(n=2)) == 4


def test_the_spec_resnet110_table_is_the_tools():
    """spec/costs.md (BL-7.6) quotes the ResNet-110 table: each row must read as the tool prints it."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "spec" / "costs.md").read_text()
    quoted = [line.replace("|", " ").split() for line in text.splitlines() if line.startswith("| ") and "% /" in line]
    printed = format_paper_table(cost_rows(["resnet110"], [128])).splitlines()
    assert quoted == [line.split() for line in printed if "% /" in line]
