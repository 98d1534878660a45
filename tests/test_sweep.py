"""`neuralmatrix sweep`: every configuration through the FPGA flow, resumable, local or Dask.

One tiny real sweep (two 1-2 PE arrays on ECP5 25k, marked slow: tests/test_synth.py has the
default suite's real synthesis); the rest use
:func:`fake_synth`, an in-process stand-in for the flow that leaves a mark per call so a test
can count what ran (also across worker processes).
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from neuralmatrix.fpga import sweep as sweep_mod
from neuralmatrix.fpga.synth import DoesNotFit, SynthError, SynthResult, ToolMissing, check_tools
from neuralmatrix.fpga.sweep import (CSV_COLUMNS, plan_configs, register_power_model, run_sweep,
                                     workload_cycles)
from neuralmatrix.hw.generate import generator_digest
from neuralmatrix.hw.params import ConfigError, HwConfig
from neuralmatrix.sw.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORKLOAD = "gemm:8x8x8"


def fake_synth(config, *, target, device, top, freq_mhz, workdir, seed, timeout_s,
               router="router1", calls=None, crash=(), max_pes=None, sleep=0.0, tool=False):
    """Stands in for synthesize(): figures that grow with the array, a DoesNotFit above
    *max_pes* PEs, a SynthError for the tags in *crash*; one file in *calls* per call (holding
    the worker's pid). With *tool*, the *sleep* runs in a child process, as a tool would."""
    if not tool:
        if calls is not None:
            (Path(calls) / f"{config.tag}-{uuid.uuid4().hex}").write_text(str(os.getpid()))
        time.sleep(sleep)
    else:
        proc = subprocess.Popen(["sleep", str(sleep)])
        if calls is not None:
            (Path(calls) / f"{config.tag}-{uuid.uuid4().hex}").write_text(
                f"{os.getpid()} {proc.pid}")
        proc.wait()
    if config.tag in crash:
        raise SynthError("nextpnr-ecp5 failed (exit 1): fake crash; log: nextpnr.log")
    pes = config.rows * config.cols
    if max_pes is not None and pes > max_pes:
        raise DoesNotFit("does not fit", [{"resource": "DSP (MULT18X18D)", "line": "MULT18X18D",
                                           "used": pes, "available": max_pes,
                                           "percent": 100.0 * pes / max_pes}])
    resources = {"LUT4": 40 * pes, "FF": 50 * pes, "DSP": pes, "BRAM": 0, "LUTRAM": 0}
    capacity = {"LUT4": 24288, "FF": 24288, "DSP": 28, "BRAM": 56, "LUTRAM": 12144}
    return SynthResult(
        config=config, target=target, device=device, part="LFE5U-25F", package="CABGA381",
        top=top, top_module="nm_array", freq_mhz=freq_mhz, seed=seed, router=router,
        resources=resources,
        capacity=capacity,
        utilization={k: round(100.0 * v / capacity[k], 2) for k, v in resources.items()},
        fmax_mhz=round(200.0 / (1 + pes / 4), 2), seconds={"yosys": 0.0, "nextpnr": 0.0})


def _calls(path: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[0] for p in path.iterdir())


@pytest.fixture
def calls(tmp_path):
    path = tmp_path / "calls"
    path.mkdir()
    return path


def _sweep(out, configs, synth, **kwargs):
    lines = []
    kwargs.setdefault("jobs", 2)
    report = run_sweep(configs, out_dir=out, target="ecp5", device="25k", workload=WORKLOAD,
                       synth=synth, log=lines.append, **kwargs)
    return report, lines


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


CONFIGS = plan_configs([1, 2], [1, 2], ["ws"])          # ws 1x1, 1x2, 2x1, 2x2


# ---------------------------------------------------------------------------------------------
# Parameters: all bad configurations are reported before anything runs.

def test_bad_rows_list_every_bad_config_before_anything_runs(tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the flow ran")
    monkeypatch.setattr(sweep_mod, "synthesize", forbidden)
    monkeypatch.setattr(sweep_mod, "run_sweep", forbidden)
    out = tmp_path / "out"
    code = main(["sweep", "--rows", "0,2,65", "--cols", "2", "--dataflow", "ws,os",
                 "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "4 of 6 configurations are invalid" in err
    for tag in ("ws 0x2", "os 0x2", "ws 65x2", "os 65x2"):
        assert tag in err
    assert "rows must be 1..64, got 0" in err and "rows must be 1..64, got 65" in err
    assert "2x2" not in err
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--rows", "2,a"], "rows must be a comma-separated list of integers, got '2,a'"),
    (["--dataflow", "ws,xs"], "dataflow must be one of ws, os, got 'xs'"),
    (["--rows", "2", "--cols", "4", "--square"], "square: no rows value equals a cols value"),
    (["--workload", "gemm:8x8"], "workload gemm must be gemm:MxKxN"),
    (["--workload", "resnet:1"], "workload must be KIND:ARGS with KIND one of gemm"),
    (["--device", "100k"], "device for target ecp5 must be one of"),
    (["--jobs", "0"], "jobs must be a positive integer, got 0"),
    (["--plots", "gif"], "plots must be among png, svg, pdf, got 'gif'"),
])
def test_bad_parameters_fail_with_their_name(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["sweep", "--rows", "2", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_square_and_product():
    assert [c.tag for c in plan_configs([2, 4], [2, 4], ["ws", "os"], square=True)] == \
        ["ws_2x2", "os_2x2", "ws_4x4", "os_4x4"]
    assert len(plan_configs([2, 4], [1, 2, 4], ["ws", "os"])) == 12


def test_main_cli_registers_sweep():
    from neuralmatrix.sw.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0]
    assert {"synth", "sweep"} <= set(sub.choices)
    text = sub.choices["sweep"].format_help()
    for option in ("--rows", "--cols", "--square", "--dataflow", "--target", "--device", "--top",
                   "--jobs", "--scheduler", "--out", "--workload", "--seed", "--plots",
                   "--no-retry-errors"):
        assert option in text


# ---------------------------------------------------------------------------------------------
# Workloads

def test_gemm_workload_cycles_are_the_golden_estimate():
    from neuralmatrix.sw.gemm_program import gemm_program
    from neuralmatrix.sw.golden import estimate_cycles

    cfg = HwConfig(4, 4, "os")
    macs, cycles = workload_cycles(cfg, "gemm:32x16x8")
    assert macs == 32 * 16 * 8
    prog = gemm_program(cfg, 32, 16, 8, a_addr=0, b_addr=1 << 16, c_addr_dram=2 << 16)
    assert cycles == estimate_cycles(prog.program, cfg).total
    # Ideal is M*K*N / (rows*cols) = 256 cycles; the estimate adds fill and drain.
    assert 256 < cycles < 4 * 256


# ---------------------------------------------------------------------------------------------
# The sweep with the stand-in flow

def test_resume_runs_only_what_is_missing(tmp_path, calls):
    out = tmp_path / "out"
    synth = functools.partial(fake_synth, calls=str(calls))
    report, _ = _sweep(out, CONFIGS, synth)
    assert (report.ran, report.reused, report.errors) == (4, 0, 0)
    assert len(_calls(calls)) == 4
    first = _jsonl(out)
    assert len(first) == 4 and len({r["key"] for r in first}) == 4

    # Interrupted: one finished line, then half of the next.
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text(lines[0] + lines[1][:len(lines[1]) // 2])
    for p in calls.iterdir():
        p.unlink()
    report, log = _sweep(out, CONFIGS, synth)
    assert any("ignored 1 unreadable line" in line for line in log)
    assert "resuming: 1 of 4 done" in log
    assert len(_calls(calls)) == 3
    assert first[0]["tag"] not in _calls(calls)
    assert (report.ran, report.reused) == (3, 1)
    again = _jsonl(out)                         # the half line is gone, every line parses
    assert sorted(r["key"] for r in again) == sorted(r["key"] for r in first)
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].split(",") == list(CSV_COLUMNS) and len(rows) == 5

    # Everything done: nothing runs.
    for p in calls.iterdir():
        p.unlink()
    report, log = _sweep(out, CONFIGS, synth)
    assert "resuming: 4 of 4 done" in log and not _calls(calls) and report.ran == 0


def test_key_covers_the_parameters(tmp_path, calls, monkeypatch):
    out = tmp_path / "out"
    synth = functools.partial(fake_synth, calls=str(calls))
    cfg = [HwConfig(1, 1)]
    _sweep(out, cfg, synth)
    _sweep(out, cfg, synth, seed=2)                       # another seed: runs again
    _sweep(out, [HwConfig(1, 1, queue_depth=4)], synth)   # any HwConfig field: runs again
    _sweep(out, cfg, synth, router="router2")             # another router: runs again
    assert len(_calls(calls)) == 4
    # A changed hardware generator (its source or Amaranth's version) runs again; the
    # original design is still there.
    from neuralmatrix.fpga import sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "generator_digest", lambda: "another design")
    _sweep(out, cfg, synth)
    assert len(_calls(calls)) == 5
    monkeypatch.undo()
    _sweep(out, cfg, synth)
    assert len(_calls(calls)) == 5
    # Another workload reuses the synthesis and recomputes only the workload figures.
    report = run_sweep(cfg, out_dir=out, target="ecp5", device="25k", workload="gemm:4x4x4",
                       synth=synth, jobs=1, log=lambda s: None)
    assert len(_calls(calls)) == 5
    assert report.rows[0]["workload"] == "gemm:4x4x4" and report.rows[0]["useful_macs"] == 64
    key = _jsonl(out)[0]["key"]
    assert set(key) <= set("0123456789abcdef") and len(key) == 16
    params = _jsonl(out)[0]["params"]
    assert params["tools"] == check_tools("ecp5")
    assert params["config"]["rows"] == 1 and params["device"] == "25k" and params["seed"] == 1
    assert params["router"] == "router1" and params["design"] == generator_digest()
    assert report.rows[0]["router"] == "router1"


def test_error_row_and_does_not_fit_row_do_not_stop_the_sweep(tmp_path, calls):
    out = tmp_path / "out"
    synth = functools.partial(fake_synth, calls=str(calls), crash=("ws_2x1",), max_pes=2)
    report, log = _sweep(out, CONFIGS, synth)
    rows = {(r["rows"], r["cols"]): r for r in report.rows}
    assert len(rows) == 4 and report.errors == 1
    crashed = rows[(2, 1)]
    assert "fake crash" in crashed["error"] and crashed["fits"] == "" and crashed["luts"] is None
    unfit = rows[(2, 2)]
    assert unfit["fits"] == "no" and unfit["overflow"] == "DSP (MULT18X18D) 4 of 2"
    assert unfit["error"] is None and unfit["gops"] is None and unfit["cycles"] > 0
    ok = rows[(1, 2)]
    assert ok["fits"] == "yes" and ok["luts"] == 80 and ok["dsps_pct"] == pytest.approx(7.14)
    assert ok["gops"] == pytest.approx(2 * ok["useful_macs"] * ok["fmax_mhz"] / ok["cycles"] / 1000,
                                       rel=1e-3)
    assert ok["power_w"] is None and ok["gops_per_w"] is None
    assert any("ws_2x1: error: SynthError: nextpnr-ecp5 failed" in line for line in log)
    assert any("ws_2x2: does not fit (DSP (MULT18X18D) 4 of 2)" in line for line in log)

    # An error is retried on the next run (only it), unless told not to.
    for p in calls.iterdir():
        p.unlink()
    _sweep(out, CONFIGS, synth, retry_errors=False)
    assert _calls(calls) == []
    _sweep(out, CONFIGS, synth)
    assert _calls(calls) == ["ws_2x1"]


def _watts(config, row):
    return 0.1 + 0.01 * row["dsps"]


def test_power_model_fills_power_columns(tmp_path):
    out = tmp_path / "out"
    report, _ = _sweep(out, CONFIGS[:2], fake_synth, power=_watts)
    for row in report.rows:
        assert row["power_w"] == pytest.approx(0.1 + 0.01 * row["dsps"])
        assert row["gops_per_w"] == pytest.approx(row["gops"] / row["power_w"], rel=1e-3)
    assert (out / "throughput_per_watt.png").read_bytes()[:8] == PNG_MAGIC
    register_power_model(_watts)
    try:
        report, _ = _sweep(tmp_path / "out2", CONFIGS[:1], fake_synth)
        assert report.rows[0]["power_w"] is not None
    finally:
        register_power_model(None)


def _interrupt_after_first(line):
    if line.startswith("[1/"):
        raise KeyboardInterrupt


def test_ctrl_c_keeps_what_is_done_and_resumes(tmp_path, calls):
    out = tmp_path / "out"
    synth = functools.partial(fake_synth, calls=str(calls), sleep=0.5)
    lines = []

    def log(line):
        lines.append(line)
        _interrupt_after_first(line)

    report = run_sweep(CONFIGS, out_dir=out, target="ecp5", device="25k", workload=WORKLOAD,
                       synth=synth, jobs=1, log=log)
    assert report.interrupted and len(report.rows) == 1
    assert any("interrupted: 1 of 4" in line and "to resume" in line for line in lines)
    assert len(_jsonl(out)) == 1
    report, log_lines = _sweep(out, CONFIGS, synth)
    assert "resuming: 1 of 4 done" in log_lines and len(report.rows) == 4


_KILL_SCRIPT = """
import functools, sys
from neuralmatrix.fpga.sweep import plan_configs, run_sweep
from test_sweep import fake_synth
out, calls = sys.argv[1:]
report = run_sweep(plan_configs([1, 2], [1], ["ws"]), out_dir=out, target="ecp5", device="25k",
                   workload="gemm:8x8x8", jobs=2, log=print,
                   synth=functools.partial(fake_synth, calls=calls, sleep=120, tool=True))
print("interrupted" if report.interrupted else "finished", len(report.rows))
"""


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_kill_stops_workers_and_their_tools(tmp_path, calls):
    """`kill PID` (SIGTERM) of a sweep run in the background: it stops as Ctrl-C does, and no
    worker or tool process is left behind."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out), str(calls)],
                            cwd=Path(__file__).parent, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(calls.iterdir())) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the tasks never started"
            time.sleep(0.2)
        time.sleep(0.5)
        pids = [int(p) for f in calls.iterdir() for p in f.read_text().split()]
        assert len(pids) == 4
        proc.terminate()
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            for f in calls.iterdir():                 # the workers lead their own groups
                for pid in f.read_text().split():
                    try:
                        os.killpg(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError, ValueError):
                        pass
    assert "interrupted: 0 of 2" in stdout and "interrupted 0" in stdout
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_gone(pid) for pid in pids), pids


def test_dask_cluster(tmp_path, calls):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "out"
    synth = functools.partial(fake_synth, calls=str(calls))
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        report, log = _sweep(out, CONFIGS, synth, scheduler=cluster.scheduler_address)
    assert any(f"Dask scheduler {cluster.scheduler_address}" in line for line in log)
    assert len(report.rows) == 4 and report.errors == 0 and len(_calls(calls)) == 4
    assert all(r["fits"] == "yes" and r["gops"] > 0 for r in report.rows)


def test_unreachable_scheduler_is_an_error(tmp_path, capsys):
    pytest.importorskip("distributed")
    code = main(["sweep", "--rows", "1", "--dataflow", "ws", "--device", "25k",
                 "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "out"),
                 "--workload", WORKLOAD])
    assert code == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A real sweep: two tiny arrays through Yosys and nextpnr.

@pytest.fixture(scope="module")
def tools():
    try:
        return check_tools("ecp5")
    except ToolMissing as exc:
        pytest.fail(f"{exc}\n(The FPGA tests need the dev extras: pip install -e '.[dev]'.)")


@pytest.mark.slow
def test_tiny_real_sweep(tools, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", "--rows", "1,2", "--cols", "1", "--dataflow", "ws", "--target", "ecp5",
                 "--device", "25k", "--workload", WORKLOAD, "--jobs", "2", "--out", str(out),
                 "--plots", "png,svg"])
    assert code == 0
    text = capsys.readouterr().out
    assert "ws 1x1" in text and "ws 2x1" in text and "results.csv" in text
    import csv

    with open(out / "results.csv", newline="") as fh:
        rows = {(int(r["rows"]), int(r["cols"])): r for r in csv.DictReader(fh)}
    assert set(rows) == {(1, 1), (2, 1)}
    for (r, c), row in rows.items():
        assert row["fits"] == "yes" and row["error"] == ""
        assert int(row["dsps"]) == r * c                 # one MULT18X18D per PE
        assert float(row["dsps_pct"]) == pytest.approx(100 * r * c / 28, abs=0.01)
        assert 20 < float(row["fmax_mhz"]) < 500
        assert int(row["useful_macs"]) == 512 and int(row["cycles"]) > 512 // (r * c)
        assert float(row["gops"]) > 0 and row["power_w"] == ""
    for name in ("resources", "fmax", "throughput"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        import matplotlib.image

        assert matplotlib.image.imread(png).shape[0] > 100
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert not (out / "throughput_per_watt.png").exists()
    assert len(list((out / "runs").iterdir())) == 2   # the flow's files of each configuration


# ---------------------------------------------------------------------------------------------
# Synthesis only (target xilinx): labelled rows, no Fmax, the same machinery.

def _read_csv(path: Path) -> dict:
    import csv

    with open(path, newline="") as fh:
        return {(r["dataflow"], int(r["rows"])): r for r in csv.DictReader(fh)}


def test_xilinx_sweep_rows_are_labelled_synthesis_only(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", "--rows", "2", "--dataflow", "ws", "--target", "xilinx",
                 "--workload", WORKLOAD, "--jobs", "1", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "synthesis only, no timing" in text and "counted: hierarchical" in text
    assert "LUT4" not in text                  # Xilinx LUTs are LUT1..LUT6 cells
    row = _read_csv(out / "results.csv")[("ws", 2)]
    assert row["flow"] == "synthesis only, no timing" and row["fits"] == "n/a"
    assert "identical PE modules merged" in row["counted"]
    assert row["target"] == "xilinx" and row["device"] == "xc7" and row["error"] == ""
    assert int(row["dsps"]) == 4 and int(row["luts"]) > 0 and int(row["ffs"]) > 0
    assert row["fmax_mhz"] == row["gops"] == row["luts_pct"] == ""
    assert int(row["cycles"]) > 0              # the workload estimate needs no timing
    assert (out / "resources.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "fmax.png").exists() and not (out / "throughput.png").exists()


def test_pnr_rows_say_place_and_route(tmp_path, calls):
    report, _ = _sweep(tmp_path / "out", CONFIGS[:1], functools.partial(fake_synth, calls=calls),
                       plots=())
    assert report.rows[0]["flow"] == "place and route" and report.rows[0]["counted"] == ""
    assert report.rows[0]["fits"] == "yes"


@pytest.mark.parametrize("args,message", [
    (["--rows", "16,65"], "rows must be 1..64, got 65"),
    (["--freq", "200"], "freq: target xilinx is synthesis only"),
    (["--device", "85k"], "device for target xilinx must be one of xc7, xcu, xcup, got '85k'"),
    (["--power", "digits"], "power: the power model covers ECP5 only"),
])
def test_xilinx_sweep_bad_parameters(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["sweep", "--target", "xilinx", "--rows", "2", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_xilinx_sweep_16x16_and_24x24(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", "--rows", "16,24", "--square", "--dataflow", "ws", "--target",
                 "xilinx", "--workload", WORKLOAD, "--jobs", "1", "--out", str(out)])
    assert code == 0
    rows = _read_csv(out / "results.csv")
    for n in (16, 24):
        assert int(rows[("ws", n)]["dsps"]) == n * n
        assert rows[("ws", n)]["flow"] == "synthesis only, no timing"
    assert int(rows[("ws", 24)]["ffs"]) > 2 * int(rows[("ws", 16)]["ffs"])
