// cuda_on_cpu.h -- run CUDA C++ kernel source on the CPU (gpulstm "emulated" execution).
//
// The Python side (gpulstm/emulator/_build.py) compiles ONE translation unit:
//     this header + the kernel source + a launch table of the requested kernels,
// with g++ -std=c++17 -O2 -ffp-contract=off (IEEE float/double arithmetic, no fused
// multiply-add unless the source calls fmaf/fma), into a shared library loaded with ctypes.
//
// Execution model (one launch at a time per process; the Python side holds a lock):
//   * Blocks run one after another (x fastest, then y, z): a legal CUDA schedule.
//   * "sequential" mode: each thread of a block runs to completion before the next starts
//     (x fastest). Legal for kernels that use no barrier and no warp intrinsic; any
//     barrier/warp intrinsic reached in this mode stops the launch with an error.
//   * "fiber" mode: the threads of a block are cooperatively scheduled fibers (a 40-byte
//     hand-written context switch on x86-64, no syscall; ucontext elsewhere). A worker
//     fiber (one stack) runs threads in linear order, each to completion, until a thread
//     has to wait (barrier / warp intrinsic). The waiting thread keeps its worker, and the
//     next unstarted thread gets a new worker. Once every thread has started, waiting
//     workers hand over round robin. So __syncthreads() is a true block barrier, warp
//     intrinsics are warp-level rendezvous with a real exchange of values, and a kernel
//     that never waits costs about what sequential mode costs.
//   * Invariant of both modes: exactly one CUDA thread runs at any moment and control
//     changes hands only inside the intrinsics below, so plain read-modify-write is atomic
//     (atomicAdd & co. are plain operations) and memory is always coherent.
//   * Threads that have exited no longer count for __syncthreads (as on hardware). Warp
//     lanes that do not exist (last partial warp) or have exited are treated as absent from
//     a warp mask. Reading the value of an absent / non-participating lane through a shuffle
//     returns a poison value (all bits set: NaN for float/double, -1 for signed integers).
//   * A deadlock (e.g. part of a block at __syncthreads, another part at __shfl_sync, or a
//     thread waiting on a warp peer that waits elsewhere) is detected and reported.
//
// Memory:
//   * static __shared__ variables are function-local statics: one instance shared by all
//     threads of the running block (blocks do not overlap in time). They are NOT poisoned
//     between blocks: they start zeroed for the first block and keep stale values after.
//   * dynamic shared memory (extern __shared__ T name[];) is rewritten by the Python side to
//     a pointer into one buffer of up to GPULSTM_EMU_MAX_DYNAMIC_SHARED bytes; the first
//     shared_mem bytes are poisoned (0xFF: NaN) at the start of every block.
//   * Out-of-bounds accesses are not checked (they crash the process or corrupt memory).
//   * Each fiber has GPULSTM_EMU_STACK_BYTES of stack (128 KiB, for its frames and local
//     arrays); overflowing it hits a guard page (SIGSEGV), never another fiber's stack.
//
// Cooperative launches (launch mode 2, EmulatedKernel(..., cooperative=True)): the threads of
// EVERY block are fibers and gpulstm_emu_grid_sync() is a grid-wide barrier. A block runs
// until all its live threads wait at the grid barrier (or exit); it is then suspended -- its
// scheduler state and its dynamic shared memory saved -- and the next block runs; when all
// blocks wait, the barrier is released and the blocks resume in order. Each block has its own
// fiber stacks. Static __shared__ variables stay one instance for all blocks: their contents
// do not survive a grid barrier (dynamic shared memory does). A block that exits while others
// wait at the grid barrier is reported as a deadlock (it would hang on a GPU).
//
// Not supported (compile error or runtime error, never silently wrong): CUDA's half/bfloat16
// types (cuda_fp16.h, cuda_bf16.h; gpulstm's kernels carry their own 2-byte gl_bf16 in
// kernels/gpulstm_common.cuh, plain C++ over __float_as_uint/__uint_as_float below),
// cooperative groups (the header; see gpulstm_emu_grid_sync), __match_*/__reduce_* warp intrinsics, textures,
// inline PTX, more than GPULSTM_EMU_MAX_WARP_MASKS distinct masks used by one warp in
// one block. __CUDA_ARCH__ is not defined; GPULSTM_EMULATED is defined to 1.
#ifndef GPULSTM_CUDA_ON_CPU_H
#define GPULSTM_CUDA_ON_CPU_H

#include <math.h>     // the C++ wrapper: float overloads of exp, tanh, ... in the global namespace
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <type_traits>
#include <utility>

#define GPULSTM_EMULATED 1

#if !defined(GPULSTM_EMU_UCONTEXT) && !defined(__x86_64__)
#define GPULSTM_EMU_UCONTEXT 1  // portable (slower: one sigprocmask syscall per switch)
#endif
#ifdef GPULSTM_EMU_UCONTEXT
#include <ucontext.h>
#endif

#ifndef GPULSTM_EMU_STACK_BYTES
#define GPULSTM_EMU_STACK_BYTES (128 * 1024)  // per fiber, virtual; the lowest page is a guard
#endif
#ifndef GPULSTM_EMU_MAX_DYNAMIC_SHARED
#define GPULSTM_EMU_MAX_DYNAMIC_SHARED (227 * 1024)  // H100 opt-in maximum per block
#endif
#ifndef GPULSTM_EMU_MAX_WARP_MASKS
#define GPULSTM_EMU_MAX_WARP_MASKS 4
#endif

// ---------------------------------------------------------------------------------------
// CUDA keywords
// ---------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __shared__ static
#define __forceinline__ __attribute__((always_inline)) inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
// __restrict__ is a g++ keyword already.

// ---------------------------------------------------------------------------------------
// Built-in vector types (aggregates, CUDA alignment) and index variables
// ---------------------------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define GPULSTM_EMU_VEC2(T, N, A) \
  struct __attribute__((aligned(A))) N##2 { T x, y; }; \
  static inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define GPULSTM_EMU_VEC3(T, N) \
  struct N##3 { T x, y, z; }; \
  static inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define GPULSTM_EMU_VEC4(T, N, A) \
  struct __attribute__((aligned(A))) N##4 { T x, y, z, w; }; \
  static inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
GPULSTM_EMU_VEC2(float, float, 8)
GPULSTM_EMU_VEC3(float, float)
GPULSTM_EMU_VEC4(float, float, 16)
GPULSTM_EMU_VEC2(double, double, 16)
GPULSTM_EMU_VEC3(double, double)
GPULSTM_EMU_VEC4(double, double, 16)
GPULSTM_EMU_VEC2(int, int, 8)
GPULSTM_EMU_VEC3(int, int)
GPULSTM_EMU_VEC4(int, int, 16)
GPULSTM_EMU_VEC2(unsigned int, uint, 8)
GPULSTM_EMU_VEC4(unsigned int, uint, 16)
static inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }
#undef GPULSTM_EMU_VEC2
#undef GPULSTM_EMU_VEC3
#undef GPULSTM_EMU_VEC4

constexpr int warpSize = 32;

#define GPULSTM_EMU_HIDDEN __attribute__((visibility("hidden")))

namespace gpulstm_emu {

// Per-launch / per-thread state. External linkage (hidden), so the compiler must assume an
// opaque call (the context switch) may change them: values are re-read after a barrier.
GPULSTM_EMU_HIDDEN uint3 g_threadIdx;
GPULSTM_EMU_HIDDEN uint3 g_blockIdx;
GPULSTM_EMU_HIDDEN dim3 g_blockDim;
GPULSTM_EMU_HIDDEN dim3 g_gridDim;
alignas(128) GPULSTM_EMU_HIDDEN unsigned char g_dynamic_shared[GPULSTM_EMU_MAX_DYNAMIC_SHARED];

inline void* dynamic_shared() { return g_dynamic_shared; }
inline void compiler_barrier() { asm volatile("" ::: "memory"); }

}  // namespace gpulstm_emu

static const uint3& threadIdx = gpulstm_emu::g_threadIdx;
static const uint3& blockIdx = gpulstm_emu::g_blockIdx;
static const dim3& blockDim = gpulstm_emu::g_blockDim;
static const dim3& gridDim = gpulstm_emu::g_gridDim;

// ---------------------------------------------------------------------------------------
// Scheduler: errors, fibers, barriers
// ---------------------------------------------------------------------------------------
namespace gpulstm_emu {

struct Failure {};  // thrown in sequential mode after fail() recorded the message

GPULSTM_EMU_HIDDEN char g_error[1024];
GPULSTM_EMU_HIDDEN bool g_in_fibers;  // true while the threads of a block run as fibers

#ifdef GPULSTM_EMU_UCONTEXT
struct Context { ucontext_t uc; };
#else
struct Context { void* sp; };  // saved stack pointer of a suspended fiber / the launcher
extern "C" GPULSTM_EMU_HIDDEN void gpulstm_emu_switch(void** save_sp, void* load_sp);
// Saves the callee-saved registers (SysV x86-64) on the current stack, stores the stack
// pointer in *save_sp, switches to load_sp and restores the registers saved there.
// (MXCSR / x87 control words are not switched: kernels do not change them.)
asm(R"(
  .text
  .p2align 4
  .globl gpulstm_emu_switch
  .hidden gpulstm_emu_switch
  .type gpulstm_emu_switch, @function
gpulstm_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gpulstm_emu_switch, .-gpulstm_emu_switch
)");
#endif

// A worker: one stack hosting one started, unfinished CUDA thread at a time.
struct Fiber {
  Context ctx;
  Fiber* next;  // ring of the workers whose thread is unfinished
  Fiber* prev;
  uint3 tid;    // the hosted thread
  unsigned warp, lane;
};

// One warp-level rendezvous point, keyed by the mask the lanes pass. Values are double
// buffered by generation parity: a lane released from generation g reads slot[g & 1];
// slot[g & 1] is next written at generation g + 2, which cannot start before every lane of
// the mask (this reader included) has arrived at g + 1.
struct WarpSync {
  unsigned mask;     // as passed by the lanes
  unsigned arrived;  // lanes arrived at generation gen
  unsigned gen;
  int op;            // intrinsic of the current generation (lanes must agree)
  uint64_t slot[2][32];
  unsigned tag[2][32];  // generation that wrote slot[p][lane]
};

struct Warp {
  unsigned live;  // lanes that exist and have not exited
  int nsync;
  WarpSync sync[GPULSTM_EMU_MAX_WARP_MASKS];
};

enum WarpOp { kSyncWarp = 1, kShfl, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll };

GPULSTM_EMU_HIDDEN Fiber g_fibers[1024];  // workers of the block; g_fibers[i] uses stack i
GPULSTM_EMU_HIDDEN Warp g_warps[32];
GPULSTM_EMU_HIDDEN Fiber* g_cur;          // running worker
GPULSTM_EMU_HIDDEN Context g_main;        // the launcher's context
GPULSTM_EMU_HIDDEN unsigned g_nthreads;   // threads of the block
GPULSTM_EMU_HIDDEN unsigned g_started;    // threads started so far (in linear order)
GPULSTM_EMU_HIDDEN uint3 g_next_tid;      // threadIdx of thread number g_started
GPULSTM_EMU_HIDDEN unsigned g_nworkers;   // workers created for this block
GPULSTM_EMU_HIDDEN unsigned g_live;       // threads of the block not exited (started or not)
GPULSTM_EMU_HIDDEN unsigned g_spin;       // wake-ups without progress since the last progress
GPULSTM_EMU_HIDDEN unsigned g_bar_arrived, g_bar_gen;
GPULSTM_EMU_HIDDEN unsigned g_bar_count[2], g_bar_n[2];  // by generation parity
GPULSTM_EMU_HIDDEN void (*g_body)(const unsigned char*);
GPULSTM_EMU_HIDDEN const unsigned char* g_args;
GPULSTM_EMU_HIDDEN bool g_coop;             // a cooperative launch is running
GPULSTM_EMU_HIDDEN unsigned g_grid_arrived;  // threads of the running block at the grid barrier
GPULSTM_EMU_HIDDEN unsigned g_grid_gen;      // grid barrier generation (the launcher releases)
GPULSTM_EMU_HIDDEN unsigned g_stack_base;    // first fiber stack of the running block

inline void switch_to(Context* save, Context* load) {
#ifdef GPULSTM_EMU_UCONTEXT
  swapcontext(&save->uc, &load->uc);
#else
  gpulstm_emu_switch(&save->sp, load->sp);
#endif
}

// Records the first error of the launch and abandons it: back to the launcher (fibers) or
// a C++ exception (sequential mode). Abandoned fiber stacks are simply reused.
[[noreturn]] __attribute__((format(printf, 1, 2), noinline, cold)) inline void fail(const char* fmt, ...) {
  if (!g_error[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
  }
  if (g_in_fibers) {
    Context dead;
    switch_to(&dead, &g_main);
  }
  throw Failure{};
}

inline void require_fibers(const char* what) {
  if (__builtin_expect(!g_in_fibers, 0))
    fail("%s reached in sequential mode (threads run to completion one by one); "
         "the module must be scheduled with fibers (schedule='fibers')", what);
}

inline void init_context(Fiber& f, unsigned slot);

// Gives worker f the next unstarted thread (linear order, x fastest).
inline void host_next_thread(Fiber* f) {
  const unsigned i = g_started++;
  f->tid = g_next_tid;
  f->warp = i / 32;
  f->lane = i % 32;
  if (++g_next_tid.x == g_blockDim.x) {
    g_next_tid.x = 0;
    if (++g_next_tid.y == g_blockDim.y) { g_next_tid.y = 0; ++g_next_tid.z; }
  }
}

inline void switch_to_worker(Fiber* self, Fiber* next) {
  g_cur = next;
  g_threadIdx = next->tid;
  switch_to(&self->ctx, &next->ctx);
}

// Called by a waiting thread whose condition is unmet: start the next thread on a new
// worker if one is left (progress), else hand over to the next worker of the ring.
inline void yield_waiting() {
  Fiber* self = g_cur;
  if (g_started < g_nthreads) {
    Fiber* f = &g_fibers[g_nworkers];
    init_context(*f, g_nworkers++);
    host_next_thread(f);
    // Insert after the waiter (usually the newest worker, so the ring stays in thread order).
    f->prev = self;
    f->next = self->next;
    self->next->prev = f;
    self->next = f;
    g_spin = 0;
    switch_to_worker(self, f);
    return;
  }
  if (++g_spin > 2 * g_live + 2)
    fail("deadlock in block (%u,%u,%u): thread (%u,%u,%u) and the other live threads wait on "
         "each other (divergent __syncthreads / warp intrinsics, or a warp mask naming a "
         "lane that waits elsewhere)",
         g_blockIdx.x, g_blockIdx.y, g_blockIdx.z, g_cur->tid.x, g_cur->tid.y, g_cur->tid.z);
  if (self->next != self) switch_to_worker(self, self->next);
}

// Block barrier; returns (number of arrivals with pred != 0, number of arrivals).
inline std::pair<unsigned, unsigned> block_barrier(int pred) {
  compiler_barrier();
  const unsigned gen = g_bar_gen, p = gen & 1u;
  g_bar_count[p] += pred != 0;
  ++g_bar_arrived;
  g_spin = 0;
  while (g_bar_gen == gen) {
    if (g_bar_arrived >= g_live) {  // everyone alive is here: release generation gen
      g_bar_n[p] = g_bar_arrived;
      g_bar_count[p ^ 1u] = 0;      // all readers of gen - 1 have arrived at gen
      g_bar_arrived = 0;
      ++g_bar_gen;
      g_spin = 0;
      break;
    }
    yield_waiting();
  }
  compiler_barrier();
  return {g_bar_count[p], g_bar_n[p]};
}

// Warp rendezvous of the calling lane: publishes payload, waits until every live lane of
// mask has arrived at the same generation, and returns the entry and that generation.
inline WarpSync* warp_rendezvous(unsigned mask, int op, uint64_t payload, unsigned* gen_out) {
  compiler_barrier();
  Fiber* self = g_cur;
  Warp& w = g_warps[self->warp];
  const unsigned bit = 1u << self->lane;
  if (!(mask & bit))
    fail("warp intrinsic called by lane %u of warp %u with mask 0x%08x that excludes it",
         self->lane, self->warp, mask);
  WarpSync* s = nullptr;
  for (int i = 0; i < w.nsync; ++i)
    if (w.sync[i].mask == mask) { s = &w.sync[i]; break; }
  if (!s) {
    if (w.nsync == GPULSTM_EMU_MAX_WARP_MASKS)
      fail("warp %u used more than %d distinct warp masks in one block", self->warp,
           GPULSTM_EMU_MAX_WARP_MASKS);
    s = &w.sync[w.nsync++];
    s->mask = mask;
    s->arrived = 0;
    s->gen = 0;
    memset(s->tag, 0xFF, sizeof s->tag);
  }
  const unsigned gen = s->gen, p = gen & 1u;
  if (s->arrived && s->op != op)
    fail("lanes of warp %u reached different warp intrinsics (op %d vs %d) with mask 0x%08x",
         self->warp, s->op, op, mask);
  s->op = op;
  s->slot[p][self->lane] = payload;
  s->tag[p][self->lane] = gen;
  s->arrived |= bit;
  g_spin = 0;
  while (s->gen == gen) {
    const unsigned need = mask & w.live;
    if ((s->arrived & need) == need) {
      s->arrived = 0;
      ++s->gen;
      g_spin = 0;
      break;
    }
    yield_waiting();
  }
  compiler_barrier();
  *gen_out = gen;
  return s;
}

template <class T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "warp intrinsics support trivially copyable types of at most 8 bytes");
  uint64_t u = 0;
  memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
inline T from_bits(uint64_t u) {
  T v;
  memcpy(&v, &u, sizeof(T));
  return v;
}

inline int check_width(int width) {
  if (width < 1 || width > 32 || (width & (width - 1)))
    fail("shuffle width %d is not a power of two in [1, 32]", width);
  return width;
}

// Shuffle: rendezvous, then read lane src's value of this generation. src == own lane
// returns var; a lane outside mask, absent or not participating reads as poison.
template <class T>
inline T shuffle(unsigned mask, int op, T var, unsigned src) {
  require_fibers("a warp shuffle");
  unsigned gen;
  WarpSync* s = warp_rendezvous(mask, op, to_bits(var), &gen);
  if (src == g_cur->lane) return var;
  if (src < 32 && ((mask >> src) & 1u) && s->tag[gen & 1u][src] == gen)
    return from_bits<T>(s->slot[gen & 1u][src]);
  return from_bits<T>(~uint64_t(0));
}

inline unsigned vote(unsigned mask, int op, int pred) {
  require_fibers("a warp vote");
  unsigned gen;
  WarpSync* s = warp_rendezvous(mask, op, pred != 0, &gen);
  unsigned ballot = 0, present = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && s->tag[gen & 1u][l] == gen) {
      present |= 1u << l;
      if (s->slot[gen & 1u][l]) ballot |= 1u << l;
    }
  return op == kAll ? unsigned(ballot == present) : op == kAny ? unsigned(ballot != 0) : ballot;
}

// ---------------------------------------------------------------------------------------
// Fiber stacks: one mmap; stack i occupies [base + i*S, base + (i+1)*S) with its lowest page
// PROT_NONE. Stack tops are staggered by 64 B per fiber so hot frames do not all alias to
// the same L1 set.
// ---------------------------------------------------------------------------------------
GPULSTM_EMU_HIDDEN unsigned char* g_stacks;
GPULSTM_EMU_HIDDEN unsigned g_stacks_cap;

inline bool ensure_stacks(unsigned n) {
  if (n <= g_stacks_cap) return true;
  const size_t S = GPULSTM_EMU_STACK_BYTES, page = 4096;
  unsigned cap = 64;
  while (cap < n) cap *= 2;
  if (g_stacks) munmap(g_stacks, size_t(g_stacks_cap) * S);
  g_stacks_cap = 0;
  void* p = mmap(nullptr, size_t(cap) * S, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) { g_stacks = nullptr; return false; }
  g_stacks = static_cast<unsigned char*>(p);
  for (unsigned i = 0; i < cap; ++i) mprotect(g_stacks + size_t(i) * S, page, PROT_NONE);
  g_stacks_cap = cap;
  return true;
}

// Unmaps the stacks when more than `keep` are mapped: each stack with its guard page is two
// kernel mappings, and a process has a limited number of them (vm.max_map_count).
inline void release_stacks_above(unsigned keep) {
  if (g_stacks && g_stacks_cap > keep) {
    munmap(g_stacks, size_t(g_stacks_cap) * GPULSTM_EMU_STACK_BYTES);
    g_stacks = nullptr;
    g_stacks_cap = 0;
  }
}

// Body of every worker: run the hosted thread to completion, then host the next unstarted
// thread in place (no switch), or, when none is left, leave the ring for good.
[[noreturn]] inline void worker_main() {
  for (;;) {
    g_body(g_args);
    compiler_barrier();
    Fiber* self = g_cur;
    g_warps[self->warp].live &= ~(1u << self->lane);
    --g_live;
    g_spin = 0;
    if (g_started < g_nthreads) {
      host_next_thread(self);
      g_threadIdx = self->tid;
      continue;
    }
    Context dead;  // this stack is not resumed again (its slot is not reused in this block)
    if (g_live == 0) switch_to(&dead, &g_main);
    Fiber* next = self->next;
    next->prev = self->prev;
    self->prev->next = next;
    g_cur = next;
    g_threadIdx = next->tid;
    switch_to(&dead, &next->ctx);
  }
}

// Prepares worker f to start worker_main on stack `slot`.
inline void init_context(Fiber& f, unsigned slot) {
  const size_t S = GPULSTM_EMU_STACK_BYTES;
  slot += g_stack_base;
  unsigned char* lo = g_stacks + size_t(slot) * S + 4096;
  unsigned char* top = g_stacks + size_t(slot + 1) * S - size_t(slot % 64) * 64;  // 16-aligned
#ifdef GPULSTM_EMU_UCONTEXT
  getcontext(&f.ctx.uc);
  f.ctx.uc.uc_stack.ss_sp = lo;
  f.ctx.uc.uc_stack.ss_size = size_t(top - lo);
  f.ctx.uc.uc_link = nullptr;
  makecontext(&f.ctx.uc, reinterpret_cast<void (*)()>(&worker_main), 0);
#else
  (void)lo;
  // Frame that gpulstm_emu_switch pops: r15 r14 r13 r12 rbx rbp (zeros), then the return
  // address worker_main at a 16-aligned slot, so worker_main starts with rsp % 16 == 8 as
  // after a call; above it a null fake return address ends backtraces.
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(&worker_main);
  for (int r = 0; r < 6; ++r) *--sp = nullptr;
  f.ctx.sp = sp;
#endif
}

// Runs one block with its threads as fibers; returns false after a failure.
inline bool run_block_fibers(unsigned nthreads) {
  const unsigned nwarps = (nthreads + 31) / 32;
  for (unsigned w = 0; w < nwarps; ++w) {
    const unsigned lanes = nthreads - 32 * w;
    g_warps[w].live = lanes >= 32 ? ~0u : (1u << lanes) - 1u;
    g_warps[w].nsync = 0;
  }
  g_nthreads = nthreads;
  g_live = nthreads;
  g_spin = 0;
  g_bar_arrived = 0;
  g_bar_gen = 0;
  g_bar_count[0] = g_bar_count[1] = 0;
  Fiber* first = &g_fibers[0];
  init_context(*first, 0);
  g_started = 0;
  g_next_tid = uint3{0, 0, 0};
  host_next_thread(first);
  first->next = first->prev = first;
  g_nworkers = 1;
  g_cur = first;
  g_threadIdx = first->tid;
  g_in_fibers = true;
  switch_to(&g_main, &first->ctx);  // returns when all threads exited or one failed
  g_in_fibers = false;
  return !g_error[0];
}

// Grid-wide barrier of a cooperative launch: the calling thread waits until every live thread
// of every block has arrived (see the header comment for the schedule).
inline void grid_barrier() {
  require_fibers("gpulstm_emu_grid_sync()");
  if (!g_coop) fail("gpulstm_emu_grid_sync() outside a cooperative launch");
  compiler_barrier();
  const unsigned gen = g_grid_gen;
  ++g_grid_arrived;
  g_spin = 0;
  while (g_grid_gen == gen) {
    if (g_grid_arrived >= g_live) {  // the whole block waits: suspend it, back to the launcher
      switch_to(&g_cur->ctx, &g_main);
      continue;  // resumed after the release
    }
    yield_waiting();
  }
  compiler_barrier();
}

// A suspended block of a cooperative launch.
struct SavedBlock {
  int state;  // 0 not started, 1 waiting at the grid barrier, 2 finished
  uint3 idx, next_tid;
  Fiber* cur;
  unsigned nworkers, started, live, spin, bar_arrived, bar_gen, bar_count[2], bar_n[2];
  Fiber* fibers;          // copies of g_fibers[0, nworkers)
  Warp* warps;            // copies of g_warps[0, nwarps)
  unsigned char* shared;  // its dynamic shared memory
};

inline void save_block(SavedBlock& b, unsigned nwarps, size_t shared_mem) {
  b.idx = g_blockIdx; b.next_tid = g_next_tid; b.cur = g_cur;
  b.nworkers = g_nworkers; b.started = g_started; b.live = g_live; b.spin = g_spin;
  b.bar_arrived = g_bar_arrived; b.bar_gen = g_bar_gen;
  memcpy(b.bar_count, g_bar_count, sizeof b.bar_count);
  memcpy(b.bar_n, g_bar_n, sizeof b.bar_n);
  memcpy(b.fibers, g_fibers, g_nworkers * sizeof(Fiber));
  memcpy(b.warps, g_warps, nwarps * sizeof(Warp));
  if (shared_mem) memcpy(b.shared, g_dynamic_shared, shared_mem);
}

inline void restore_block(const SavedBlock& b, unsigned nwarps, size_t shared_mem) {
  g_blockIdx = b.idx; g_next_tid = b.next_tid; g_cur = b.cur;
  g_nworkers = b.nworkers; g_started = b.started; g_live = b.live; g_spin = 0;
  g_bar_arrived = b.bar_arrived; g_bar_gen = b.bar_gen;
  memcpy(g_bar_count, b.bar_count, sizeof b.bar_count);
  memcpy(g_bar_n, b.bar_n, sizeof b.bar_n);
  memcpy(g_fibers, b.fibers, b.nworkers * sizeof(Fiber));
  memcpy(g_warps, b.warps, nwarps * sizeof(Warp));
  if (shared_mem) memcpy(g_dynamic_shared, b.shared, shared_mem);
}

inline void begin_block(unsigned bx, unsigned by, unsigned bz, size_t shared_mem) {
  g_blockIdx = uint3{bx, by, bz};
  if (shared_mem) memset(g_dynamic_shared, 0xFF, shared_mem);  // poison: NaN
}

// ---------------------------------------------------------------------------------------
// Launch table support: argument unpacking, parameter signatures, runners
// ---------------------------------------------------------------------------------------
// Arguments arrive as 8-byte slots (little endian, value in the low bytes).
template <class A>
inline A load_arg(const unsigned char* slot) {
  static_assert(sizeof(A) <= 8, "kernel parameters larger than 8 bytes are not supported");
  A a;
  memcpy(&a, slot, sizeof(A));
  return a;
}

// Type code of a scalar: kind letter (b bool, f float, i signed, u unsigned, X other) and
// size in bytes, e.g. "f4", "i8", "X16".
template <class T>
inline void write_scalar_code(char*& p) {
  using U = typename std::remove_cv<T>::type;
  char kind = std::is_same<U, bool>::value ? 'b'
              : std::is_floating_point<U>::value ? 'f'
              : std::is_integral<U>::value ? (std::is_signed<U>::value ? 'i' : 'u')
              : 'X';
  p += sprintf(p, "%c%zu", kind, sizeof(U));
}
// Parameter code: scalar code, or "P" + pointee code ("Pv" for void*, "PX8" for T**).
template <class T>
inline void write_param_code(char*& p) {
  if constexpr (std::is_pointer<T>::value) {
    using U = typename std::remove_cv<typename std::remove_pointer<T>::type>::type;
    *p++ = 'P';
    if constexpr (std::is_void<U>::value) *p++ = 'v';
    else if constexpr (std::is_pointer<U>::value) p += sprintf(p, "X%zu", sizeof(U));
    else write_scalar_code<U>(p);
  } else {
    write_scalar_code<T>(p);
  }
}

template <class F>
struct KernelTraits;
template <class... A>
struct KernelTraits<void (*)(A...)> {
  static constexpr int arity = int(sizeof...(A));
  template <void (*K)(A...), size_t... I>
  static inline void invoke(const unsigned char* args, std::index_sequence<I...>) {
    K(load_arg<A>(args + 8 * I)...);
  }
  // "Pf4,Pf4,i4,f4": one code per parameter, comma separated.
  static const char* signature() {
    static char buf[16 * (sizeof...(A) + 1)];
    if (!buf[0] && arity) {
      char* p = buf;
      ((write_param_code<A>(p), *p++ = ','), ...);
      p[-1] = 0;
    }
    return buf;
  }
};

template <auto K>
inline void run_thread(const unsigned char* args) {
  using T = KernelTraits<decltype(K)>;
  T::template invoke<K>(args, std::make_index_sequence<T::arity>{});
}

// Sequential mode: every thread of a block to completion, x fastest; blocks in order.
template <auto K>
void run_sequential(const unsigned char* args, size_t shared_mem) {
  const dim3 g = g_gridDim, b = g_blockDim;
  for (unsigned bz = 0; bz < g.z; ++bz)
    for (unsigned by = 0; by < g.y; ++by)
      for (unsigned bx = 0; bx < g.x; ++bx) {
        begin_block(bx, by, bz, shared_mem);
        for (unsigned tz = 0; tz < b.z; ++tz)
          for (unsigned ty = 0; ty < b.y; ++ty)
            for (unsigned tx = 0; tx < b.x; ++tx) {
              g_threadIdx = uint3{tx, ty, tz};
              run_thread<K>(args);
            }
      }
}

inline bool run_fibers(void (*body)(const unsigned char*), const unsigned char* args,
                       size_t shared_mem) {
  const dim3 g = g_gridDim, b = g_blockDim;
  const unsigned n = b.x * b.y * b.z;
  if (!ensure_stacks(n)) fail("cannot map %u fiber stacks of %d bytes", n, GPULSTM_EMU_STACK_BYTES);
  g_body = body;
  g_args = args;
  for (unsigned bz = 0; bz < g.z; ++bz)
    for (unsigned by = 0; by < g.y; ++by)
      for (unsigned bx = 0; bx < g.x; ++bx) {
        begin_block(bx, by, bz, shared_mem);
        if (!run_block_fibers(n)) return false;
      }
  return true;
}

// Cooperative launch: every block's threads as fibers, blocks switched at the grid barrier.
inline bool run_cooperative(void (*body)(const unsigned char*), const unsigned char* args,
                            size_t shared_mem) {
  const dim3 g = g_gridDim, b = g_blockDim;
  const unsigned n = b.x * b.y * b.z, nwarps = (n + 31) / 32;
  const unsigned nblocks = g.x * g.y * g.z;
  if (!ensure_stacks(nblocks * n))
    fail("cannot map %u fiber stacks of %d bytes", nblocks * n, GPULSTM_EMU_STACK_BYTES);
  SavedBlock* blocks = static_cast<SavedBlock*>(calloc(nblocks, sizeof(SavedBlock)));
  bool ok = blocks != nullptr;
  for (unsigned i = 0; ok && i < nblocks; ++i) {
    blocks[i].fibers = static_cast<Fiber*>(malloc(n * sizeof(Fiber)));
    blocks[i].warps = static_cast<Warp*>(malloc(nwarps * sizeof(Warp)));
    blocks[i].shared = static_cast<unsigned char*>(malloc(shared_mem ? shared_mem : 1));
    ok = blocks[i].fibers && blocks[i].warps && blocks[i].shared;
  }
  g_body = body;
  g_args = args;
  g_coop = true;
  g_grid_gen = 0;
  while (ok) {
    unsigned waiting = 0, finished = 0;
    for (unsigned i = 0; ok && i < nblocks; ++i) {
      SavedBlock& s = blocks[i];
      if (s.state == 2) { ++finished; continue; }
      g_stack_base = i * n;
      g_grid_arrived = 0;
      if (s.state == 0) {
        begin_block(i % g.x, (i / g.x) % g.y, i / (g.x * g.y), shared_mem);
        ok = run_block_fibers(n);
      } else {
        restore_block(s, nwarps, shared_mem);
        g_threadIdx = g_cur->tid;
        g_in_fibers = true;
        switch_to(&g_main, &g_cur->ctx);  // back when the block waits again or finished
        g_in_fibers = false;
        ok = !g_error[0];
      }
      if (!ok) break;
      if (g_live == 0) { s.state = 2; ++finished; }
      else { save_block(s, nwarps, shared_mem); s.state = 1; ++waiting; }
    }
    if (!ok || waiting == 0) break;
    if (finished) {
      snprintf(g_error, sizeof g_error, "deadlock in a cooperative launch: %u block(s) exited "
               "while %u wait at the grid barrier", finished, waiting);
      ok = false;
      break;
    }
    ++g_grid_gen;  // every block waits: release the barrier
  }
  if (!blocks && !g_error[0]) snprintf(g_error, sizeof g_error, "out of memory for %u blocks", nblocks);
  if (blocks && !ok && !g_error[0])
    snprintf(g_error, sizeof g_error, "out of memory for the state of %u blocks", nblocks);
  for (unsigned i = 0; blocks && i < nblocks; ++i) {
    free(blocks[i].fibers); free(blocks[i].warps); free(blocks[i].shared);
  }
  free(blocks);
  g_coop = false;
  g_stack_base = 0;
  release_stacks_above(1024);  // a big grid's stacks (two mappings each) go back right away
  return ok;
}

struct KernelEntry {
  int arity;
  const char* (*signature)();
  void (*sequential)(const unsigned char*, size_t);
  void (*thread)(const unsigned char*);
};

template <auto K>
constexpr KernelEntry entry() {
  using T = KernelTraits<decltype(K)>;
  return KernelEntry{T::arity, &T::signature, &run_sequential<K>, &run_thread<K>};
}

// Returns 0 on success; otherwise writes the error message to err.
inline int launch(const KernelEntry& e, int fibers, dim3 grid, dim3 block,
                  const unsigned char* args, size_t shared_mem, char* err, size_t errlen) {
  g_error[0] = 0;
  g_in_fibers = false;
  if (shared_mem > GPULSTM_EMU_MAX_DYNAMIC_SHARED) {
    snprintf(err, errlen, "shared_mem=%zu exceeds the emulator's %d bytes", shared_mem,
             GPULSTM_EMU_MAX_DYNAMIC_SHARED);
    return 1;
  }
  if (block.x * block.y * block.z > 1024) {
    snprintf(err, errlen, "block of %u threads exceeds 1024", block.x * block.y * block.z);
    return 1;
  }
  g_gridDim = grid;
  g_blockDim = block;
  try {
    if (fibers == 2) run_cooperative(e.thread, args, shared_mem);
    else if (fibers) run_fibers(e.thread, args, shared_mem);
    else e.sequential(args, shared_mem);
  } catch (const Failure&) {
  }
  g_in_fibers = false;
  if (g_error[0]) {
    snprintf(err, errlen, "%s", g_error);
    return 1;
  }
  return 0;
}

}  // namespace gpulstm_emu

// ---------------------------------------------------------------------------------------
// Synchronization and warp intrinsics
// ---------------------------------------------------------------------------------------
inline void __syncthreads() {
  gpulstm_emu::require_fibers("__syncthreads()");
  gpulstm_emu::block_barrier(0);
}
inline int __syncthreads_count(int pred) {
  gpulstm_emu::require_fibers("__syncthreads_count()");
  return int(gpulstm_emu::block_barrier(pred).first);
}
inline int __syncthreads_and(int pred) {
  gpulstm_emu::require_fibers("__syncthreads_and()");
  auto r = gpulstm_emu::block_barrier(pred);
  return r.first == r.second;
}
inline int __syncthreads_or(int pred) {
  gpulstm_emu::require_fibers("__syncthreads_or()");
  return gpulstm_emu::block_barrier(pred).first != 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  gpulstm_emu::require_fibers("__syncwarp()");
  unsigned gen;
  gpulstm_emu::warp_rendezvous(mask, gpulstm_emu::kSyncWarp, 0, &gen);
}
inline unsigned __activemask() {
  gpulstm_emu::require_fibers("__activemask()");
  return gpulstm_emu::g_warps[gpulstm_emu::g_cur->warp].live;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return gpulstm_emu::vote(mask, gpulstm_emu::kBallot, pred);
}
inline int __any_sync(unsigned mask, int pred) { return int(gpulstm_emu::vote(mask, gpulstm_emu::kAny, pred)); }
inline int __all_sync(unsigned mask, int pred) { return int(gpulstm_emu::vote(mask, gpulstm_emu::kAll, pred)); }

// Lane arithmetic as in the CUDA Programming Guide: lanes form groups of `width`.
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
  const unsigned w = unsigned(gpulstm_emu::check_width(width));
  const unsigned lane = gpulstm_emu::g_in_fibers ? gpulstm_emu::g_cur->lane : 0;
  return gpulstm_emu::shuffle(mask, gpulstm_emu::kShfl, var, (lane & ~(w - 1)) + (unsigned(srcLane) & (w - 1)));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const unsigned w = unsigned(gpulstm_emu::check_width(width));
  const unsigned lane = gpulstm_emu::g_in_fibers ? gpulstm_emu::g_cur->lane : 0;
  const unsigned src = (lane & (w - 1)) >= delta ? lane - delta : lane;
  return gpulstm_emu::shuffle(mask, gpulstm_emu::kShflUp, var, src);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const unsigned w = unsigned(gpulstm_emu::check_width(width));
  const unsigned lane = gpulstm_emu::g_in_fibers ? gpulstm_emu::g_cur->lane : 0;
  const unsigned src = (lane & (w - 1)) + delta < w ? lane + delta : lane;
  return gpulstm_emu::shuffle(mask, gpulstm_emu::kShflDown, var, src);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
  const unsigned w = unsigned(gpulstm_emu::check_width(width));
  const unsigned lane = gpulstm_emu::g_in_fibers ? gpulstm_emu::g_cur->lane : 0;
  const unsigned src = lane ^ unsigned(laneMask);
  // A later group reads its own value; earlier groups are readable.
  return gpulstm_emu::shuffle(mask, gpulstm_emu::kShflXor, var,
                              src >= (lane & ~(w - 1)) + w ? lane : src);
}

inline void __threadfence() { gpulstm_emu::compiler_barrier(); }
// Grid-wide barrier, available in cooperative launches only (the emulator's stand-in for
// cooperative_groups::this_grid().sync(); kernels/ use it under #ifdef GPULSTM_EMULATED).
inline void gpulstm_emu_grid_sync() { gpulstm_emu::grid_barrier(); }
inline void __threadfence_block() { gpulstm_emu::compiler_barrier(); }
inline void __threadfence_system() { gpulstm_emu::compiler_barrier(); }
[[noreturn]] inline void __trap() { gpulstm_emu::fail("__trap() called"); }

// ---------------------------------------------------------------------------------------
// Atomics: plain operations (only one CUDA thread runs at a time, and it is never switched
// out inside these functions).
// ---------------------------------------------------------------------------------------
template <class T> inline T atomicAdd(T* a, T v) { T o = *a; *a = o + v; return o; }
template <class T> inline T atomicSub(T* a, T v) { T o = *a; *a = o - v; return o; }
template <class T> inline T atomicExch(T* a, T v) { T o = *a; *a = v; return o; }
template <class T> inline T atomicMax(T* a, T v) { T o = *a; *a = o < v ? v : o; return o; }
template <class T> inline T atomicMin(T* a, T v) { T o = *a; *a = v < o ? v : o; return o; }
template <class T> inline T atomicAnd(T* a, T v) { T o = *a; *a = o & v; return o; }
template <class T> inline T atomicOr(T* a, T v) { T o = *a; *a = o | v; return o; }
template <class T> inline T atomicXor(T* a, T v) { T o = *a; *a = o ^ v; return o; }
template <class T> inline T atomicCAS(T* a, T cmp, T v) { T o = *a; if (o == cmp) *a = v; return o; }
inline unsigned atomicInc(unsigned* a, unsigned v) { unsigned o = *a; *a = o >= v ? 0u : o + 1u; return o; }
inline unsigned atomicDec(unsigned* a, unsigned v) { unsigned o = *a; *a = (o == 0u || o > v) ? v : o - 1u; return o; }

// ---------------------------------------------------------------------------------------
// Math. <math.h> provides the C functions (expf, tanhf, ...) and, through libstdc++, the
// float/double overloads of the unsuffixed names (exp(float) is expf). Added here: CUDA's
// extras. Fast intrinsics (__expf, __fdividef, ...) are computed with the accurate libm
// function: the emulator is at least as accurate as the GPU, not bit-identical.
// ---------------------------------------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline double rcbrt(double x) { return 1.0 / cbrt(x); }
inline float fdividef(float x, float y) { return x / y; }
inline float __fdividef(float x, float y) { return x / y; }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x); *c = cosf(x); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
// IEEE round-to-nearest operations (never contracted: -ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __dsqrt_rn(double a) { return sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
// Conversions and bit casts.
inline int __float2int_rn(float x) { return int(rintf(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float2int_rd(float x) { return int(floorf(x)); }
inline int __float2int_ru(float x) { return int(ceilf(x)); }
inline float __int2float_rn(int x) { return float(x); }
inline int __double2int_rn(double x) { return int(rint(x)); }
inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; memcpy(&x, &i, 8); return x; }
// Integer intrinsics.
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz(unsigned(x)) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  return __builtin_bswap32(x);
}
template <class T> inline T __ldg(const T* p) { return *p; }

// min/max for any pair of arithmetic types, as CUDA's overload set: the usual arithmetic
// conversion, then fminf/fmin (NaN-ignoring) for floating point, < for integers.
template <class A, class B,
          class = typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>::type>
inline typename std::common_type<A, B>::type min(A a, B b) {
  using C = typename std::common_type<A, B>::type;
  if constexpr (std::is_floating_point<C>::value) return fmin(C(a), C(b));
  else return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B,
          class = typename std::enable_if<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>::type>
inline typename std::common_type<A, B>::type max(A a, B b) {
  using C = typename std::common_type<A, B>::type;
  if constexpr (std::is_floating_point<C>::value) return fmax(C(a), C(b));
  else return C(a) < C(b) ? C(b) : C(a);
}

#endif  // GPULSTM_CUDA_ON_CPU_H
