import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mit_semseg.app import main as main_module
from mit_semseg.app.main import _is_loopback, _url, main, parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_bad_values():
    args = parse_args([])
    assert (args.host, args.port, args.run, args.device) == ("127.0.0.1", 8000, [], "auto")
    assert (args.max_megapixels, args.max_upload_mb, args.keep_results) == (40, 20, 16)
    assert parse_args(["--run", "a", "--run", "b"]).run == ["a", "b"]
    for bad in (["--port", "70000"], ["--max-megapixels", "0"], ["--keep-results", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(bad)
        assert exit_info.value.code == 2


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("localhost", True),
                                           ("::1", True), ("127.0.0.2", True),
                                           ("0.0.0.0", False), ("192.168.1.5", False),
                                           ("my-host", False)])
def test_only_loopback_hosts_count_as_private(host, loopback):
    assert _is_loopback(host) is loopback


def test_urls():
    assert _url("127.0.0.1", 80) == "http://127.0.0.1:80/"
    assert _url("::1", 8000) == "http://[::1]:8000/"


def _serve_nothing(monkeypatch):
    """uvicorn's Server.run records its sockets and returns at once."""
    uvicorn = pytest.importorskip("uvicorn")
    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(
        (self.config.app, sockets)))
    return served


def test_it_prints_the_url_and_warns_when_other_machines_can_reach_it(runs, monkeypatch, capsys,
                                                                        caplog):
    served = _serve_nothing(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert main(["--run", str(runs[0].folder), "--port", "0", "--device", "cpu"]) == 0
    (_, sockets), = served
    port = sockets[0].getsockname()[1]
    assert capsys.readouterr().out == (f"mit-semseg-app: 9 models on cpu; open "
                                       f"http://127.0.0.1:{port}/ (Ctrl-C to stop)\n")
    assert "reachable from other machines" not in caplog.text
    sockets[0].close()
    assert main(["--host", "0.0.0.0", "--port", "0", "--device", "cpu"]) == 0
    served[-1][1][0].close()
    assert "--host 0.0.0.0: the page is reachable from other machines" in caplog.text
    assert f"open http://{socket.gethostname()}:" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--run", "/no/such/run"], "--run /no/such/run: no such folder"),
    (["--device", "tpu"], '--device tpu: use "cpu", "cuda", "cuda:N" or "auto"'),
])
def test_a_setup_error_is_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    _serve_nothing(monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mit-semseg-app: error: {message}") and err.count("\n") == 1


def test_a_taken_port_is_one_line_and_exit_2(capsys, monkeypatch):
    _serve_nothing(monkeypatch)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        assert main(["--port", str(port), "--device", "cpu"]) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert err.startswith(f"mit-semseg-app: error: cannot listen on 127.0.0.1:{port} (")
    assert err.endswith("choose another --port (0 picks a free one)\n")


def test_without_the_apps_packages_it_says_what_to_install(monkeypatch, capsys):
    real = main_module.importlib.util.find_spec
    monkeypatch.setattr(main_module.importlib.util, "find_spec",
                        lambda name: None if name == "uvicorn" else real(name))
    assert main([]) == 2
    assert capsys.readouterr().err == ("mit-semseg-app: error: the page needs uvicorn: "
                                       "pip install 'mit_semseg[app]'\n")


def test_python_dash_m_runs_it():
    done = subprocess.run([sys.executable, "-m", "mit_semseg.app", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mit-semseg-app ")
    assert "--run DIR" in done.stdout and "pip install 'mit_semseg[app]'" in done.stdout
