// Standalone microbenchmark (issue 29, 2026-12-07): the engine's row-sweep kernel (Cur, as in
// ppow_jax/models/cpu_matvec.cc) against a packed-panel layout, w stored [N/16][K][16], each
// 16-column panel summed over k in registers (Packed / PackedP: P panels at a time, rows in
// groups of G) and a row-major variant holding D rows of w per y load (Deep). One thread, a chain
// of SmolLM2-135M's shapes (30 x [576, 1536] + the [576, 49152] head: 219 MB). Every variant sums
// each output over k in order from 0 with one FMA per term, so "bitwise 1" checks it against Cur.
//   g++ -w -O3 -march=native -ffp-contract=fast -std=c++17 \
//     -I $(python -c 'import jax; print(jax.ffi.include_dir())') -o layouts_bench layouts_bench.cc
//   ./layouts_bench
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <cstdint>
// The engine's kernel itself (its Columns<M>, Load, Store, kWide, kLanes), not a copy.
#include "../../../ppow_jax/models/cpu_matvec.cc"

template <int M>
void Cur(const float* x, const float* w, float* y, int64_t k_dim, int64_t n_dim) {
  Columns<M>(x, w, y, M, k_dim, n_dim, 0, n_dim);
}

// Packed: wp[N/16][K][16]. Each 16-column panel: k-inner, accumulators in registers.
template <int M>
void Packed(const float* __restrict__ x, const float* __restrict__ wp, float* __restrict__ y,
            int64_t k_dim, int64_t n_dim) {
  for (int64_t p = 0; p < n_dim / kWide; ++p) {
    const float* w = wp + p * k_dim * kWide;
    v8 a[M], b[M];
    for (int r = 0; r < M; ++r) { a[r] = v8{}; b[r] = v8{}; }
    for (int64_t k = 0; k < k_dim; ++k) {
      const v8 lo = Load(w + k * kWide), hi = Load(w + k * kWide + kLanes);
      for (int r = 0; r < M; ++r) { const float s = x[r * k_dim + k]; a[r] = a[r] + lo * s; b[r] = b[r] + hi * s; }
    }
    for (int r = 0; r < M; ++r) { Store(y + r * n_dim + p * kWide, a[r]); Store(y + r * n_dim + p * kWide + kLanes, b[r]); }
  }
}

// Row-major w, k-blocks of D rows: per column tile, each x row accumulates D rows in registers
// (w tile reloaded from L1 per row).
template <int M, int D>
void Deep(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
          int64_t k_dim, int64_t n_dim) {
  for (int64_t r = 0; r < M; ++r) std::fill(y + r * n_dim, y + r * n_dim + n_dim, 0.0f);
  for (int64_t k0 = 0; k0 + D <= k_dim; k0 += D) {
    for (int64_t c = 0; c < n_dim; c += kWide) {
      for (int r = 0; r < M; ++r) {
        const float* xr = x + r * k_dim + k0;
        float* yr = y + r * n_dim + c;
        v8 a = Load(yr), b = Load(yr + kLanes);
        for (int d = 0; d < D; ++d) {
          const float s = xr[d];
          a = a + Load(w + (k0 + d) * n_dim + c) * s;
          b = b + Load(w + (k0 + d) * n_dim + c + kLanes) * s;
        }
        Store(yr, a); Store(yr + kLanes, b);
      }
    }
  }
}
// P panels at once (P streams), rows in groups of G (a panel re-read from L2 per group).
template <int M, int P, int G>
void PackedP(const float* __restrict__ x, const float* __restrict__ wp, float* __restrict__ y,
             int64_t k_dim, int64_t n_dim) {
  const int64_t panels = n_dim / kWide;
  for (int64_t p0 = 0; p0 < panels; p0 += P) {
    for (int r0 = 0; r0 < M; r0 += G) {
      constexpr int R = G;
      v8 a[P][R], b[P][R];
      for (int q = 0; q < P; ++q) for (int r = 0; r < R; ++r) { a[q][r] = v8{}; b[q][r] = v8{}; }
      const float* w[P];
      for (int q = 0; q < P; ++q) w[q] = wp + (p0 + q) * k_dim * kWide;
      for (int64_t k = 0; k < k_dim; ++k) {
        for (int q = 0; q < P; ++q) {
          const v8 lo = Load(w[q] + k * kWide), hi = Load(w[q] + k * kWide + kLanes);
          for (int r = 0; r < R; ++r) { if (r0 + r < M) { const float s = x[(r0 + r) * k_dim + k]; a[q][r] = a[q][r] + lo * s; b[q][r] = b[q][r] + hi * s; } }
        }
      }
      for (int q = 0; q < P; ++q) for (int r = 0; r < R; ++r) if (r0 + r < M) {
        Store(y + (r0 + r) * n_dim + (p0 + q) * kWide, a[q][r]); Store(y + (r0 + r) * n_dim + (p0 + q) * kWide + kLanes, b[q][r]); }
    }
  }
}
// Packed, 32-column panels (4 vectors) for M<=3.
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int main() {
  // a chain of products: 30 x [576,1536] + head [576, 49152] ~ 219 MB
  const int64_t K = 576; std::vector<int64_t> Ns; for (int i = 0; i < 30; ++i) Ns.push_back(1536); Ns.push_back(49152);
  std::vector<std::vector<float>> W, WP;
  for (auto n : Ns) {
    std::vector<float> w(K * n); for (auto& v : w) v = (rand() % 1000) / 1000.f - 0.5f;
    std::vector<float> wp(K * n);
    for (int64_t p = 0; p < n / 16; ++p) for (int64_t k = 0; k < K; ++k) for (int j = 0; j < 16; ++j) wp[(p * K + k) * 16 + j] = w[k * n + p * 16 + j];
    W.push_back(std::move(w)); WP.push_back(std::move(wp));
  }
  std::vector<float> x(8 * K), y(8 * 49152), y2(8 * 49152);
  for (auto& v : x) v = (rand() % 1000) / 1000.f;
  auto run = [&](auto f, int reps) {
    double best = 1e9;
    for (int r = 0; r < reps; ++r) { double t = now(); for (size_t i = 0; i < Ns.size(); ++i) f(i); best = std::min(best, now() - t); }
    return best * 1e3;
  };
#define BOTH(MM) { \
    double c = run([&](size_t i){ Cur<MM>(x.data(), W[i].data(), y.data(), K, Ns[i]); }, 7); \
    double p = run([&](size_t i){ Packed<MM>(x.data(), WP[i].data(), y2.data(), K, Ns[i]); }, 7); \
    Cur<MM>(x.data(), W[30].data(), y.data(), K, Ns[30]); Packed<MM>(x.data(), WP[30].data(), y2.data(), K, Ns[30]); \
    bool same = memcmp(y.data(), y2.data(), 4 * MM * Ns[30]) == 0; \
    printf("M=%d cur %.1f ms packed %.1f ms  (%.1f / %.1f GB/s) bitwise %d\n", MM, c, p, 219.0/c, 219.0/p, same); }
#define VAR(MM, P, G) { double p = run([&](size_t i){ PackedP<MM, P, G>(x.data(), WP[i].data(), y2.data(), K, Ns[i]); }, 7); \
    Cur<MM>(x.data(), W[30].data(), y.data(), K, Ns[30]); PackedP<MM, P, G>(x.data(), WP[30].data(), y2.data(), K, Ns[30]); \
    printf("  M=%d P=%d G=%d %.1f ms (%.1f GB/s) bitwise %d\n", MM, P, G, p, 219.0/p, memcmp(y.data(), y2.data(), 4 * MM * Ns[30]) == 0); }
#define DEEP(MM, D) { double p = run([&](size_t i){ Deep<MM, D>(x.data(), W[i].data(), y2.data(), K, Ns[i]); }, 7); \
    printf("  M=%d deep D=%d %.1f ms (%.1f GB/s)\n", MM, D, p, 219.0/p); }
  BOTH(1) VAR(1,2,1) VAR(1,4,1) DEEP(1, 8)
  BOTH(2) VAR(2,3,2) DEEP(2, 8)
  BOTH(3) VAR(3,2,3) DEEP(3, 8)
  BOTH(4) VAR(4,2,3) DEEP(4, 8)
  BOTH(5) VAR(5,2,3) VAR(5,1,5) DEEP(5, 8)
  BOTH(8) VAR(8,2,3) VAR(8,1,6) DEEP(8, 8)
}
