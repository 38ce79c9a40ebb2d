// y[M,N] = x[M,K] @ w[K,N] in float32 for a few rows M, reading w from memory once (XLA FFI, CPU).
//
// Why: a cached forward of K+1 tokens should cost what one token costs (the weights stream from
// memory once either way). XLA's CPU backend runs a 1-row product as its tiled gemv, which
// streams w once, but sends 2..8 rows to a GEMM library (YNNPACK) that costs 2-3x the gemv per
// weight byte on a 2-core AMD EPYC (docs/results/cpu_verification_cost.md). This kernel streams
// w once, row-major as the gemv does, and applies each vector of it to every row of x.
//
// Sums run over k in order from 0, one fused multiply-add per term (build with -ffp-contract=fast
// and the host's ISA): the sequence XLA's gemv compiles to, so each row's result is bitwise what
// XLA's 1-row product gives, for every M and any number of threads.

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

constexpr int64_t kLanes = 8;     // columns per vector
constexpr int64_t kWide = 16;     // columns per step: two vectors, a 64-byte line of a row of w
constexpr int64_t kDepth = 4;     // rows of w per step, held in registers (2 * kDepth vectors)
constexpr int64_t kBlock = 8192;  // columns per block: the block's rows of y stay in L2

inline v8 Load(const float* p) { return *reinterpret_cast<const v8u*>(p); }
inline void Store(float* p, v8 v) { *reinterpret_cast<v8u*>(p) = v; }

// Columns [c0, c1) of y (a multiple of 16 wide), all m rows (M of them when M > 0: unrolled).
// Per block of columns, w is swept row-major kDepth rows at a time (kDepth sequential streams,
// as XLA's gemv reads it), each vector of w loaded once and applied to every row of x, each
// broadcast element of x to two vectors of w.
template <int M>
void Columns(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
             int64_t m, int64_t k_dim, int64_t n_dim, int64_t c0, int64_t c1) {
  if (M > 0) m = M;
  for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
    const int64_t b1 = std::min(c1, b0 + kBlock);
    for (int64_t r = 0; r < m; ++r) std::fill(y + r * n_dim + b0, y + r * n_dim + b1, 0.0f);
    int64_t k0 = 0;
    for (; k0 + kDepth <= k_dim; k0 += kDepth) {
      for (int64_t c = b0; c < b1; c += kWide) {
        v8 lo[kDepth], hi[kDepth];
        for (int64_t d = 0; d < kDepth; ++d) {
          lo[d] = Load(w + (k0 + d) * n_dim + c);
          hi[d] = Load(w + (k0 + d) * n_dim + c + kLanes);
        }
        for (int64_t r = 0; r < m; ++r) {
          const float* xr = x + r * k_dim + k0;
          float* yr = y + r * n_dim + c;
          v8 a = Load(yr), b = Load(yr + kLanes);
          for (int64_t d = 0; d < kDepth; ++d) {
            const float s = xr[d];
            a = a + lo[d] * s;
            b = b + hi[d] * s;
          }
          Store(yr, a);
          Store(yr + kLanes, b);
        }
      }
    }
    for (; k0 < k_dim; ++k0) {  // the last K % kDepth rows of w, one at a time
      for (int64_t c = b0; c < b1; c += kLanes) {
        const v8 wv = Load(w + k0 * n_dim + c);
        for (int64_t r = 0; r < m; ++r) {
          Store(y + r * n_dim + c, Load(y + r * n_dim + c) + wv * x[r * k_dim + k0]);
        }
      }
    }
  }
}

ffi::Error MatVecImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                      ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (wd.size() != 2 || xd.size() < 1 || xd.back() != wd[0] || wd[1] % kWide) {
    return ffi::Error::InvalidArgument(
        "cpu_matvec: x [..., K] and w [K, N] with N % 16 == 0 expected");
  }
  const int64_t k_dim = wd[0], n_dim = wd[1];
  const int64_t m = k_dim ? static_cast<int64_t>(x.element_count()) / k_dim : 0;
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  if (k_dim == 0) {
    std::memset(yp, 0, sizeof(float) * m * n_dim);
    return ffi::Error::Success();
  }
  // Chunks of whole 16-column strips, at least ~128 KiB of w each, up to 4 per thread, claimed
  // by the caller and the pool's threads alike: a thread the OS has not run yet leaves its share
  // to the others instead of holding the caller up.
  const int64_t strips = n_dim / kWide;
  const int64_t min_strips = std::max<int64_t>(1, (128 << 10) / (k_dim * kWide * 4));
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks = std::max<int64_t>(1, std::min(4 * threads, strips / min_strips));
  auto columns = [=](int64_t chunk) {
    const int64_t c0 = strips * chunk / chunks * kWide, c1 = strips * (chunk + 1) / chunks * kWide;
    switch (m) {
      case 1: return Columns<1>(xp, wp, yp, m, k_dim, n_dim, c0, c1);
      case 2: return Columns<2>(xp, wp, yp, m, k_dim, n_dim, c0, c1);
      case 3: return Columns<3>(xp, wp, yp, m, k_dim, n_dim, c0, c1);
      case 4: return Columns<4>(xp, wp, yp, m, k_dim, n_dim, c0, c1);
      case 5: return Columns<5>(xp, wp, yp, m, k_dim, n_dim, c0, c1);
      case 6: return Columns<6>(xp, wp, yp, m, k_dim, n_dim, c0, c1);
      case 7: return Columns<7>(xp, wp, yp, m, k_dim, n_dim, c0, c1);
      case 8: return Columns<8>(xp, wp, yp, m, k_dim, n_dim, c0, c1);
      default: return Columns<0>(xp, wp, yp, m, k_dim, n_dim, c0, c1);
    }
  };
  if (chunks == 1 || threads == 1) {
    for (int64_t c = 0; c < chunks; ++c) columns(c);
    return ffi::Error::Success();
  }
  struct Shared {  // outlives this call: a late pool task still reads `next`
    std::atomic<int64_t> next{0}, done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto work = [=] {
    for (int64_t c; (c = shared->next.fetch_add(1)) < chunks;) {
      columns(c);
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
