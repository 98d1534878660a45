// Memory back door for Verilator models: bulk copies between a byte buffer and a public
// unpacked memory of the model, found by name through Verilator's scope/variable table.
//
// Compiled into the simulator executable (runner.build(extra_sources=[this file],
// extra_args=["-LDFLAGS", "-rdynamic"])) and called from Python through ctypes
// (neuralmatrix.sim.backdoor). The memory must be public (runner.build(public=[name])).
//
// Byte image: element i of the memory occupies bytes [i*E, (i+1)*E) of the image, with
// E = ceil(bits/8), little-endian (Verilator stores QData/VlWide words LSW first).
#include "verilated.h"
#include "verilated_syms.h"

#include <cstdint>
#include <cstring>
#include <string>

#define NM_EXPORT extern "C" __attribute__((visibility("default"), used))

namespace {

// Result codes (keep in sync with backdoor.py).
constexpr int NM_OK = 0;
constexpr int NM_NOT_FOUND = -1;
constexpr int NM_AMBIGUOUS = -2;
constexpr int NM_NOT_MEMORY = -3;
constexpr int NM_RANGE = -4;
constexpr int NM_NO_SCOPES = -5;

// A variable name as written in the Verilog: escaped identifiers (`\dram.mem `, from Yosys
// flattening) appear in the table with their backslash and trailing space.
std::string pretty(const char* var) {
    std::string s(var);
    if (!s.empty() && s[0] == '\\') {
        s.erase(0, 1);
        while (!s.empty() && s.back() == ' ') s.pop_back();
    }
    return s;
}

// Find the variable whose full name "<scope>.<var>" (var un-escaped) is `name` or ends with
// "." + `name`.
int find(const char* name, const VerilatedVar** out) {
    const VerilatedScopeNameMap* scopes = Verilated::threadContextp()->scopeNameMap();
    if (!scopes) return NM_NO_SCOPES;
    const size_t nlen = std::strlen(name);
    const VerilatedVar* hit = nullptr;
    for (const auto& s : *scopes) {
        const VerilatedVarNameMap* vars = s.second->varsp();
        if (!vars) continue;
        for (const auto& v : *vars) {
            const std::string full = std::string(s.first) + "." + pretty(v.first);
            if (full.size() < nlen) continue;
            if (full.compare(full.size() - nlen, nlen, name) != 0) continue;
            if (full.size() > nlen && full[full.size() - nlen - 1] != '.') continue;
            if (hit && hit != &v.second) return NM_AMBIGUOUS;
            hit = &v.second;
        }
    }
    if (!hit) return NM_NOT_FOUND;
    if (hit->udims() != 1) return NM_NOT_MEMORY;
    *out = hit;
    return NM_OK;
}

int xfer(const char* name, uint64_t offset, uint8_t* ext, uint64_t nbytes, int mode) {
    // mode 0: read into ext, 1: write from ext, 2: fill with *ext
    const VerilatedVar* v = nullptr;
    const int rc = find(name, &v);
    if (rc != NM_OK) return rc;
    const uint64_t depth = static_cast<uint64_t>(v->unpackedRanges()[0].elements());
    const uint64_t ebits = v->entBits(), esize = v->entSize();
    const uint64_t ebytes = (ebits + 7) / 8;
    if (offset > depth * ebytes || nbytes > depth * ebytes - offset) return NM_RANGE;
    uint8_t* mem = static_cast<uint8_t*>(v->datap());
    if (ebytes == esize) {   // 8/16/32/64/128/...-bit words: the storage is the image
        if (mode == 0) std::memcpy(ext, mem + offset, nbytes);
        else if (mode == 1) std::memcpy(mem + offset, ext, nbytes);
        else std::memset(mem + offset, *ext, nbytes);
        return NM_OK;
    }
    // Padded storage (e.g. 72 bits in 12 bytes): byte by byte. The top byte of an element is
    // written as given; keep images within the element width.
    for (uint64_t i = 0; i < nbytes; ++i) {
        const uint64_t b = offset + i;
        uint8_t* p = mem + (b / ebytes) * esize + b % ebytes;
        if (mode == 0) ext[i] = *p;
        else *p = mode == 1 ? ext[i] : *ext;
    }
    return NM_OK;
}

}  // namespace

// Geometry of a memory: depth (elements), bits per element, bytes of storage per element.
NM_EXPORT int nm_mem_info(const char* name, uint64_t* depth, uint32_t* ent_bits,
                          uint32_t* ent_size) {
    const VerilatedVar* v = nullptr;
    const int rc = find(name, &v);
    if (rc != NM_OK) return rc;
    *depth = static_cast<uint64_t>(v->unpackedRanges()[0].elements());
    *ent_bits = static_cast<uint32_t>(v->entBits());
    *ent_size = static_cast<uint32_t>(v->entSize());
    return NM_OK;
}

NM_EXPORT int nm_mem_write(const char* name, uint64_t offset, const void* src, uint64_t nbytes) {
    return xfer(name, offset, static_cast<uint8_t*>(const_cast<void*>(src)), nbytes, 1);
}

NM_EXPORT int nm_mem_read(const char* name, uint64_t offset, void* dst, uint64_t nbytes) {
    return xfer(name, offset, static_cast<uint8_t*>(dst), nbytes, 0);
}

NM_EXPORT int nm_mem_fill(const char* name, uint64_t offset, uint8_t value, uint64_t nbytes) {
    return xfer(name, offset, &value, nbytes, 2);
}

// Names of all public variables ("<scope>.<var>", one per line) into buf (NUL-terminated,
// truncated to size). Returns the length of the full list.
NM_EXPORT uint64_t nm_list_vars(char* buf, uint64_t size) {
    std::string all;
    const VerilatedScopeNameMap* scopes = Verilated::threadContextp()->scopeNameMap();
    if (scopes) {
        for (const auto& s : *scopes) {
            if (!s.second->varsp()) continue;
            for (const auto& v : *s.second->varsp()) {
                all += s.first;
                all += ".";
                all += v.first;
                all += "\n";
            }
        }
    }
    if (size) {
        const uint64_t n = all.size() < size - 1 ? all.size() : size - 1;
        std::memcpy(buf, all.data(), n);
        buf[n] = '\0';
    }
    return all.size();
}
