#include "model/invariant_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "model/invariant_products.h"
#include "model/invariant_vector.h"
#include "util/error.h"
#ifdef GRPO_INVARIANT_CUDA
#include "model/invariant_kernels_cuda.h"
#endif

namespace grpo::model::invariant {

using cpu::dot;
using cpu::dot_tile;

namespace {

// On CUDA the kernels of invariant_kernels_cuda.cu serve; this says whether to hand over.
bool on_cuda(const Tensor& t) {
  if (!t.is_cuda()) return false;
#ifdef GRPO_INVARIANT_CUDA
  return true;
#else
  throw Error("batch-invariant kernels: this build has no CUDA kernels (no CUDA compiler was found at configure time)");
#endif
}

#ifdef GRPO_INVARIANT_CUDA
#define GRPO_ON_CUDA(t, call) \
  if (on_cuda(t)) return cuda::call
#else
#define GRPO_ON_CUDA(t, call) \
  if (on_cuda(t)) throw Error("unreachable")
#endif

// Each kernel is named in the profiler's records (profile/profiler.h), as ATen's operators are.
#define GRPO_RECORD(name) RECORD_FUNCTION("grpo::invariant::" name, c10::ArrayRef<const c10::IValue>{})

Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

// The least rows of width D worth a thread of the row-wise loops: about 16K values, so that a
// decode step's small tensors are not shared out (waking a thread costs more than they do).
int64_t rows_per_thread(int64_t D) { return std::max<int64_t>(1, (16 << 10) / std::max<int64_t>(D, 1)); }

}  // namespace

Tensor matmul_nt(const Tensor& x, const Tensor& w, std::optional<at::ScalarType> round_to) {
  GRPO_RECORD("matmul_nt");
  if (x.dim() != 2 || w.dim() != 2 || x.size(1) != w.size(1))
    throw Error("invariant matmul_nt: expected x (M, K) and w (N, K), got " + std::to_string(x.dim()) + "-d and " +
                std::to_string(w.dim()) + "-d of mismatched K");
  GRPO_ON_CUDA(x, matmul_nt(x, w, round_to));
  const int64_t M = x.size(0), N = w.size(0);
  Tensor xf = f32(x), wc = w.contiguous();
  Tensor out = at::empty({M, N}, at::TensorOptions().dtype(at::kFloat));
  cpu::products(xf.data_ptr<float>(), wc, nullptr, out.data_ptr<float>(), M);
  return round_to ? out.to(*round_to) : out;
}

RowGroups group_rows(const Tensor& group_of_row, int64_t groups) {
  Tensor g = group_of_row.to(at::kLong).reshape({-1});
  RowGroups out;
#ifdef GRPO_INVARIANT_CUDA
  if (g.is_cuda()) {  // no host synchronisation: CUDA graphs can hold it
    cuda::GroupedRows d = cuda::group_rows(g, groups);
    return {d.order, d.group, d.tiles, d.num_tiles, d.tile_rows, d.wide_tiles, d.num_wide_tiles};
  }
#endif
  out.order = std::get<1>(g.sort(/*stable=*/true, 0, false));
  out.group = g.index_select(0, out.order);
  Tensor counts = at::zeros({groups}, g.options()).index_add_(0, g, at::ones_like(g)).to(at::kCPU);
  const int64_t* c = counts.data_ptr<int64_t>();
  if (std::accumulate(c, c + groups, int64_t(0)) != g.numel())
    throw Error("invariant group_rows: a row names a group outside [0, " + std::to_string(groups) + ")");
  return out;
}

RowGroups contiguous_groups(int64_t groups, int64_t rows_per_group, at::Device device) {
  RowGroups out;
  out.group = at::arange(groups, at::TensorOptions().dtype(at::kLong).device(device))
                  .unsqueeze(1)
                  .expand({groups, rows_per_group})
                  .reshape({-1});
#ifdef GRPO_INVARIANT_CUDA
  if (device.is_cuda()) {
    out.tile_rows = cuda::grouped_tile_rows(groups * rows_per_group, groups);
    out.tiles = cuda::contiguous_tiles(groups, rows_per_group, device, out.tile_rows);
    out.num_tiles = out.tiles.size(0);
    if (cuda::use_wide_products(groups * rows_per_group, groups)) {
      out.wide_tiles = cuda::contiguous_tiles(groups, rows_per_group, device, cuda::kWideRows);
      out.num_wide_tiles = out.wide_tiles.size(0);
    }
  }
#endif
  return out;
}

Tensor grouped_matmul_nt(const Tensor& x, const Tensor& w, const RowGroups& groups, std::optional<at::ScalarType> round_to) {
  GRPO_RECORD("grouped_matmul_nt");
  if (x.dim() != 2 || w.dim() != 3 || x.size(1) != w.size(2) || groups.group.numel() != x.size(0))
    throw Error("invariant grouped_matmul_nt: expected x (M, K), w (G, N, K), a group for each of the M rows");
  GRPO_ON_CUDA(x, grouped_matmul_nt(x, w, groups.tiles, groups.num_tiles, groups.tile_rows, groups.wide_tiles,
                                     groups.num_wide_tiles, round_to));
  const int64_t M = x.size(0), G = w.size(0), N = w.size(1);
  Tensor xf = f32(x), wc = w.contiguous(), ex = groups.group.to(at::kCPU, at::kLong).contiguous();
  const int64_t* e = ex.data_ptr<int64_t>();
  for (int64_t m = 0; m < M; ++m)
    if (e[m] < 0 || e[m] >= G) throw Error("invariant grouped_matmul_nt: row " + std::to_string(m) + " names group " +
                                           std::to_string(e[m]) + " of " + std::to_string(G));
  Tensor out = at::empty({M, N}, at::TensorOptions().dtype(at::kFloat));
  cpu::products(xf.data_ptr<float>(), wc, e, out.data_ptr<float>(), M);
  return round_to ? out.to(*round_to) : out;
}

Tensor rms_normalize(const Tensor& x, double eps) {
  GRPO_RECORD("rms_normalize");
  GRPO_ON_CUDA(x, rms_normalize(x, eps));
  Tensor xf = f32(x).view({-1, x.size(-1)});
  const int64_t M = xf.size(0), D = xf.size(1);
  Tensor out = at::empty_like(xf);
  const float* in = xf.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, M, rows_per_thread(D), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const float* r = in + m * D;
      const float mean = dot(r, r, D) / static_cast<float>(D);
      const float scale = 1.0f / std::sqrt(mean + static_cast<float>(eps));
      for (int64_t d = 0; d < D; ++d) o[m * D + d] = r[d] * scale;
    }
  });
  return out.view(x.sizes());
}

namespace {

// Applies f(row in, row out, D) to every row of fp32 (M, D).
template <typename F>
Tensor per_row(const Tensor& x, int64_t out_width, F f) {
  Tensor xf = f32(x).view({-1, x.size(-1)});
  const int64_t M = xf.size(0), D = xf.size(1);
  Tensor out = at::empty({M, out_width < 0 ? D : out_width}, at::TensorOptions().dtype(at::kFloat));
  const float* in = xf.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t W = out.size(1);
  at::parallel_for(0, M, rows_per_thread(D), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) f(in + m * D, o + m * W, D);
  });
  return out;
}

float row_max(const float* r, int64_t D) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t d = 0; d < D; ++d) m = r[d] > m ? r[d] : m;
  return m;
}

}  // namespace

Tensor softmax(const Tensor& x) {
  GRPO_RECORD("softmax");
  GRPO_ON_CUDA(x, softmax(x));
  return per_row(x, -1, [](const float* r, float* o, int64_t D) {
    const float m = row_max(r, D);
    float s = 0;
    for (int64_t d = 0; d < D; ++d) s += (o[d] = std::exp(r[d] - m));
    for (int64_t d = 0; d < D; ++d) o[d] = o[d] / s;
  }).view(x.sizes());
}

Tensor log_softmax(const Tensor& x) {
  GRPO_RECORD("log_softmax");
  GRPO_ON_CUDA(x, log_softmax(x));
  return per_row(x, -1, [](const float* r, float* o, int64_t D) {
    const float m = row_max(r, D);
    float s = 0;
    for (int64_t d = 0; d < D; ++d) s += std::exp(r[d] - m);
    const float lse = m + std::log(s);
    for (int64_t d = 0; d < D; ++d) o[d] = r[d] - lse;
  }).view(x.sizes());
}

Tensor row_sum(const Tensor& x) {
  GRPO_RECORD("row_sum");
  GRPO_ON_CUDA(x, row_sum(x));
  return per_row(x, 1, [](const float* r, float* o, int64_t D) {
    float s = 0;
    for (int64_t d = 0; d < D; ++d) s += r[d];
    o[0] = s;
  }).view({-1});
}

Tensor silu(const Tensor& x) {
  GRPO_RECORD("silu");
  GRPO_ON_CUDA(x, silu(x));
  return per_row(x.reshape({-1, 1}), -1, [](const float* r, float* o, int64_t) {
    o[0] = r[0] / (1.0f + std::exp(-r[0]));
  }).view(x.sizes());
}

Tensor sigmoid(const Tensor& x) {
  GRPO_RECORD("sigmoid");
  GRPO_ON_CUDA(x, sigmoid(x));
  return per_row(x.reshape({-1, 1}), -1, [](const float* r, float* o, int64_t) {
    o[0] = 1.0f / (1.0f + std::exp(-r[0]));
  }).view(x.sizes());
}

std::pair<Tensor, Tensor> rope_cos_sin(const Tensor& positions, const Tensor& inv_freq) {
  GRPO_ON_CUDA(positions, rope_cos_sin(positions, inv_freq));
  Tensor pos = positions.to(at::kLong).contiguous().view({-1}), inv = f32(inv_freq.to(at::kCPU));
  const int64_t N = pos.size(0), H = inv.size(0);
  auto opts = at::TensorOptions().dtype(at::kFloat);
  Tensor c = at::empty({N, H}, opts), s = at::empty({N, H}, opts);
  const int64_t* p = pos.data_ptr<int64_t>();
  const float* f = inv.data_ptr<float>();
  float *cp = c.data_ptr<float>(), *sp = s.data_ptr<float>();
  at::parallel_for(0, N, rows_per_thread(H), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t i = 0; i < H; ++i) {
        const float angle = static_cast<float>(p[n]) * f[i];
        cp[n * H + i] = std::cos(angle);
        sp[n * H + i] = std::sin(angle);
      }
  });
  return {c, s};
}

namespace {

// What attention's (query, head) rows need: queries, output, the key layout and the head layout.
struct Attend {
  const float* q;
  float* out;
  const int64_t *table, *start, *count;
  int64_t heads, group, dk, dv, block_size, width, key_base, key_stride, value_base, value_stride;
  float scale;
};

// Query n's heads h0 .. h0 + R - 1, which read the same keys (one kv head): scores in key order,
// softmax, the weighted sum of values in key order; each head's arithmetic as if it were alone,
// four keys' scores at a time (R x 4 sums in flight) and each value row read once for the R heads.
template <int R, typename T>
GRPO_INLINE void attend_heads(const Attend& a, const T* cache, int64_t n, int64_t h0, std::vector<float>& p,
                              std::vector<float>& acc) {
  const int64_t g = h0 / a.group, L = a.count[n], bs = a.block_size;
  auto row = [&](int64_t j) { return cache + (a.table[a.start[n] + j / bs] * bs + j % bs) * a.width; };
  const float* q[R];
  for (int r = 0; r < R; ++r) q[r] = a.q + (n * a.heads + h0 + r) * a.dk;
  p.resize(R * L);
  float s[R * 4];
  int64_t j = 0;
  for (; j + 4 <= L; j += 4) {
    const T* k[4];
    for (int c = 0; c < 4; ++c) k[c] = row(j + c) + a.key_base + g * a.key_stride;
    dot_tile<R, 4>(q, k, a.dk, s, 4);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) p[r * L + j + c] = s[r * 4 + c] * a.scale;
  }
  for (; j < L; ++j) {
    const T* k = row(j) + a.key_base + g * a.key_stride;
    dot_tile<R, 1>(q, &k, a.dk, s, 1);
    for (int r = 0; r < R; ++r) p[r * L + j] = s[r] * a.scale;
  }
  float l[R];
  for (int r = 0; r < R; ++r) {
    float* pr = p.data() + r * L;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < L; ++i) m = pr[i] > m ? pr[i] : m;
    l[r] = 0;
    for (int64_t i = 0; i < L; ++i) l[r] += (pr[i] = std::exp(pr[i] - m));
  }
  acc.assign(R * a.dv, 0.0f);
  for (int64_t i = 0; i < L; ++i) {
    const T* v = row(i) + a.value_base + g * a.value_stride;
    for (int r = 0; r < R; ++r) {
      float* ac = acc.data() + r * a.dv;
      const float pi = p[r * L + i];
      for (int64_t d = 0; d < a.dv; ++d) ac[d] += pi * static_cast<float>(v[d]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t d = 0; d < a.dv; ++d) a.out[(n * a.heads + h0 + r) * a.dv + d] = acc[r * a.dv + d] / l[r];
}

// Units [begin, end) of R heads of one query (query unit / (heads / R), heads from unit % (heads / R) * R).
template <typename T>
GRPO_INLINE void attend_units(const Attend& a, const T* cache, int R, int64_t begin, int64_t end) {
  std::vector<float> p, acc;
  const int64_t per_query = a.heads / R;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t n = u / per_query, h0 = u % per_query * R;
    if (R == 4)
      attend_heads<4>(a, cache, n, h0, p, acc);
    else if (R == 2)
      attend_heads<2>(a, cache, n, h0, p, acc);
    else
      attend_heads<1>(a, cache, n, h0, p, acc);
  }
}
GRPO_VECTOR_CLONES void attend(const Attend& a, const c10::BFloat16* cache, int R, int64_t begin, int64_t end) {
  attend_units(a, cache, R, begin, end);
}
GRPO_VECTOR_CLONES void attend(const Attend& a, const float* cache, int R, int64_t begin, int64_t end) {
  attend_units(a, cache, R, begin, end);
}
template <typename T>
void attend(const Attend& a, const T* cache, int R, int64_t begin, int64_t end) {
  attend_units(a, cache, R, begin, end);
}

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  GRPO_RECORD("rms_norm");
#ifdef GRPO_INVARIANT_CUDA
  if (on_cuda(x) && weight.scalar_type() == x.scalar_type()) return cuda::rms_norm(x, weight, eps);
#endif
  return weight * rms_normalize(x, eps).to(x.scalar_type());
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  GRPO_RECORD("swiglu");
#ifdef GRPO_INVARIANT_CUDA
  if (on_cuda(gate) && gate.scalar_type() == up.scalar_type()) return cuda::swiglu(gate, up);
#endif
  return invariant::silu(gate).to(up.scalar_type()) * up;
}

Tensor combine_experts(const Tensor& y, const Tensor& order, const Tensor& weights, int64_t k) {
  GRPO_RECORD("combine_experts");
  if (y.dim() != 2 || order.numel() != y.size(0) || weights.numel() != y.size(0) || k < 1 || y.size(0) % k != 0)
    throw Error("invariant combine_experts: expected y (N * k, H) with an order and a weight per row");
  GRPO_ON_CUDA(y, combine_experts(y, order, weights, k));
  const auto dtype = y.scalar_type();
  Tensor grouped = (y * weights.reshape({-1}).index_select(0, order).unsqueeze(1)).to(dtype);
  Tensor parts = at::empty_like(grouped).index_copy_(0, order, grouped).view({-1, k, y.size(1)});
  Tensor out = parts.select(1, 0);
  for (int64_t j = 1; j < k; ++j) out = out + parts.select(1, j);
  return out;
}

KeyLayout checked_keys(const KeyLayout& keys, int64_t S, at::Device device) {
  Tensor table = keys.table.to(at::kCPU, at::kLong).contiguous(), start = keys.table_start.to(at::kCPU, at::kLong).contiguous(),
         count = keys.num_keys.to(at::kCPU, at::kLong).contiguous();
  const int64_t N = start.numel(), bs = keys.block_size;
  if (count.numel() != N) throw Error("invariant attention: key layout is not one entry per query");
  const int64_t *tb = table.data_ptr<int64_t>(), *st = start.data_ptr<int64_t>(), *cn = count.data_ptr<int64_t>();
  const int64_t table_len = table.numel();
  int64_t max_keys = 0, runs = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (n == 0 || st[n] != st[n - 1]) ++runs;
    const int64_t blocks = cn[n] < 1 ? -1 : (cn[n] - 1) / bs + 1;
    if (blocks < 1 || st[n] < 0 || st[n] + blocks > table_len)
      throw Error("invariant attention: query " + std::to_string(n) + " has " + std::to_string(cn[n]) +
                  " keys outside its block table");
    for (int64_t b = 0; b < blocks; ++b)
      if (tb[st[n] + b] < 0 || (tb[st[n] + b] + 1) * bs > S)
        throw Error("invariant attention: query " + std::to_string(n) + " reads block " + std::to_string(tb[st[n] + b]) +
                    " outside the cache of " + std::to_string(S) + " rows");
    max_keys = std::max(max_keys, cn[n]);
  }
  KeyLayout out{table.to(device), start.to(device), count.to(device), bs, max_keys, N >= 2 * runs};
  return out;
}

Tensor attention(const Tensor& q, const Tensor& cache, const KeyLayout& unchecked, const HeadLayout& hl, double scale) {
  GRPO_RECORD("attention");
  if (q.dim() != 3 || q.size(2) != hl.key_width || cache.dim() != 2)
    throw Error("invariant attention: expected queries (N, heads, key_width) and a cache (S, width)");
  const KeyLayout keys = unchecked.max_keys < 0 ? checked_keys(unchecked, cache.size(0), q.device()) : unchecked;
  const int64_t N = q.size(0), heads = q.size(1), width = cache.size(1);
  if (keys.table_start.numel() != N) throw Error("invariant attention: key layout is not one entry per query");
  const int64_t group = heads / hl.kv_heads, dk = hl.key_width, dv = hl.value_width, bs = keys.block_size;
#ifdef GRPO_INVARIANT_CUDA
  if (on_cuda(q))
    return cuda::attention(q, cache, keys.table, keys.table_start, keys.num_keys, keys.max_keys, bs, hl.kv_heads,
                           hl.key_base, hl.key_stride, dk, hl.value_base, hl.value_stride, dv, scale);
#else
  on_cuda(q);
#endif
  Tensor qf = f32(q), cc = cache.contiguous();
  const int64_t *tb = keys.table.data_ptr<int64_t>(), *st = keys.table_start.data_ptr<int64_t>(),
                *cn = keys.num_keys.data_ptr<int64_t>();
  Tensor out = at::empty({N, heads, dv}, at::TensorOptions().dtype(at::kFloat));
  const float* qp = qf.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const Attend args{qp, op, tb, st, cn, heads, group, dk, dv, bs, width, hl.key_base, hl.key_stride, hl.value_base,
                    hl.value_stride, static_cast<float>(scale)};
  // Heads of one kv head in fours (or twos) where that still leaves every thread a unit.
  int R = group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
  while (R > 1 && N * heads / R < at::get_num_threads()) R /= 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cc.scalar_type(), "invariant_attention", [&] {
    const scalar_t* cp = cc.data_ptr<scalar_t>();
    at::parallel_for(0, N * heads / R, 1, [&](int64_t begin, int64_t end) { attend(args, cp, R, begin, end); });
  });
  return out;
}

}  // namespace grpo::model::invariant
