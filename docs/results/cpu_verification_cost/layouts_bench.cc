// Standalone microbenchmark (issue 29, 2026-12-07): the engine's packed-panel kernel
// (ppow_jax/models/cpu_matvec.cc, included: w stored [N/16][K][16], each 16-column panel summed
// over k in registers, Q panels at a time, rows in groups of G) against the row-major sweep it
// replaced (RowSweep below, the engine's kernel until 2026-12-07, kept here as the baseline).
// One thread, a chain of SmolLM2-135M's shapes (30 x [576, 1536] + the [576, 49152] head:
// 219 MB). Both sum each output over k in order from 0 with one FMA per term, so "bitwise 1"
// checks the packed results against the row sweep's.
//   g++ -w -O3 -march=native -ffp-contract=fast -std=c++17 \
//     -I $(python -c 'import jax; print(jax.ffi.include_dir())') -o layouts_bench layouts_bench.cc
//   ./layouts_bench
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
// The engine's kernel itself (its Sweep, Panels<G, Q>, Load, Store, kPanel, kLanes), not a copy.
#include "../../../ppow_jax/models/cpu_matvec.cc"

// The previous engine kernel on row-major w [K][N]: per 4 rows of w, each 16-column strip is
// applied to every row of y, which is loaded and stored each time.
template <int M>
void RowSweep(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
              int64_t k_dim, int64_t n_dim) {
  constexpr int64_t kDepth = 4;
  for (int64_t r = 0; r < M; ++r) std::fill(y + r * n_dim, y + r * n_dim + n_dim, 0.0f);
  int64_t k0 = 0;
  for (; k0 + kDepth <= k_dim; k0 += kDepth) {
    for (int64_t c = 0; c < n_dim; c += kPanel) {
      v8 lo[kDepth], hi[kDepth];
      for (int64_t d = 0; d < kDepth; ++d) {
        lo[d] = Load(w + (k0 + d) * n_dim + c);
        hi[d] = Load(w + (k0 + d) * n_dim + c + kLanes);
      }
      for (int64_t r = 0; r < M; ++r) {
        const float* xr = x + r * k_dim + k0;
        float* yr = y + r * n_dim + c;
        v8 a = Load(yr), b = Load(yr + kLanes);
        for (int64_t d = 0; d < kDepth; ++d) {
          a = a + lo[d] * xr[d];
          b = b + hi[d] * xr[d];
        }
        Store(yr, a);
        Store(yr + kLanes, b);
      }
    }
  }
  for (; k0 < k_dim; ++k0) {
    for (int64_t c = 0; c < n_dim; c += kLanes) {
      const v8 wv = Load(w + k0 * n_dim + c);
      for (int64_t r = 0; r < M; ++r) {
        Store(y + r * n_dim + c, Load(y + r * n_dim + c) + wv * x[r * k_dim + k0]);
      }
    }
  }
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main() {
  const int64_t K = 576;
  std::vector<int64_t> Ns(30, 1536);
  Ns.push_back(49152);
  std::vector<std::vector<float>> W, WP;
  for (auto n : Ns) {
    std::vector<float> w(K * n), wp(K * n);
    for (auto& v : w) v = (rand() % 1000) / 1000.f - 0.5f;
    for (int64_t p = 0; p < n / kPanel; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < kPanel; ++j)
          wp[(p * K + k) * kPanel + j] = w[k * n + p * kPanel + j];
    W.push_back(std::move(w));
    WP.push_back(std::move(wp));
  }
  std::vector<float> x(8 * K), y(8 * 49152), y2(8 * 49152);
  for (auto& v : x) v = (rand() % 1000) / 1000.f;
  auto run = [&](auto f, int reps) {
    double best = 1e9;
    for (int r = 0; r < reps; ++r) {
      double t = now();
      for (size_t i = 0; i < Ns.size(); ++i) f(i);
      best = std::min(best, now() - t);
    }
    return best * 1e3;
  };
  auto same = [&](int m) { return memcmp(y.data(), y2.data(), 4 * m * Ns.back()) == 0; };
  // The row sweep against the engine's Sweep (its choice of G, Q for M), then other G, Q.
#define BOTH(MM)                                                                                  \
  {                                                                                               \
    double c = run([&](size_t i) { RowSweep<MM>(x.data(), W[i].data(), y.data(), K, Ns[i]); }, 7); \
    double p = run([&](size_t i) {                                                                \
      Sweep(x.data(), WP[i].data(), y2.data(), MM, K, Ns[i], 0, Ns[i] / kPanel); }, 7);           \
    printf("M=%d row sweep %.1f ms, engine's packed %.1f ms (%.1f / %.1f GB/s) bitwise %d\n", MM, \
           c, p, 219.0 / c, 219.0 / p, same(MM));                                                 \
  }
#define VAR(MM, G, Q)                                                                             \
  {                                                                                               \
    double p = run([&](size_t i) {                                                                \
      Panels<G, Q>(x.data(), WP[i].data(), y2.data(), MM, K, Ns[i], 0, Ns[i] / kPanel); }, 7);    \
    printf("  M=%d G=%d Q=%d %.1f ms (%.1f GB/s) bitwise %d\n", MM, G, Q, p, 219.0 / p, same(MM)); \
  }
  BOTH(1) VAR(1, 1, 1) VAR(1, 1, 2) VAR(1, 1, 6)
  BOTH(2) VAR(2, 2, 1) VAR(2, 2, 2) VAR(2, 1, 4)
  BOTH(3) VAR(3, 3, 1) VAR(3, 2, 3)
  BOTH(4) VAR(4, 4, 1) VAR(4, 2, 3) VAR(4, 3, 1)
  BOTH(5) VAR(5, 5, 1) VAR(5, 3, 1) VAR(5, 2, 3)
  BOTH(6) VAR(6, 6, 1) VAR(6, 2, 3)
  BOTH(8) VAR(8, 4, 1) VAR(8, 6, 1) VAR(8, 2, 3)
}
