// y[M,N] = x[M,K] @ w in float32, w stored as 16-column panels [N/16][K][16] (XLA FFI, CPU).
//
// Why: a cached forward of K+1 tokens should cost what one token costs (the weights stream from
// memory once either way). In a panel, k runs down contiguous 64-byte lines, so each output's sum
// stays in a register over all of k: per k, one line of w is loaded and applied to every row of
// x, and y is stored once at the end. (The row-major sweep this replaces loaded and stored every
// row of y per few rows of w: its cost grew with M; docs/results/cpu_verification_cost.md.)
//
// Sums run over k in order from 0, one fused multiply-add per term (build with -ffp-contract=fast
// and the host's ISA): the sequence XLA's 1-row gemv compiles to on the row-major w, so each row's
// result is bitwise what XLA's 1-row product gives, for every M and any number of threads.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));  // an unaligned load/store

constexpr int64_t kLanes = 8;   // columns per vector
constexpr int64_t kPanel = 16;  // columns per panel: two vectors, one 64-byte line per k

inline v8 Load(const float* p) { return *reinterpret_cast<const v8u*>(p); }
inline void Store(float* p, v8 v) { *reinterpret_cast<v8u*>(p) = v; }

// Rows [0, G) of x and y (strides k_dim, n_dim), panels [p, p + Q): 2 * G * Q accumulators held
// in registers over all of k. AVX2 has 16 vector registers: G * Q <= 6 leaves room for the two
// vectors of w and a broadcast of x (more spills accumulators to the stack).
template <int G, int Q>
void Block(const float* __restrict__ x, const float* __restrict__ wp, float* __restrict__ y,
           int64_t k_dim, int64_t n_dim, int64_t p) {
  v8 lo[Q][G], hi[Q][G];
  for (int q = 0; q < Q; ++q) {
    for (int r = 0; r < G; ++r) lo[q][r] = hi[q][r] = v8{};
  }
  const float* w = wp + p * k_dim * kPanel;
  for (int64_t k = 0; k < k_dim; ++k) {
    for (int q = 0; q < Q; ++q) {
      const float* wk = w + (q * k_dim + k) * kPanel;
      const v8 a = Load(wk), b = Load(wk + kLanes);
      for (int r = 0; r < G; ++r) {
        const float s = x[r * k_dim + k];
        lo[q][r] = lo[q][r] + a * s;
        hi[q][r] = hi[q][r] + b * s;
      }
    }
  }
  for (int q = 0; q < Q; ++q) {
    for (int r = 0; r < G; ++r) {
      Store(y + r * n_dim + (p + q) * kPanel, lo[q][r]);
      Store(y + r * n_dim + (p + q) * kPanel + kLanes, hi[q][r]);
    }
  }
}

// The last `rest` (< G) rows of panels [p, p + Q).
template <int G, int Q>
void Rest(const float* x, const float* wp, float* y, int64_t k_dim, int64_t n_dim, int64_t p,
          int64_t rest) {
  if constexpr (G > 0) {
    if (rest == G) return Block<G, Q>(x, wp, y, k_dim, n_dim, p);
    Rest<G - 1, Q>(x, wp, y, k_dim, n_dim, p, rest);
  }
}

// All m rows of panels [p0, p1): Q panels at a time (Q memory streams), each read from memory
// once and re-read from L2 by each group of G rows.
template <int G, int Q>
void Panels(const float* x, const float* wp, float* y, int64_t m, int64_t k_dim, int64_t n_dim,
            int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; p += Q) {
    if (p + Q > p1) {  // a chunk's last panels, one at a time
      for (; p < p1; ++p) Panels<G, 1>(x, wp, y, m, k_dim, n_dim, p, p + 1);
      return;
    }
    int64_t r = 0;
    for (; r + G <= m; r += G) Block<G, Q>(x + r * k_dim, wp, y + r * n_dim, k_dim, n_dim, p);
    Rest<G - 1, Q>(x + r * k_dim, wp, y + r * n_dim, k_dim, n_dim, p, m - r);
  }
}

// Rows per group and panels at a time by M: the fastest (or near it) in
// docs/results/cpu_verification_cost/layouts_bench.cc on a Zen 3 core, all within 12
// accumulators. Larger groups re-read w from cache less often; a 4-row M does best as 2 x 2.
void Sweep(const float* x, const float* wp, float* y, int64_t m, int64_t k_dim, int64_t n_dim,
           int64_t p0, int64_t p1) {
  switch (m) {
    case 1: return Panels<1, 4>(x, wp, y, m, k_dim, n_dim, p0, p1);
    case 2: case 4: return Panels<2, 3>(x, wp, y, m, k_dim, n_dim, p0, p1);
    case 3: return Panels<3, 2>(x, wp, y, m, k_dim, n_dim, p0, p1);
    case 5: return Panels<5, 1>(x, wp, y, m, k_dim, n_dim, p0, p1);
    default: return Panels<6, 1>(x, wp, y, m, k_dim, n_dim, p0, p1);
  }
}

ffi::Error MatVecImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                      ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (wd.size() != 3 || wd[2] != kPanel || xd.size() < 1 || xd.back() != wd[1]) {
    return ffi::Error::InvalidArgument(
        "cpu_matvec: x [..., K] and w packed as [N/16, K, 16] expected");
  }
  const int64_t panels = wd[0], k_dim = wd[1], n_dim = panels * kPanel;
  const int64_t m = k_dim ? static_cast<int64_t>(x.element_count()) / k_dim : 0;
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  if (k_dim == 0) {
    std::memset(yp, 0, sizeof(float) * m * n_dim);
    return ffi::Error::Success();
  }
  // Chunks of whole panels, at least ~128 KiB of w each, up to 4 per thread, claimed by the
  // caller and the pool's threads alike: a thread the OS has not run yet leaves its share to
  // the others instead of holding the caller up.
  const int64_t min_panels = std::max<int64_t>(1, (128 << 10) / (k_dim * kPanel * 4));
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks = std::max<int64_t>(1, std::min(4 * threads, panels / min_panels));
  auto chunk = [=](int64_t c) {
    Sweep(xp, wp, yp, m, k_dim, n_dim, panels * c / chunks, panels * (c + 1) / chunks);
  };
  if (chunks == 1 || threads == 1) {
    for (int64_t c = 0; c < chunks; ++c) chunk(c);
    return ffi::Error::Success();
  }
  struct Shared {  // outlives this call: a late pool task still reads `next`
    std::atomic<int64_t> next{0}, done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto work = [=] {
    for (int64_t c; (c = shared->next.fetch_add(1)) < chunks;) {
      chunk(c);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < std::min(threads, chunks); ++t) pool.Schedule([work] { work(); });
  work();
  while (shared->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PpowCpuMatVec, MatVecImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
