// W8A8 matrix products for the embedded engine's decode step, as XLA FFI custom calls on CPU.
//
// y[b, n] = xs[b] * ws[n] * sum_k xq[b, k] * w[n, k], where w is the engine's int8 weight
// [N, K] with one float32 scale per row (ws), and xq/xs the activation x [B, K] rounded to
// int8 per row here (the same rounding engine/model.py's `linear` does in XLA). The "fine"
// variant also rounds the rounding's remainder (x 254) and adds its product, one more int8
// pass over the activation but not over the weight.
//
// Why by hand: XLA:CPU's int8 dot carries ~40 us of fixed cost per call (73 calls a step),
// reads each weight row once per call but not at the memory's speed for a few rows, and its
// int32 -> float scaling is a second pass over the output. Here the weight is streamed once,
// the integer sums are scaled as they are stored, and the rows are split over XLA's own
// intra-op threads.
//
// Two instruction sets, picked at run time (built with explicit flags, never -march=native):
// AVX-512 VNNI (vpdpbusd: u8 x s8 -> s32, the activation offset by 128 to make it unsigned
// and the offset taken back with each weight row's sum) and AVX2 (abs/sign, vpmaddubsw,
// vpmaddwd). TOLLGATE_KERNEL_ISA=avx2 forces the second (tests run both).

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float kRestSteps = 254.0f;  // a rounding's remainder (|r| <= 0.5) as int8 steps

// The activation rows rounded to int8: their values (offset by 128 for VNNI) and scales.
struct QuantizedRows {
  int64_t rows = 0;     // B, or 2B with the remainders
  int64_t stride = 0;   // K rounded up to the ISA's chunk (zero padded)
  std::vector<int8_t> values;
  std::vector<float> scales;  // per row: what one int8 step of that row is worth
};

bool UseVnni() {
  static const bool vnni = [] {
    const char* forced = std::getenv("TOLLGATE_KERNEL_ISA");
    if (forced != nullptr && std::strcmp(forced, "avx2") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }();
  return vnni;
}

// ---- rounding the activation --------------------------------------------------------

#define TOLLGATE_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define TOLLGATE_AVX2 __attribute__((target("avx2,fma")))
// One row: q = round-half-even(x / scale), r = round((x / scale - q) * 254) where wanted, each
// + 128 (as a wrapped int8) for VNNI's unsigned operand. Division, not a reciprocal: the
// roundings must land where XLA's do.
TOLLGATE_VNNI void QuantizeRowVnni(const float* row, int64_t k, float scale, int8_t* q,
                                   int8_t* r) {
  const __m512 divisor = _mm512_set1_ps(scale);
  const __m512 steps = _mm512_set1_ps(kRestSteps);
  const __m128i shift = _mm_set1_epi8(-128);
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - i)) - 1);
    const __m512 scaled = _mm512_div_ps(_mm512_maskz_loadu_ps(mask, row + i), divisor);
    const __m512 rounded = _mm512_roundscale_ps(scaled, kNearest);
    const __m128i values = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(rounded));
    _mm_mask_storeu_epi8(q + i, mask, _mm_xor_si128(values, shift));
    if (r != nullptr) {
      const __m512 rest =
          _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(scaled, rounded), steps), kNearest);
      const __m128i rests = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(rest));
      _mm_mask_storeu_epi8(r + i, mask, _mm_xor_si128(rests, shift));
    }
  }
}

TOLLGATE_VNNI float AbsMaxVnni(const float* row, int64_t k) {
  __m512 amax = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - i)) - 1);
    amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, row + i)));
  }
  return _mm512_reduce_max_ps(amax);
}

TOLLGATE_AVX2 void QuantizeRowAvx2(const float* row, int64_t k, float scale, int8_t* q,
                                   int8_t* r) {
  for (int64_t i = 0; i < k; ++i) {
    const float scaled = row[i] / scale;
    const float rounded = std::nearbyint(scaled);
    q[i] = int8_t(rounded);
    if (r != nullptr) r[i] = int8_t(std::nearbyint((scaled - rounded) * kRestSteps));
  }
}

TOLLGATE_AVX2 float AbsMaxAvx2(const float* row, int64_t k) {
  float amax = 0.0f;
  for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
  return amax;
}

// Rounds each row of x [B, K] to int8 like model.linear: scale = max|x| / 127 (1 for a zero
// row); with `fine`, rows B..2B-1 hold the remainders, worth scale / 254 a step. Rows are
// zero padded to whole 64-byte chunks (128, VNNI's zero, where offset).
void Quantize(const float* x, int64_t batch, int64_t k, bool fine, bool vnni,
              QuantizedRows& out) {
  out.rows = fine ? 2 * batch : batch;
  out.stride = (k + 63) / 64 * 64;
  out.values.assign(out.rows * out.stride, vnni ? int8_t(-128) : int8_t(0));
  out.scales.resize(out.rows);
  for (int64_t b = 0; b < batch; ++b) {
    const float* row = x + b * k;
    float scale = (vnni ? AbsMaxVnni(row, k) : AbsMaxAvx2(row, k)) / 127.0f;
    if (scale == 0.0f) scale = 1.0f;
    out.scales[b] = scale;
    int8_t* q = out.values.data() + b * out.stride;
    int8_t* r = fine ? out.values.data() + (batch + b) * out.stride : nullptr;
    if (vnni) {
      QuantizeRowVnni(row, k, scale, q, r);
    } else {
      QuantizeRowAvx2(row, k, scale, q, r);
    }
    if (fine) out.scales[batch + b] = scale / kRestSteps;
  }
}

// Each weight row is streamed once, front to back, against up to kMaxTile activation rows:
// reading four rows side by side halved the bandwidth one core got from memory here (the
// prefetcher follows one stream per thread, not four interleaved ones).
constexpr int kMaxTile = 8;
constexpr int64_t kMaxRows = 256;  // activation rows a call takes (with the remainders)

// ---- AVX-512 VNNI --------------------------------------------------------------------

// acc += u8 x s8, in place. GCC 12 compiles _mm512_dpbusd_epi32 on a loop-carried
// accumulator as a copy, the product and a copy back, and then spills the copies: a 4 x 4
// tile ran 3x slower for it.
TOLLGATE_VNNI inline void Dot(__m512i& acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %[s8], %[u8], %[acc]" : [acc] "+v"(acc) : [u8] "v"(u8), [s8] "v"(s8));
}

// The lane sums of four vectors, as one vector [sum a, sum b, sum c, sum d].
TOLLGATE_VNNI inline __m128i Sum4(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
  const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
  const __m512i abcd =
      _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
  const __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(abcd),
                                        _mm512_extracti64x4_epi64(abcd, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
}

// acc[b] += x[b] . w and sums += 1 . w for one 64-byte chunk of the row.
template <int BT>
TOLLGATE_VNNI inline void ChunkVnni(__m512i w, const int8_t* x, int64_t stride, __m512i* acc,
                                    __m512i& sums) {
  Dot(sums, _mm512_set1_epi8(1), w);
#pragma GCC unroll 8
  for (int b = 0; b < BT; ++b) Dot(acc[b], _mm512_loadu_si512(x + b * stride), w);
}

// dots[b] = sum_k x[b0 + b, k] * row[k] for BT activation rows.
template <int BT>
TOLLGATE_VNNI void RowVnni(const int8_t* row, int64_t k, const QuantizedRows& xq, int64_t b0,
                           int32_t* dots) {
  __m512i acc[BT];
#pragma GCC unroll 8
  for (int b = 0; b < BT; ++b) acc[b] = _mm512_setzero_si512();
  __m512i sums = _mm512_setzero_si512();
  const int8_t* x = xq.values.data() + b0 * xq.stride;
  int64_t i = 0;
  for (; i + 64 <= k; i += 64)
    ChunkVnni<BT>(_mm512_loadu_si512(row + i), x + i, xq.stride, acc, sums);
  if (i < k) {  // the last, partial chunk: the weight's bytes past K read as zeros
    const __m512i w = _mm512_maskz_loadu_epi8((__mmask64(1) << (k - i)) - 1, row + i);
    ChunkVnni<BT>(w, x + i, xq.stride, acc, sums);
  }
  // Each activation byte was its value + 128: take back 128 x the row's sum.
  const __m512i offset = _mm512_slli_epi32(sums, 7);
#pragma GCC unroll 8
  for (int b = 0; b < BT; ++b) acc[b] = _mm512_sub_epi32(acc[b], offset);
  if constexpr (BT % 4 == 0) {
    for (int b = 0; b < BT; b += 4)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dots + b),
                       Sum4(acc[b], acc[b + 1], acc[b + 2], acc[b + 3]));
  } else {
    for (int b = 0; b < BT; ++b) dots[b] = _mm512_reduce_add_epi32(acc[b]);
  }
}

// ---- AVX2 ----------------------------------------------------------------------------

TOLLGATE_AVX2 inline int32_t Sum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

TOLLGATE_AVX2 inline __m128i Sum4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

template <int BT>
TOLLGATE_AVX2 void RowAvx2(const int8_t* row, int64_t k, const QuantizedRows& xq, int64_t b0,
                           int32_t* dots) {
  __m256i acc[BT];
  for (int b = 0; b < BT; ++b) acc[b] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* x = xq.values.data() + b0 * xq.stride;
  alignas(32) int8_t tail[32];
  for (int64_t i = 0; i < k; i += 32) {
    const int8_t* src = row + i;
    if (k - i < 32) {  // the zero-padded last chunk of a row whose K is not a multiple
      std::memset(tail, 0, sizeof(tail));
      std::memcpy(tail, src, size_t(k - i));
      src = tail;
    }
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i magnitude = _mm256_sign_epi8(w, w);
    for (int b = 0; b < BT; ++b) {
      const __m256i xb =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + b * xq.stride + i));
      const __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xb, w));
      acc[b] = _mm256_add_epi32(acc[b], _mm256_madd_epi16(pairs, ones));
    }
  }
  if constexpr (BT % 4 == 0) {
    for (int b = 0; b < BT; b += 4)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dots + b),
                       Sum4(acc[b], acc[b + 1], acc[b + 2], acc[b + 3]));
  } else {
    for (int b = 0; b < BT; ++b) dots[b] = Sum(acc[b]);
  }
}

// ---- driver --------------------------------------------------------------------------

using RowFn = void (*)(const int8_t*, int64_t, const QuantizedRows&, int64_t, int32_t*);

RowFn PickRow(bool vnni, int64_t bt) {
  switch (bt) {
    case 8: return vnni ? &RowVnni<8> : &RowAvx2<8>;
    case 4: return vnni ? &RowVnni<4> : &RowAvx2<4>;
    case 2: return vnni ? &RowVnni<2> : &RowAvx2<2>;
    default: return vnni ? &RowVnni<1> : &RowAvx2<1>;
  }
}

// Weight rows [n_begin, n_end) against every activation row, scaled as they are stored.
// (Register tiles of two weight rows, which load each activation chunk once for both, ran
// 7% faster at 16 rows and up to 1.7x slower at 4 to 8: memory, not loads, binds there.)
void Rows(const int8_t* w, int64_t k, const QuantizedRows& xq, const float* ws, float* y,
          int64_t n_total, int64_t n_begin, int64_t n_end, bool vnni) {
  // The activation rows in tiles of 8, 4, 2, 1: the weight row stays in L1 between tiles.
  int64_t first[kMaxRows / kMaxTile + 3];
  int64_t size[kMaxRows / kMaxTile + 3];
  RowFn tile[kMaxRows / kMaxTile + 3];
  int tiles = 0;
  for (int64_t b = 0; b < xq.rows; b += size[tiles++]) {
    const int64_t left = xq.rows - b;
    first[tiles] = b;
    size[tiles] = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    tile[tiles] = PickRow(vnni, size[tiles]);
  }
  int32_t dots[kMaxTile];
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int8_t* row = w + n * k;
    const float scale = ws[n];
    for (int t = 0; t < tiles; ++t) {
      tile[t](row, k, xq, first[t], dots);
      for (int64_t b = 0; b < size[t]; ++b)
        y[(first[t] + b) * n_total + n] = float(dots[b]) * xq.scales[first[t] + b] * scale;
    }
  }
}

// The weight rows in chunks claimed from a counter by the calling thread and by helpers on
// XLA's intra-op pool. The caller claims whatever no helper has started, so it never waits
// on a task that has not begun (helpers that start late find nothing left and return).
struct Split {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t chunks = 0;
};

template <typename Work>
void RunSplit(ffi::ThreadPool& pool, int64_t chunks, int64_t helpers, Work work) {
  auto split = std::make_shared<Split>();
  split->chunks = chunks;
  auto drain = [split, work]() {
    int64_t i;
    while ((i = split->next.fetch_add(1)) < split->chunks) {
      work(i);
      split->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t h = 0; h < helpers; ++h) {
    auto task = drain;  // each task owns its copy (it may outlive this call)
    pool.Schedule(std::move(task));
  }
  drain();
  while (split->done.load(std::memory_order_acquire) < chunks) _mm_pause();
}

thread_local QuantizedRows tls_rows;
thread_local std::vector<float> tls_scratch;  // the remainders' products, summed in after

// Threads to split over: XLA's pool, within the cores (read once: glibc reads sysfs for it).
int64_t Threads(ffi::ThreadPool& pool) {
  static const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  return std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), cores));
}

ffi::Error Int8MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::S8> w, ffi::Buffer<ffi::F32> ws,
                          ffi::ResultBuffer<ffi::F32> y, bool fine) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[1] || ws.element_count() != wd[0])
    return ffi::Error::InvalidArgument("int8_matmul: x [B, K], w [N, K], ws [N] expected");
  const int64_t batch = xd[0], k = xd[1], n = wd[0];
  if ((fine ? 2 * batch : batch) > kMaxRows)
    return ffi::Error::InvalidArgument("int8_matmul: too many activation rows for one call");
  const bool vnni = UseVnni();
  QuantizedRows& xq = tls_rows;
  Quantize(x.typed_data(), batch, k, fine, vnni, xq);
  // With the remainders, the kernel writes 2B rows to a scratch and they are summed below.
  std::vector<float>& scratch = tls_scratch;
  float* out = y->typed_data();
  if (fine) {
    scratch.resize(xq.rows * n);
    out = scratch.data();
  }
  const int64_t threads = Threads(pool);
  // A few chunks per thread, so an uneven start evens out; none under 16 weight rows.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(n / 16, threads * 4));
  const int64_t per_chunk = (n + chunks - 1) / chunks;
  const int8_t* wp = w.typed_data();
  const float* wsp = ws.typed_data();
  const int64_t used = (n + per_chunk - 1) / per_chunk;
  RunSplit(pool, used, std::min(threads, used) - 1, [&, out](int64_t c) {
    Rows(wp, k, xq, wsp, out, n, c * per_chunk, std::min(n, (c + 1) * per_chunk), vnni);
  });
  if (fine) {
    float* dst = y->typed_data();
    const float* rest = scratch.data() + batch * n;
    for (int64_t i = 0; i < batch * n; ++i) dst[i] = scratch[i] + rest[i];
  }
  return ffi::Error::Success();
}

template <bool kFine>
ffi::Error Int8Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                      ffi::Buffer<ffi::F32> ws, ffi::ResultBuffer<ffi::F32> y) {
  return Int8MatmulImpl(pool, x, w, ws, y, kFine);
}

// Both handlers take (x f32 [B, K], w s8 [N, K], ws f32 [N]) -> f32 [B, N] on XLA's pool.
auto Binding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::S8>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>();
}

}  // namespace

// What the products run on here: "avx512vnni", "avx2", or "" where neither runs (the engine
// then keeps XLA's dot).
extern "C" const char* tollgate_kernel_isa() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return "";
  return UseVnni() ? "avx512vnni" : "avx2";
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(tollgate_int8_matmul, Int8Matmul<false>, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(tollgate_int8_matmul_fine, Int8Matmul<true>, Binding());
