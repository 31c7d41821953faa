"""benchmarks/results_table.py: the table every benchmark prints is the CSV it writes."""
import csv

from benchmarks.results_table import print_and_write


def test_table_and_csv_hold_the_same_rows_in_column_order(tmp_path, capsys):
    rows = [{"mode": "default", "s_per_node": 0.25, "identical": False},
            {"mode": "deterministic", "s_per_node": 1.5, "identical": True}]
    path = print_and_write(rows, tmp_path / "new" / "bench.csv", title="Reproducibility")

    with path.open(newline="") as fh:
        assert list(csv.DictReader(fh)) == [{k: str(v) for k, v in r.items()} for r in rows]
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "Reproducibility"
    header, first, second = lines[2:5]
    assert header.split() == ["mode", "s_per_node", "identical"]
    # columns are aligned: every value starts where its header does
    assert first.index("0.25") == second.index("1.5") == header.index("s_per_node")
    assert lines[-1] == f"wrote {path}"
