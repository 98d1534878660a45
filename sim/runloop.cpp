// Run loop for the simulation top (neuralmatrix.sim.dram_model.SimTop) under cocotb + Verilator:
// clock the model from C++ until `done`, with no VPI callback and no return to cocotb's
// scheduler per clock edge.
//
// cocotb's own clock (even its C++ "gpi" clock) costs two timed VPI callbacks, two inertial
// writes and the value-change scan of the main loop per cycle: about a quarter of the run time
// of a 16x16 core. These functions instead toggle `clk` and call `eval()` themselves, inside
// the VPI callback the testbench is running in (between two of the main loop's eval steps, so
// the model is idle). Simulated time does not advance while they run: the caller counts cycles
// with what they return. Waves are dumped by cocotb's main loop only, so traced runs use the
// cocotb clock instead.
//
// Compiled into the simulator with the back door (runner.build(extra_sources=[...])); called
// from Python through ctypes (neuralmatrix.sim.runloop). The model class is cocotb's `Vtop`.
#include "Vtop.h"
#include "Vtop__Syms.h"
#include "verilated.h"
#include "verilated_syms.h"

#include <cstdint>

#define NM_EXPORT extern "C" __attribute__((visibility("default"), used))

namespace {

// The model, found through any public scope's symbol table (its owner).
Vtop* model() {
    static Vtop* top = nullptr;
    if (top) return top;
    const VerilatedScopeNameMap* scopes = Verilated::threadContextp()->scopeNameMap();
    if (!scopes) return nullptr;
    for (const auto& s : *scopes) {
        if (VerilatedSyms* syms = s.second->symsp()) {
            top = static_cast<Vtop__Syms*>(syms)->__Vm_modelp;
            return top;
        }
    }
    return nullptr;
}

// One clock cycle ending in a rising edge: clk low, eval, clk high, eval.
inline void cycle(Vtop* top) {
    top->clk = 0;
    top->eval();
    top->clk = 1;
    top->eval();
}

}  // namespace

// Result codes (keep in sync with runloop.py).
constexpr int NM_RUN_DONE = 0;
constexpr int NM_RUN_TIMEOUT = 1;
constexpr int NM_RUN_NO_MODEL = -1;

// `n` rising edges of the clock with the inputs as they are.
NM_EXPORT int nm_clock(uint64_t n) {
    Vtop* top = model();
    if (!top) return NM_RUN_NO_MODEL;
    for (uint64_t i = 0; i < n; ++i) cycle(top);
    return NM_RUN_DONE;
}

// Set the reset input, with `start` low (then clock with nm_clock).
NM_EXPORT int nm_set_reset(int value) {
    Vtop* top = model();
    if (!top) return NM_RUN_NO_MODEL;
    top->rst = value ? 1 : 0;
    top->start = 0;
    top->eval();
    return NM_RUN_DONE;
}

// Start the program at `insn_addr` and clock until `done` or `max_cycles` edges:
// reset low, one edge, `start` high for the next edge (the one that samples it), then edges
// until `done` is high after one. `*cycles` gets the edges after the start edge (0 when done
// rose with it): the count cocotb's simulated time gave, start edge to done edge.
NM_EXPORT int nm_run(uint32_t insn_addr, uint64_t max_cycles, uint64_t* cycles) {
    Vtop* top = model();
    if (!top) return NM_RUN_NO_MODEL;
    top->rst = 0;
    top->insn_addr = insn_addr;
    cycle(top);
    top->start = 1;
    cycle(top);
    top->start = 0;
    top->eval();
    uint64_t n = 0;
    while (!top->done) {
        if (n >= max_cycles) {
            *cycles = n;
            return NM_RUN_TIMEOUT;
        }
        cycle(top);
        ++n;
    }
    *cycles = n;
    return NM_RUN_DONE;
}
