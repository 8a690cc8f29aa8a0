"""scripts/measure_quickstart.py: timings of the README commands and the machine description."""

from eval_fixtures import load_script

measure = load_script("scripts/measure_quickstart.py")


def test_machine_names_cpu_cores_and_load():
    info = measure.machine()
    assert info["cpu"] and info["cores"] >= 1 and isinstance(info["amx"], bool)
    assert info["load_before"] >= 0


def test_demo_setup_time_is_read_from_its_step_lines(tmp_path, monkeypatch):
    script = ("echo '=== [   0s] choosing the Python environment'; "
              "echo '=== [  37s] generating the synthetic dataset in ./data'; "
              "python3 -c 'sum(range(3_000_000))'")
    monkeypatch.setitem(measure.COMMANDS, "demo", ["bash", "-c", script])
    result = measure.run("demo", tmp_path, tmp_path)
    assert result["returncode"] == 0 and result["setup_s"] == 37.0
    assert 0 < result["cpu_s"] < result["wall_s"] + 1  # the python child's CPU time is counted
    assert "generating the synthetic dataset" in (tmp_path / "demo.log").read_text()


def test_test_setup_time_is_wall_minus_what_pytest_reports(tmp_path, monkeypatch):
    for closing in ("===== 530 passed, 2 skipped, 3 deselected in 0.25s (0:00:00) =====",
                    "1 failed, 10 passed in 0.25s"):
        monkeypatch.setitem(measure.COMMANDS, "tests",
                            ["bash", "-c", f"sleep 0.5; echo '{closing}'; exit 1"])
        result = measure.run("tests", tmp_path, tmp_path)
        assert result["returncode"] == 1
        assert abs(result["setup_s"] - (result["wall_s"] - 0.25)) < 0.11
