"""`neuralmatrix cpu-compare`: CPU identity and power, onnxruntime timing, the ratio."""

import json

import pytest

from neuralmatrix.fpga import cpu
from neuralmatrix.fpga.cpu import (AccelResult, CpuResult, Rapl, accelerator_result,
                                   benchmark_cpu, compare, cpu_info)
from neuralmatrix.fpga.power import Activity, estimate_power
from neuralmatrix.hw.params import ConfigError, HwConfig
from neuralmatrix.sw.cli import main

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu avx2

processor\t: 1
vendor_id\t: AuthenticAMD
"""


def test_cpu_info_reads_the_first_processor(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(CPUINFO)
    info = cpu_info(str(f))
    assert (info.vendor, info.family, info.model, info.model_name) == \
        ("AuthenticAMD", 25, 1, "AMD EPYC")
    assert info.known[1] == 280.0 and info.cores >= 1


def test_tdp_share_and_unknown_cpu():
    info = cpu.CpuInfo("AMD EPYC", "AuthenticAMD", 25, 1, 2, cpu.KNOWN_CPUS[("AuthenticAMD", 25, 1)])
    watts, source = cpu._assumed_cpu_watts(info, 2, None)
    assert watts == pytest.approx(280.0 * 2 / 64) and "assumption" in source
    assert cpu._assumed_cpu_watts(info, 2, 50.0) == (50.0, "given (--cpu-watts)")
    unknown = cpu.CpuInfo("Some CPU", "GenuineIntel", 6, 1, 2, None)
    with pytest.raises(ConfigError, match="give its power with --cpu-watts"):
        cpu._assumed_cpu_watts(unknown, 2, None)


def test_rapl_reads_package_domains_and_wraps(tmp_path):
    pkg = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"
    for d in (pkg, sub):
        d.mkdir()
        (d / "energy_uj").write_text("900\n")
        (d / "max_energy_range_uj").write_text("1000\n")
    rapl = Rapl(str(tmp_path))
    assert rapl.available and len(rapl.files) == 1          # the package, not the sub-domain
    assert rapl.joules([900], [100]) == pytest.approx(200e-6)  # wrapped around 1000
    assert not Rapl(str(tmp_path / "none")).available


def test_compare_ratio_and_bounds():
    acc = AccelResult("digits", "ws_8x8", 50.0, 10_000, 5000.0, 0.25, 0.1, 0.5)
    rows = compare(acc, [CpuResult("digits", "fp32", 1000.0, 32, 10.0, "x"),
                         CpuResult("digits", "int8-static", None, None, None, "", error="no")])
    assert rows[0]["ratio"] == pytest.approx((5000 / 0.25) / (1000 / 10))
    assert rows[0]["ratio_low"] == pytest.approx((5000 / 0.5) / 100)
    assert rows[0]["ratio_high"] == pytest.approx((5000 / 0.1) / 100)
    assert rows[1]["ratio"] is None and rows[1]["error"] == "no"


def test_onnxruntime_on_digits_fp32_and_int8(monkeypatch):
    results = benchmark_cpu("digits", seconds=0.25, precisions=("fp32", "int8-dynamic"),
                            cpu_watts=10.0, log=lambda s: None)
    assert [r.precision for r in results] == ["fp32", "int8-dynamic"]
    for r in results:
        assert r.error is None and r.inferences_per_s > 10 and r.watts == 10.0
        assert set(r.rates) == {1, cpu.CPU_BATCH}
        assert r.inferences_per_s == max(r.rates.values())


def test_accelerator_throughput_is_fmax_over_estimated_cycles():
    from neuralmatrix.sw.compiler import builtin, compile_model

    cfg = HwConfig(4, 4, "ws")
    act = Activity(config="ws_4x4", workload="digits", cycles=1, logic=0.01, array=0.05,
                   dsp=0.05, bram=0.1, io=0.05)
    est = estimate_power({"LUT4": 1000, "FF": 1000, "DSP": 16, "BRAM": 10}, 50.0, act)
    acc = accelerator_result("digits", cfg, 50.0, est)
    src, feeds, shapes = builtin("digits")
    cycles = compile_model(src, cfg, calib_feeds=feeds, input_shapes=shapes).report["totals"][
        "est_cycles"]
    assert acc.cycles == cycles
    assert acc.inferences_per_s == pytest.approx(50e6 / cycles)
    assert acc.per_watt == pytest.approx(acc.inferences_per_s / est.total_w)


@pytest.mark.parametrize("args,message", [
    (["--models", "resnet"], "models must be among digits, minilm, got 'resnet'"),
    (["--seconds", "0"], "seconds must be positive"),
])
def test_cli_bad_parameters(tmp_path, capsys, args, message):
    path = tmp_path / "s.json"
    path.write_text("{}")
    assert main(["cpu-compare", str(path), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_needs_an_accelerator_result(tmp_path, capsys):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"config": HwConfig(2, 2).as_dict(), "resources": {},
                                "device": "85k", "fmax_mhz": 80.0, "target": "ecp5",
                                "top": "array"}))
    assert main(["cpu-compare", str(path)]) == 2
    assert "needs an ECP5 accelerator result" in capsys.readouterr().err
