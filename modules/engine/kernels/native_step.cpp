// One decode step through every fused decoder layer, in one call from Python.
//
// A one-token step of a small model on a CPU is mostly dispatch: ~20 tensor operations
// a layer, each a few microseconds of Python and ATen for a few hundred multiply-adds.
// Here a layer is four projections (torch's own weight-only int4 kernel, or this file's
// int8, AMX int4 and int16-rows int4 kernels) and plain loops for everything between them: RMSNorm,
// rotary embedding, writing the KV cache column, attention, SiLU. The loops work in
// float32 and keep the residual stream in float32.
//
// Each row is computed by the same loops over its own cache columns, whatever the
// other rows are, so a row's result does not depend on the batch it runs in (the
// projections' kernels are row-independent, which tests/test_decode_step.py checks).
// A prompt pass (Decoder::prompt) runs the same loops with one sequence's tokens as the
// rows: token i writes cache column i and attends over columns 0..i.
// Built at run time by modules/engine/kernels/native_step.py, for this CPU.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#define PLAYGROUND_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

constexpr int kLanes = 16;  // partial sums per reduction: one AVX-512 vector, two AVX2 ones

float dot(const float* a, const float* b, int64_t n) {
  float partial[kLanes] = {0.f};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) partial[j] += a[i + j] * b[i + j];
  float sum = 0.f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (int j = 0; j < kLanes; ++j) sum += partial[j];
  return sum;
}

// Σ a[i], in the same kLanes partial sums as `dot`.
float dot_ones(const float* a, int64_t n) {
  float partial[kLanes] = {0.f};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) partial[j] += a[i + j];
  float sum = 0.f;
  for (; i < n; ++i) sum += a[i];
  for (int j = 0; j < kLanes; ++j) sum += partial[j];
  return sum;
}

// exp(x), clamped to [-87, 88] (Cephes' polynomial, ~1 ulp): plain arithmetic, so loops vectorize.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

void rms_norm(const float* x, const float* weight, float eps, int64_t n, float* out) {
  const float inverse = 1.0f / std::sqrt(dot(x, x, n) / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inverse * weight[i];
}

std::vector<float> floats(const at::Tensor& t) {
  at::Tensor f = t.to(at::kFloat).contiguous();
  return std::vector<float>(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
}

// rows x n floats into a new tensor of `dtype` (the projection's input).
at::Tensor to_tensor(const float* src, int64_t rows, int64_t n, at::ScalarType dtype) {
  at::Tensor out = at::empty({rows, n}, at::TensorOptions().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "to_tensor", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < rows * n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  });
  return out;
}

// A contiguous [rows, n] tensor's values into `dst` as floats.
void read_floats(const at::Tensor& t, float* dst) {
  const int64_t rows = t.size(0), n = t.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "read_floats", [&] {
    const scalar_t* src = t.data_ptr<scalar_t>();
    for (int64_t i = 0; i < rows * n; ++i) dst[i] = static_cast<float>(src[i]);
  });
}

// ---- int8 weights times float32 rows, each weight read once for all rows ----
//
// torch's `_weight_int8pack_mm` rounds the rows to bf16, returns bf16, and costs 1.7-2x
// for four rows what it costs for one (SmolLM2's LM head: 1.5 ms for one row, 2.5-2.8
// for four). Here a few outputs' weights are converted once and multiplied into up to
// kRowBlock rows, in float32: the head's logits come out float32, as exact as its
// int8 weights allow. Each (output, row) sum has the same order whatever the rows, so
// a row computes alone exactly what it computes in a batch.

constexpr int kRowBlock = 4;  // rows multiplied per block of weights

// block(std::integral_constant<int, R>(), r) for rows r .. r+R-1, R up to kRowBlock (or
// Wide, for as many whole blocks of Wide rows as there are): the kernels' row count is a
// template argument, so their accumulators stay in registers.
template <int Wide = kRowBlock, typename F>
void in_row_blocks(int64_t rows, const F& block) {
  int64_t r = 0;
  if constexpr (Wide > kRowBlock)
    for (; rows - r >= Wide; r += Wide) block(std::integral_constant<int, Wide>(), r);
  for (; r < rows; r += kRowBlock) {
    switch (std::min<int64_t>(kRowBlock, rows - r)) {
      case 1: block(std::integral_constant<int, 1>(), r); break;
      case 2: block(std::integral_constant<int, 2>(), r); break;
      case 3: block(std::integral_constant<int, 3>(), r); break;
      default: block(std::integral_constant<int, kRowBlock>(), r); break;
    }
  }
}

// One register of floats: the vector instructions the int8 kernel uses, for the ISA the
// extension is compiled for (none: the kernel's scalar loop does all the work).
#if defined(__AVX512F__)
#define PLAYGROUND_FLOAT_VECTOR 1
struct FloatVector {
  using Type = __m512;
  static constexpr int kLanes = 16;
  static Type zero() { return _mm512_setzero_ps(); }
  static Type floats(const float* p) { return _mm512_loadu_ps(p); }
  static Type int8s(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static Type fmadd(Type a, Type b, Type c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(Type v) { return _mm512_reduce_add_ps(v); }
  static Type broadcast(float x) { return _mm512_set1_ps(x); }
  static void store(float* p, Type v) { _mm512_storeu_ps(p, v); }
  static Type widen(const float* p) { return floats(p); }
  static Type widen(const at::BFloat16* p) {
    const __m512i halves = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(halves, 16));
  }
};
// The sums of four vectors' lanes, as one vector [Σa, Σb, Σc, Σd]: ~5 instructions a sum
// where _mm512_reduce_add_ps takes ~8.
inline __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const auto halves = [](__m512 v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  };
  const __m256 ab = _mm256_hadd_ps(halves(a), halves(b)), cd = _mm256_hadd_ps(halves(c), halves(d));
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // Σa's halves, Σb's, Σc's, Σd's in each 128-bit lane
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}
#elif defined(__AVX2__) && defined(__FMA__)
#define PLAYGROUND_FLOAT_VECTOR 1
struct FloatVector {
  using Type = __m256;
  static constexpr int kLanes = 8;
  static Type zero() { return _mm256_setzero_ps(); }
  static Type floats(const float* p) { return _mm256_loadu_ps(p); }
  static Type int8s(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static Type fmadd(Type a, Type b, Type c) { return _mm256_fmadd_ps(a, b, c); }
  static Type broadcast(float x) { return _mm256_set1_ps(x); }
  static void store(float* p, Type v) { _mm256_storeu_ps(p, v); }
  static Type widen(const float* p) { return floats(p); }
  static Type widen(const at::BFloat16* p) {
    const __m256i halves = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(halves, 16));
  }
  static float sum(Type v) {
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
  }
};
#endif

// Outputs n0..n0+O-1 of R rows: int8 weights [n][k] row-major, one float scale per output.
template <int O, int R>
void int8_block(const float* x, int64_t k, const int8_t* weights, const float* scale, float* out,
                int64_t ldo) {
  float sums[O][R];
  int64_t i = 0;
#if defined(PLAYGROUND_FLOAT_VECTOR)
  using V = FloatVector;
  V::Type acc[O][R];
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) acc[o][r] = V::zero();
  for (; i + V::kLanes <= k; i += V::kLanes) {
    V::Type w[O];
    for (int o = 0; o < O; ++o) w[o] = V::int8s(weights + o * k + i);
    for (int r = 0; r < R; ++r) {
      const V::Type xr = V::floats(x + r * k + i);
      for (int o = 0; o < O; ++o) acc[o][r] = V::fmadd(w[o], xr, acc[o][r]);
    }
  }
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) sums[o][r] = V::sum(acc[o][r]);
#else
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) sums[o][r] = 0.f;
#endif
  for (; i < k; ++i)
    for (int o = 0; o < O; ++o)
      for (int r = 0; r < R; ++r) sums[o][r] += static_cast<float>(weights[o * k + i]) * x[r * k + i];
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) out[r * ldo + o] = sums[o][r] * scale[o];
}

constexpr int kInt8Outputs = 4;  // outputs per block: four chains of multiply-adds for one row

// R rows of O outputs; with AVX2's 16 registers, three or four rows take two outputs at a
// time (the sums are the same either way).
template <int O, int R>
void int8_outputs(const float* x, int64_t k, const int8_t* w, const float* scale, float* out,
                  int64_t ldo) {
#if !defined(__AVX512F__)
  if constexpr (O == 4 && R > 2) {
    int8_block<2, R>(x, k, w, scale, out, ldo);
    int8_block<2, R>(x, k, w + 2 * k, scale + 2, out + 2, ldo);
    return;
  }
#endif
  int8_block<O, R>(x, k, w, scale, out, ldo);
}

template <int O>
void int8_rows(const float* x, int64_t rows, int64_t k, const int8_t* w, const float* scale,
               float* out, int64_t ldo) {
  in_row_blocks(rows, [&](auto block, int64_t r) {
    int8_outputs<O, decltype(block)::value>(x + r * k, k, w, scale, out + r * ldo, ldo);
  });
}

// out [rows, n] = x [rows, k] · (W · scale)ᵀ for int8 weights [n, k] (torch's layout).
void int8_matmul(const float* x, int64_t rows, const int8_t* weights, const float* scale, int64_t n,
                 int64_t k, float* out) {
  const int64_t blocks = (n + kInt8Outputs - 1) / kInt8Outputs;
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kInt8Outputs;
      if (n0 + kInt8Outputs <= n)
        int8_rows<kInt8Outputs>(x, rows, k, weights + n0 * k, scale + n0, out + n0, n);
      else
        for (int64_t j = n0; j < n; ++j) int8_rows<1>(x, rows, k, weights + j * k, scale + j, out + j, n);
    }
  });
}


// ---- int4 weights times rows on AMX tiles (CPUs with AMX-BF16) ----
//
// torch's int4 kernel costs 1.6-2x for four rows what it costs for one: each row is
// float multiply-adds over the dequantized weights. An AMX tile multiply takes up to 16
// rows in one instruction, so here the cost is unpacking the weights, once for all rows.
// Each weight goes into a tile as the bf16 value 16 + q (exact: bf16 counts by one
// from 16 to 32), the rows as bf16 (as torch's kernel rounds them), and the products
// add up in float32. Per group of 32 inputs, with W = scale·q + low:
//   Σ W·x = scale · Σ (16 + q)·x + (low - 16·scale) · Σ x
// so a tile's result needs two multiply-adds per row and group. scale and low are held
// in float16 (torch's kernel holds scale and zero in bf16, 8x coarser), so the weights
// cost the bytes torch's layout does (0.625 a weight): one row's step is bound by
// memory bandwidth. AMX computes each row on its own, so a row's result does not
// depend on the other rows (tests/test_native_step.py checks it bit for bit).
//
// Layout (`tile_layout` in native_step.py): for each tile of 16 outputs and group g,
// 8 x 32 bytes; bytes 2n and 2n+1 of block j hold, for output n, inputs 4j, 4j+1 in
// their low nibbles and 4j+2, 4j+3 in their high ones. Widened to 16 bits, the low
// nibbles are a tile row (an input pair for 16 outputs) and the high ones the next.
// scale_low: [tiles][groups][2][16] float16, the scales and the lows.

bool amx_ready() {
#if defined(PLAYGROUND_AMX)
  // Linux hands out the tile registers' state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA).
  static const bool ready = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ready;
#else
  return false;
#endif
}

constexpr int64_t kTileOutputs = 16, kTileGroup = 32, kTileBytes = 256;
constexpr int64_t kPrefetchGroups = 32;

#if defined(PLAYGROUND_AMX)
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Tiles: 0 and 3 the results of two output tiles, 1 the rows, 2 and 4 the weights.
void configure_tiles(int rows) {
  TileConfig config;
  for (int tile : {0, 1, 3}) config.rows[tile] = rows, config.bytes_per_row[tile] = 64;
  for (int tile : {2, 4}) config.rows[tile] = 16, config.bytes_per_row[tile] = 64;
  _tile_loadconfig(&config);
}

// One group's weights of one output tile as 16 tile rows of bf16 (16 + q).
inline void unpack_tile(const uint8_t* packed, uint16_t* tile) {
  const __m512i mask = _mm512_set1_epi16(0x78), sixteen = _mm512_set1_epi16(0x4180);
  for (int j = 0; j < 8; ++j) {
    const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed + j * 32)));
    _mm512_store_si512(tile + 2 * j * 32, _mm512_or_si512(_mm512_and_si512(_mm512_slli_epi16(w, 3), mask), sixteen));
    _mm512_store_si512(tile + (2 * j + 1) * 32, _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(w, 1), mask), sixteen));
  }
}

// T (1 or 2) output tiles for `rows` (<= 4) rows of bf16 x with their group sums. The tile
// products of all groups are stored first and scaled after, so no vector load waits on a
// tile store; the weights alternate between two buffers for the same reason.
template <int T>
void tiles_block(int rows, const uint16_t* x, const float* sums, int64_t k, const uint8_t* packed,
                 const at::Half* scale_low, float* out, int64_t ldo, float* results) {
  const int64_t groups = k / kTileGroup;
  alignas(64) uint16_t weights[2][T][16 * 32];
  for (int64_t g = 0; g < groups; ++g) {
    uint16_t (*w)[16 * 32] = weights[g & 1];
    for (int t = 0; t < T; ++t) {
      const uint8_t* next = packed + (t * groups + g + kPrefetchGroups) * kTileBytes;
      _mm_prefetch(reinterpret_cast<const char*>(next), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(next + 64), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(next + 128), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(next + 192), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(scale_low + (t * groups + g) * 32), _MM_HINT_T0);
      unpack_tile(packed + (t * groups + g) * kTileBytes, w[t]);
    }
    float* result = results + g * T * 64;
    _tile_loadd(1, x + g * kTileGroup, k * 2);
    _tile_zero(0);
    _tile_loadd(2, w[0], 64);
    _tile_dpbf16ps(0, 1, 2);
    _tile_stored(0, result, 64);
    if constexpr (T == 2) {
      _tile_zero(3);
      _tile_loadd(4, w[1], 64);
      _tile_dpbf16ps(3, 1, 4);
      _tile_stored(3, result + 64, 64);
    }
  }
  __m512 acc[T][kRowBlock];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < rows; ++r) acc[t][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g)
    for (int t = 0; t < T; ++t) {
      const at::Half* sl = scale_low + (t * groups + g) * 32;
      const float* result = results + (g * T + t) * 64;
      const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sl)));
      const __m512 zero = _mm512_fmadd_ps(scale, _mm512_set1_ps(-16.0f),
          _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sl + 16))));
      for (int r = 0; r < rows; ++r) {
        acc[t][r] = _mm512_fmadd_ps(_mm512_load_ps(result + r * 16), scale, acc[t][r]);
        acc[t][r] = _mm512_fmadd_ps(zero, _mm512_set1_ps(sums[r * groups + g]), acc[t][r]);
      }
    }
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < rows; ++r) _mm512_storeu_ps(out + r * ldo + t * 16, acc[t][r]);
}
#endif

// out [rows, n] = x [rows, k] · Wᵀ for int4 weights in the tile layout above.
void int4_tiles_matmul(const float* x, int64_t rows, const uint8_t* packed, const at::Half* scale_low,
                       int64_t n, int64_t k, float* out) {
#if defined(PLAYGROUND_AMX)
  const int64_t groups = k / kTileGroup, tiles = n / kTileOutputs;
  std::vector<uint16_t> rounded(rows * k);
  std::vector<float> sums(rows * groups);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const float* src = x + r * k + g * kTileGroup;
      uint16_t* dst = rounded.data() + r * k + g * kTileGroup;
      const __m512bh pair = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
      _mm512_storeu_si512(dst, reinterpret_cast<__m512i>(pair));
      const __m512 low = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dst))), 16));
      const __m512 high = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dst + 16))), 16));
      sums[r * groups + g] = _mm512_reduce_add_ps(_mm512_add_ps(low, high));
    }
  at::parallel_for(0, (tiles + 1) / 2, 1, [&](int64_t begin, int64_t end) {
    // each group's products for two tiles of up to four rows: 64 floats a tile, 64-byte aligned
    std::vector<float> storage(groups * 2 * 64 + 16);
    float* results = storage.data() + (16 - reinterpret_cast<uintptr_t>(storage.data()) / 4 % 16) % 16;
    for (int64_t r = 0; r < rows; r += kRowBlock) {
      const int block = static_cast<int>(std::min<int64_t>(kRowBlock, rows - r));
      configure_tiles(block);
      for (int64_t pair = begin; pair < end; ++pair) {
        const int64_t t = pair * 2;
        const uint16_t* xr = rounded.data() + r * k;
        const float* sr = sums.data() + r * groups;
        const uint8_t* p = packed + t * groups * kTileBytes;
        const at::Half* sl = scale_low + t * groups * 32;
        float* o = out + r * n + t * kTileOutputs;
        if (t + 1 < tiles) tiles_block<2>(block, xr, sr, k, p, sl, o, n, results);
        else tiles_block<1>(block, xr, sr, k, p, sl, o, n, results);
      }
      _tile_release();
    }
  });
#else
  TORCH_CHECK(false, "int4 tiles need AMX-BF16 (this build has none)");
#endif
}

// ---- int4 weights times int16 rows: AVX512-VNNI, AVX-VNNI or AVX2 (CPUs without AMX) ----
//
// Without AMX, torch's int4 kernel does one float multiply-add per weight and row, so
// each extra row of a batch costs ~1.4 ms a step here. llama.cpp's CPU path multiplies
// integers instead: its rows are rounded to int8 per block of 32 inputs. Here the rows
// are rounded to int16 (a block's largest value to 32767), and one VNNI instruction
// (vpdpwssd) does 32 products of 16-bit integers where a float one does 16. AVX2 has
// no VNNI: vpmaddwd + vpaddd do 16 products in two instructions where float does 8 in
// one, but the weights' unpacking, shared by all rows, costs about half of a float
// kernel's (2.4x torch's int4 kernel's speed for one row, 1.8x for four, under AVX2).
// CPUs with AVX-VNNI (Intel since Alder Lake, AMD Zen 5) fuse the two. int8 rows
// (vpdpbusd, 64 products) made a four-row step ~20 % faster still, but took the embedded
// model's teacher-forced agreement with float32 from 98.9 % to 93.2 % (94.9-96.0 % with
// int8 rows in half of the projections), so they are not used. On the AMX kernel's
// layout (the tile_layout copy), per group of 32 inputs, with W = scale·q + low and a
// row x ≈ step·xq (step = max|x| / 32767):
//   Σ W·x ≈ scale · step · Σ q·xq + low · Σ x
// Σ q·xq is exact in int32 (and in float: |Σ| < 32·15·32767 < 2^24), Σ x is the row's own
// float sum. The rounding, 2^-16 of a block's largest value, is far below bf16's (2^-9 of
// each value), which torch's kernel and the AMX one give the rows. The weights are
// unpacked once for all rows; a row's integers depend on it alone, so a row computes
// alone exactly what it computes in a batch.
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define PLAYGROUND_VNNI 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define PLAYGROUND_MADD 1  // the same arithmetic on 256-bit registers: vpmaddwd + vpaddd (or AVX-VNNI)
#endif

bool int16_rows_ready() {
#if defined(PLAYGROUND_VNNI) || defined(PLAYGROUND_MADD)
  return true;
#else
  return false;
#endif
}

// Which instructions multiply the int16 rows in this build, for people.
const char* int16_rows_isa() {
#if defined(PLAYGROUND_VNNI)
  return "AVX512-VNNI";
#elif defined(PLAYGROUND_MADD) && defined(__AVXVNNI__)
  return "AVX-VNNI";
#elif defined(PLAYGROUND_MADD)
  return "AVX2";
#else
  return "";
#endif
}

// Two of a row's int16 values as one 32-bit lane, for a broadcast straight from memory.
inline int32_t int16_pair(const int16_t* x) {
  int32_t pair;
  std::memcpy(&pair, x, 4);
  return pair;
}

#if defined(PLAYGROUND_VNNI)
// Each row per group of 32: int16 values, their step and the group's float sum.
void quantize_rows(const float* x, int64_t rows, int64_t k, int16_t* q, float* step, float* sum) {
  const int64_t groups = k / kTileGroup;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const float* src = x + r * k + g * kTileGroup;
      const __m512 a = _mm512_loadu_ps(src), b = _mm512_loadu_ps(src + 16);
      const float largest = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
      const __m512 inverse = _mm512_set1_ps(largest > 0.f ? 32767.f / largest : 0.f);
      int16_t* dst = q + r * k + g * kTileGroup;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(a, inverse))));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(b, inverse))));
      step[r * groups + g] = largest / 32767.f;
      sum[r * groups + g] = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
    }
}

// T (1 or 2) tiles of 16 outputs for R rows. Block j of a group holds, for output n, the
// bytes q[4j] | q[4j+2] << 4 and q[4j+1] | q[4j+3] << 4. Widened to 16-bit words, output n's
// two words masked with 0x000F are the pair q[4j], q[4j+1] as two int16, and shifted right
// by 4 the pair q[4j+2], q[4j+3], each in the order of the row's two int16 values it meets:
// three instructions for 16 outputs' two pairs. Each of a row's pairs is broadcast from
// memory (a load, no shuffle) once for both tiles. Below four rows the two pairs add into
// separate sums, so each sum's chain of dependent instructions is half as long.
constexpr int kInt16Tiles = 2;  // tiles sharing each row's broadcasts
constexpr int kInt16WideRows = 8;  // rows per block of weights in prompt passes (4: 1.2x the time)

template <int T, int R>
void int16_tiles(const int16_t* xq, const float* step, const float* sum, int64_t k, const uint8_t* packed,
                const at::Half* scale_low, float* out, int64_t ldo) {
  constexpr int S = R < 4 ? 2 : 1;  // sets of sums: the pairs apart, or together
  const int64_t groups = k / kTileGroup;
  const __m512i nibbles = _mm512_set1_epi16(0x000F);
  __m512 acc[T][R];
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) acc[t][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i dot[S][T][R];
    for (int t = 0; t < T; ++t) {
      const char* next = reinterpret_cast<const char*>(packed + (t * groups + g + kPrefetchGroups) * kTileBytes);
      for (int line = 0; line < 4; ++line) _mm_prefetch(next + line * 64, _MM_HINT_T0);
      for (int s = 0; s < S; ++s)
        for (int r = 0; r < R; ++r) dot[s][t][r] = _mm512_setzero_si512();
    }
    for (int j = 0; j < 8; ++j) {
      __m512i low_pair[T], high_pair[T];
      for (int t = 0; t < T; ++t) {
        const uint8_t* p = packed + (t * groups + g) * kTileBytes + j * 32;
        const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        low_pair[t] = _mm512_and_si512(w, nibbles);
        high_pair[t] = _mm512_srli_epi16(w, 4);
      }
      for (int r = 0; r < R; ++r) {
        const int16_t* x = xq + r * k + g * kTileGroup + 4 * j;
        const __m512i first = _mm512_set1_epi32(int16_pair(x)), second = _mm512_set1_epi32(int16_pair(x + 2));
        for (int t = 0; t < T; ++t) {
          dot[0][t][r] = _mm512_dpwssd_epi32(dot[0][t][r], low_pair[t], first);
          dot[S - 1][t][r] = _mm512_dpwssd_epi32(dot[S - 1][t][r], high_pair[t], second);
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      const at::Half* sl = scale_low + (t * groups + g) * 32;
      const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sl)));
      const __m512 low = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sl + 16)));
      for (int r = 0; r < R; ++r) {
        const int64_t i = r * groups + g;
        const __m512i total = S == 2 ? _mm512_add_epi32(dot[0][t][r], dot[S - 1][t][r]) : dot[0][t][r];
        acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(scale, _mm512_set1_ps(step[i])), acc[t][r]);
        acc[t][r] = _mm512_fmadd_ps(low, _mm512_set1_ps(sum[i]), acc[t][r]);
      }
    }
  }
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * ldo + t * kTileOutputs, acc[t][r]);
}

#endif

#if defined(PLAYGROUND_MADD)
inline float reduce_max(__m256 v) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

inline float reduce_add(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

void quantize_rows(const float* x, int64_t rows, int64_t k, int16_t* q, float* step, float* sum) {
  const int64_t groups = k / kTileGroup;
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const float* src = x + r * k + g * kTileGroup;
      __m256 v[4], largest = _mm256_setzero_ps(), total = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(src + 8 * i);
        largest = _mm256_max_ps(largest, _mm256_andnot_ps(sign, v[i]));
        total = _mm256_add_ps(total, v[i]);
      }
      const float top = reduce_max(largest);
      const __m256 inverse = _mm256_set1_ps(top > 0.f ? 32767.f / top : 0.f);
      int16_t* dst = q + r * k + g * kTileGroup;
      for (int i = 0; i < 4; i += 2) {
        const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse));
        const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(v[i + 1], inverse));
        // packs works per 128-bit lane: a0-3 b0-3 a4-7 b4-7, put back in order
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8 * i),
                            _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8));
      }
      step[r * groups + g] = top / 32767.f;
      sum[r * groups + g] = reduce_add(total);
    }
}

inline __m256i add_products(__m256i dot, __m256i a, __m256i b) {
#if defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(dot, a, b);
#else
  return _mm256_add_epi32(dot, _mm256_madd_epi16(a, b));
#endif
}

// The VNNI kernel's arithmetic with 256-bit registers: each half of a block (outputs 0-7,
// then 8-15) widened to words, masked for one pair and shifted for the other.
constexpr int kInt16Tiles = 2;  // two tiles share each row's broadcasts (one tile: 2-7 % slower)
constexpr int kInt16WideRows = 4;  // 16 registers: no wider blocks for prompts

template <int T, int R>
void int16_tiles(const int16_t* xq, const float* step, const float* sum, int64_t k, const uint8_t* packed,
                const at::Half* scale_low, float* out, int64_t ldo) {
  const int64_t groups = k / kTileGroup;
  const __m256i nibbles = _mm256_set1_epi16(0x000F);
  __m256 acc[T][2][R];
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < R; ++r) acc[t][h][r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i dot[T][2][R];
    for (int t = 0; t < T; ++t) {
      const char* next = reinterpret_cast<const char*>(packed + (t * groups + g + kPrefetchGroups) * kTileBytes);
      for (int line = 0; line < 4; ++line) _mm_prefetch(next + line * 64, _MM_HINT_T0);
      for (int h = 0; h < 2; ++h)
        for (int r = 0; r < R; ++r) dot[t][h][r] = _mm256_setzero_si256();
    }
    for (int j = 0; j < 8; ++j) {
      __m256i low_pair[T][2], high_pair[T][2];
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < 2; ++h) {
          const uint8_t* p = packed + (t * groups + g) * kTileBytes + j * 32 + 16 * h;
          const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
          low_pair[t][h] = _mm256_and_si256(w, nibbles);
          high_pair[t][h] = _mm256_srli_epi16(w, 4);
        }
      for (int r = 0; r < R; ++r) {
        const int16_t* x = xq + r * k + g * kTileGroup + 4 * j;
        const __m256i first = _mm256_set1_epi32(int16_pair(x)), second = _mm256_set1_epi32(int16_pair(x + 2));
        for (int t = 0; t < T; ++t)
          for (int h = 0; h < 2; ++h)
            dot[t][h][r] = add_products(add_products(dot[t][h][r], low_pair[t][h], first), high_pair[t][h], second);
      }
    }
    for (int t = 0; t < T; ++t) {
      const at::Half* sl = scale_low + (t * groups + g) * 32;
      const auto halves = [&](int i) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sl + i))); };
      const __m256 scale[2] = {halves(0), halves(8)}, low[2] = {halves(16), halves(24)};
      for (int r = 0; r < R; ++r) {
        const int64_t i = r * groups + g;
        const __m256 st = _mm256_set1_ps(step[i]), su = _mm256_set1_ps(sum[i]);
        for (int h = 0; h < 2; ++h) {
          acc[t][h][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t][h][r]), _mm256_mul_ps(scale[h], st), acc[t][h][r]);
          acc[t][h][r] = _mm256_fmadd_ps(low[h], su, acc[t][h][r]);
        }
      }
    }
  }
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < 2; ++h) _mm256_storeu_ps(out + r * ldo + t * kTileOutputs + 8 * h, acc[t][h][r]);
}
#endif

#if defined(PLAYGROUND_VNNI) || defined(PLAYGROUND_MADD)
// Rows rounded to int16 per group of 32 (quantize_rows): what both int16-rows kernels take.
struct Int16Rows {
  std::vector<int16_t> q;
  std::vector<float> step, sum;
  Int16Rows(const float* x, int64_t rows, int64_t k)
      : q(rows * k), step(rows * k / kTileGroup), sum(rows * k / kTileGroup) {
    quantize_rows(x, rows, k, q.data(), step.data(), sum.data());
  }
};

// With AVX2's 16 registers, two rows or more take one tile at a time (SmolLM2's gate
// projection, four rows: 72 against 77 us; AVX-VNNI 55 against 66).
template <int T, int R>
void int16_block(const int16_t* xq, const float* step, const float* sum, int64_t k, const uint8_t* packed,
                 const at::Half* scale_low, float* out, int64_t ldo) {
#if defined(PLAYGROUND_MADD)
  if constexpr (T == 2 && R > 1) {
    const int64_t groups = k / kTileGroup;
    int16_tiles<1, R>(xq, step, sum, k, packed, scale_low, out, ldo);
    int16_tiles<1, R>(xq, step, sum, k, packed + groups * kTileBytes, scale_low + groups * 32, out + kTileOutputs, ldo);
    return;
  }
#endif
  int16_tiles<T, R>(xq, step, sum, k, packed, scale_low, out, ldo);
}

template <int T>
void int16_rows(const int16_t* q, const float* step, const float* sum, int64_t rows, int64_t k,
               const uint8_t* p, const at::Half* sl, float* out, int64_t n) {
  const int64_t groups = k / kTileGroup;
  in_row_blocks<kInt16WideRows>(rows, [&](auto block, int64_t r) {
    int16_block<T, decltype(block)::value>(q + r * k, step + r * groups, sum + r * groups, k, p, sl,
                                           out + r * n, n);
  });
}
#endif

// out [rows, n] = x [rows, k] · Wᵀ for int4 weights in the tile layout, rows as int16.
void int4_int16_matmul(const float* x, int64_t rows, const uint8_t* packed, const at::Half* scale_low,
                      int64_t n, int64_t k, float* out) {
#if defined(PLAYGROUND_VNNI) || defined(PLAYGROUND_MADD)
  const int64_t groups = k / kTileGroup, tiles = n / kTileOutputs;
  const Int16Rows x16(x, rows, k);
  const int16_t* q = x16.q.data();
  const float *step = x16.step.data(), *sum = x16.sum.data();
  at::parallel_for(0, (tiles + kInt16Tiles - 1) / kInt16Tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t t = block * kInt16Tiles;
      const uint8_t* p = packed + t * groups * kTileBytes;
      const at::Half* sl = scale_low + t * groups * 32;
      float* o = out + t * kTileOutputs;
      if (t + kInt16Tiles <= tiles)
        int16_rows<kInt16Tiles>(q, step, sum, rows, k, p, sl, o, n);
      else
        int16_rows<1>(q, step, sum, rows, k, p, sl, o, n);
    }
  });
#else
  TORCH_CHECK(false, "int4 x int16 rows need AVX2 with FMA and F16C (this build has none)");
#endif
}

// ---- int8 weights times int16 rows (int8 layers and the LM head) ----
//
// The float int8 kernel above costs 1.7x for four rows what it costs for one (SmolLM2's
// head: 0.85 against 1.47 ms): a float multiply-add per weight and row. Here the rows are
// rounded to int16 per group of 32, as int4_int16_matmul's are (2^-16 of the group's
// largest value), and one vpdpwssd (vpmaddwd + vpaddd on AVX2) multiplies an input pair
// into 16 (8) outputs: half the instructions per row, and widening the weights is shared
// by all rows. A group's sum fits int32 (32 · 127 · 32767 < 2^31). A row's integers
// depend on it alone, so a row gives alone what it gives in a batch.
//
// Layout (made by Projection::make): per tile of 16 outputs, per input pair p, 32 bytes
// w[o][2p], w[o][2p+1] for o = 0..15; widened to int16 they are 16 pairs, one per output.
#if defined(PLAYGROUND_VNNI) || defined(PLAYGROUND_MADD)
#if defined(PLAYGROUND_VNNI)
struct OutputLanes {  // a tile's 16 outputs in one register
  static constexpr int kParts = 1;
  using Int = __m512i;
  using Float = __m512;
  static Int zero() { return _mm512_setzero_si512(); }
  static Float zero_floats() { return _mm512_setzero_ps(); }
  static Int weights(const int8_t* pair, int) {
    return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pair)));
  }
  static Int add(Int dot, Int w, int32_t x) { return _mm512_dpwssd_epi32(dot, w, _mm512_set1_epi32(x)); }
  static Float add_scaled(Int dot, float step, Float acc) {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(step), acc);
  }
  static void store(float* out, Float acc, const float* scale) { _mm512_storeu_ps(out, _mm512_mul_ps(acc, _mm512_loadu_ps(scale))); }
};
#else
struct OutputLanes {  // a tile's 16 outputs in two registers of 8
  static constexpr int kParts = 2;
  using Int = __m256i;
  using Float = __m256;
  static Int zero() { return _mm256_setzero_si256(); }
  static Float zero_floats() { return _mm256_setzero_ps(); }
  static Int weights(const int8_t* pair, int part) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair + 16 * part)));
  }
  static Int add(Int dot, Int w, int32_t x) { return add_products(dot, w, _mm256_set1_epi32(x)); }
  static Float add_scaled(Int dot, float step, Float acc) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(step), acc);
  }
  static void store(float* out, Float acc, const float* scale) { _mm256_storeu_ps(out, _mm256_mul_ps(acc, _mm256_loadu_ps(scale))); }
};
#endif

constexpr int kInt8Tiles = 2;  // tiles sharing each row's broadcasts

// T tiles of 16 outputs for R (<= 4) rows.
template <int T, int R>
void int8_int16_tiles(const int16_t* xq, const float* step, int64_t k, const int8_t* tiles,
                      const float* scale, float* out, int64_t ldo) {
  using L = OutputLanes;
  constexpr int P = L::kParts, kWidth = kTileOutputs / P;
  const int64_t groups = k / kTileGroup;
  typename L::Float acc[T][P][R];
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < P; ++h)
      for (int r = 0; r < R; ++r) acc[t][h][r] = L::zero_floats();
  for (int64_t g = 0; g < groups; ++g) {
    typename L::Int dot[T][P][R];
    for (int t = 0; t < T; ++t) {
      // The same group of the next block of tiles (this thread's next, as a rule): a block
      // ahead, as the int4 kernels run kPrefetchGroups ahead.
      const char* next = reinterpret_cast<const char*>(tiles + (t + kInt8Tiles) * k * kTileOutputs + g * kTileGroup * kTileOutputs);
      for (int line = 0; line < kTileGroup * kTileOutputs / 64; ++line) _mm_prefetch(next + line * 64, _MM_HINT_T0);
      for (int h = 0; h < P; ++h)
        for (int r = 0; r < R; ++r) dot[t][h][r] = L::zero();
    }
    for (int p = 0; p < kTileGroup / 2; ++p) {
      typename L::Int w[T][P];
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < P; ++h) w[t][h] = L::weights(tiles + t * k * kTileOutputs + (g * kTileGroup + 2 * p) * kTileOutputs, h);
      for (int r = 0; r < R; ++r) {
        int32_t pair;
        std::memcpy(&pair, xq + r * k + g * kTileGroup + 2 * p, 4);
        for (int t = 0; t < T; ++t)
          for (int h = 0; h < P; ++h) dot[t][h][r] = L::add(dot[t][h][r], w[t][h], pair);
      }
    }
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < P; ++h)
        for (int r = 0; r < R; ++r) acc[t][h][r] = L::add_scaled(dot[t][h][r], step[r * groups + g], acc[t][h][r]);
  }
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < P; ++h)
      for (int r = 0; r < R; ++r) {
        const int64_t o = t * kTileOutputs + h * kWidth;
        L::store(out + r * ldo + o, acc[t][h][r], scale + o);
      }
}

// With AVX2's 16 registers, three or four rows take one tile at a time (1.8 against 1.1 ms
// for SmolLM2's head, four rows; one row: 0.52 against 0.65).
template <int T, int R>
void int8_int16_block(const int16_t* xq, const float* step, int64_t k, const int8_t* tiles,
                      const float* scale, float* out, int64_t ldo) {
  if constexpr (OutputLanes::kParts == 2 && T == 2 && R > 2) {
    int8_int16_tiles<1, R>(xq, step, k, tiles, scale, out, ldo);
    int8_int16_tiles<1, R>(xq, step, k, tiles + k * kTileOutputs, scale + kTileOutputs, out + kTileOutputs, ldo);
  } else {
    int8_int16_tiles<T, R>(xq, step, k, tiles, scale, out, ldo);
  }
}

template <int T>
void int8_int16_rows(const int16_t* q, const float* step, int64_t rows, int64_t k, const int8_t* tiles,
                     const float* scale, float* out, int64_t n) {
  const int64_t groups = k / kTileGroup;
  in_row_blocks(rows, [&](auto block, int64_t r) {
    int8_int16_block<T, decltype(block)::value>(q + r * k, step + r * groups, k, tiles, scale, out + r * n, n);
  });
}
#endif

// out [rows, n] = x [rows, k] · (W · scale)ᵀ for int8 weights in the layout above, rows as int16.
void int8_int16_matmul(const float* x, int64_t rows, const int8_t* tiles, const float* scale, int64_t n,
                       int64_t k, float* out) {
#if defined(PLAYGROUND_VNNI) || defined(PLAYGROUND_MADD)
  const int64_t count = n / kTileOutputs;
  const Int16Rows x16(x, rows, k);
  const int16_t* q = x16.q.data();
  const float* step = x16.step.data();
  at::parallel_for(0, (count + kInt8Tiles - 1) / kInt8Tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t t = block * kInt8Tiles;
      const int8_t* w = tiles + t * k * kTileOutputs;
      if (t + kInt8Tiles <= count)
        int8_int16_rows<kInt8Tiles>(q, step, rows, k, w, scale + t * kTileOutputs, out + t * kTileOutputs, n);
      else
        int8_int16_rows<1>(q, step, rows, k, w, scale + t * kTileOutputs, out + t * kTileOutputs, n);
    }
  });
#else
  TORCH_CHECK(false, "int8 x int16 rows need AVX2 with FMA and F16C (this build has none)");
#endif
}

// ---- Choosing tokens: each row's largest scores ----
//
// torch's CPU argmax and topk read a row one value at a time: SmolLM2's 49K logits take
// 87 us a row for argmax and ~60 for a top-5, against 0.4-1.3 ms for the whole decode step
// they follow. These read 16 (AVX2: 8) values per comparison.

#if defined(__AVX512F__)
constexpr int64_t kPickLanes = 16;
// Which of x[i..i+16) are above `bound` (bit j: x[i+j]), and which are NaN.
inline uint32_t lanes_above(const float* x, float bound, uint32_t* nan) {
  const __m512 v = _mm512_loadu_ps(x);
  *nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_cmp_ps_mask(v, _mm512_set1_ps(bound), _CMP_GT_OQ);
}
#elif defined(__AVX2__)
constexpr int64_t kPickLanes = 8;
inline uint32_t lanes_above(const float* x, float bound, uint32_t* nan) {
  const __m256 v = _mm256_loadu_ps(x);
  *nan |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(bound), _CMP_GT_OQ));
}
#else
constexpr int64_t kPickLanes = 1;
inline uint32_t lanes_above(const float* x, float bound, uint32_t* nan) {
  *nan |= std::isnan(*x);
  return *x > bound;
}
#endif

// Calls found(i) for each x[i] above bound() in order (bound() may rise as it goes); false
// where the row holds a NaN (the caller then leaves the row to torch, which ranks NaN first).
template <typename Bound, typename Found>
bool scan_above(const float* x, int64_t begin, int64_t n, const Bound& bound, const Found& found) {
  uint32_t nan = 0;
  int64_t i = begin;
  for (; i + kPickLanes <= n; i += kPickLanes)
    for (uint32_t mask = lanes_above(x + i, bound(), &nan); mask; mask &= mask - 1) {
      const int64_t at = i + __builtin_ctz(mask);
      if (x[at] > bound()) found(at);
    }
  for (; i < n; ++i) {
    nan |= std::isnan(x[i]);
    if (x[i] > bound()) found(i);
  }
  return nan == 0;
}

// Index of the first largest of x[0..n) (torch.argmax's answer), or -1 where a NaN is.
int64_t first_largest(const float* x, int64_t n) {
  if (std::isnan(x[0])) return -1;
  int64_t best = 0;
  const bool clean = scan_above(x, 1, n, [&] { return x[best]; }, [&](int64_t i) { best = i; });
  return clean ? best : -1;
}

// The k largest of x[0..n) (0 < k <= n), largest first and equal values in index order, into
// values and ids; false where a NaN is. Candidates above the k-th best so far gather in a
// buffer of 4k; when it fills, the best k stay and the bound rises to the k-th: O(n) reads
// and O(n) moves even for a row sorted upwards.
bool top_of_row(const float* x, int64_t n, int64_t k, float* values, int64_t* ids) {
  const auto better = [x](int64_t a, int64_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  std::vector<int64_t> kept;
  kept.reserve(4 * k);
  bool clean = true;
  for (int64_t i = 0; i < k; ++i) {
    kept.push_back(i);
    clean &= !std::isnan(x[i]);
  }
  float bound = x[*std::min_element(kept.begin(), kept.end(), [x](int64_t a, int64_t b) { return x[a] < x[b]; })];
  const auto keep_best = [&] {
    std::nth_element(kept.begin(), kept.begin() + (k - 1), kept.end(), better);
    kept.resize(k);
    bound = x[kept[k - 1]];
  };
  clean &= scan_above(x, k, n, [&] { return bound; }, [&](int64_t i) {
    kept.push_back(i);
    if (static_cast<int64_t>(kept.size()) == 4 * k) keep_best();
  });
  if (!clean) return false;
  keep_best();
  std::sort(kept.begin(), kept.end(), better);
  for (int64_t j = 0; j < k; ++j) {
    values[j] = x[kept[j]];
    ids[j] = kept[j];
  }
  return true;
}

// scores: float32 [rows, n]. Each row's argmax; -1 for a row with a NaN.
std::vector<int64_t> argmax_rows(const at::Tensor& scores) {
  TORCH_CHECK(scores.dim() == 2 && scores.scalar_type() == at::kFloat && scores.is_contiguous() && scores.size(1) > 0,
              "argmax_rows: contiguous float32 [rows, n]");
  const int64_t rows = scores.size(0), n = scores.size(1);
  const float* x = scores.data_ptr<float>();
  std::vector<int64_t> found(rows);
  pybind11::gil_scoped_release no_gil;
  for (int64_t r = 0; r < rows; ++r) found[r] = first_largest(x + r * n, n);
  return found;
}

// scores: float32 [rows, n], 0 < k <= n. (values [rows, k], ids [rows, k]) as topk gives them,
// equal values in index order; empty tensors where a row holds a NaN.
std::tuple<at::Tensor, at::Tensor> top_rows(const at::Tensor& scores, int64_t k) {
  TORCH_CHECK(scores.dim() == 2 && scores.scalar_type() == at::kFloat && scores.is_contiguous() &&
              k > 0 && k <= scores.size(1), "top_rows: contiguous float32 [rows, n] and 0 < k <= n");
  const int64_t rows = scores.size(0), n = scores.size(1);
  at::Tensor values = at::empty({rows, k}, at::kFloat), ids = at::empty({rows, k}, at::kLong);
  const float* x = scores.data_ptr<float>();
  bool clean = true;
  {
    pybind11::gil_scoped_release no_gil;
    for (int64_t r = 0; r < rows && clean; ++r)
      clean = top_of_row(x + r * n, n, k, values.data_ptr<float>() + r * k, ids.data_ptr<int64_t>() + r * k);
  }
  if (!clean) return {at::empty({0}, at::kFloat), at::empty({0}, at::kLong)};
  return {values, ids};
}

enum Kind : int64_t { kInt4 = 0, kInt8 = 1, kDense = 2, kInt4Tiles = 3, kInt4Int16 = 4,
                     kInt8Int16 = 5 };

// y = x Wᵀ (+ b) for how the weights are held: int8, and int4 in the tile layout, through
// this file's kernels above; other int4 through torch's kernel, as the Python layer calls
// it; a dense matmul otherwise.
struct Projection {
  int64_t kind;
  at::Tensor weight, scales;  // int4: packed + scales_and_zeros; int8: int8 + scale; dense: W
  int64_t group;
  at::ScalarType input_dtype;
  std::vector<float> bias, float_scale;  // float_scale: int8's, as floats

  bool tiled() const { return kind == kInt4Tiles || kind == kInt4Int16; }
  int64_t outputs() const { return tiled() || kind == kInt8Int16 ? weight.size(0) * kTileOutputs : weight.size(0); }
  int64_t inputs() const {
    return tiled() ? weight.size(1) * kTileGroup : kind == kInt8Int16 ? weight.size(1) * 2 : weight.size(1);
  }

  at::Tensor run(const at::Tensor& x) const {
    switch (kind) {
      case kInt4: return at::_weight_int4pack_mm_for_cpu(x, weight, group, scales);
      default: return at::linear(x, weight);
    }
  }

  // rows x in floats -> rows x outputs() floats
  void apply(const float* x, int64_t rows, int64_t in, float* out) const {
    if (kind == kInt8) {
      int8_matmul(x, rows, weight.data_ptr<int8_t>(), float_scale.data(), outputs(), in, out);
    } else if (kind == kInt8Int16) {
      int8_int16_matmul(x, rows, weight.data_ptr<int8_t>(), float_scale.data(), outputs(), in, out);
    } else if (kind == kInt4Tiles) {
      int4_tiles_matmul(x, rows, weight.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(), outputs(), in, out);
    } else if (kind == kInt4Int16) {
      int4_int16_matmul(x, rows, weight.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(), outputs(), in, out);
    } else {
      at::Tensor y = run(to_tensor(x, rows, in, input_dtype)).contiguous();
      read_floats(y, out);
    }
    if (!bias.empty()) {
      const int64_t n = outputs();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < n; ++i) out[r * n + i] += bias[i];
    }
  }

  static Projection make(int64_t kind, at::Tensor weight, at::Tensor scales, int64_t group,
                         at::Tensor bias, int64_t input_dtype) {
    Projection p{kind, weight, scales, group, static_cast<at::ScalarType>(input_dtype),
                 bias.defined() && bias.numel() ? floats(bias) : std::vector<float>(), {}};
    if (kind == kInt8 || kind == kInt8Int16) {
      TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 2 && weight.is_contiguous() &&
                  scales.numel() == weight.size(0), "int8: contiguous int8 [n, k] and n scales");
      p.float_scale = floats(scales);
    }
    if (kind == kInt8Int16) {
      TORCH_CHECK(weight.size(0) % kTileOutputs == 0 && weight.size(1) % kTileGroup == 0 && int16_rows_ready(),
                  "int8 x int16 rows: [n, k] with n a multiple of 16 and k of 32, and AVX2 in this build");
      const int64_t n = weight.size(0), k = weight.size(1);
      p.weight = weight.view({n / kTileOutputs, kTileOutputs, k / 2, 2}).permute({0, 2, 1, 3}).contiguous();
    }
    if (p.tiled()) {
      TORCH_CHECK(kind == kInt4Int16 ? int16_rows_ready() : amx_ready(),
                  "this int4 kernel needs AMX-BF16, or AVX2 for int16 rows, which this build or process lacks");
      TORCH_CHECK(weight.scalar_type() == at::kByte && weight.dim() == 4 && weight.is_contiguous() &&
                  weight.size(2) == 8 && weight.size(3) == 32 && scales.scalar_type() == at::kHalf &&
                  scales.is_contiguous() && scales.dim() == 4 && scales.size(0) == weight.size(0) &&
                  scales.size(1) == weight.size(1) && scales.size(2) == 2 && scales.size(3) == 16,
                  "int4 tiles: uint8 [tiles, groups, 8, 32] and float16 [tiles, groups, 2, 16]");
    }
    return p;
  }
};

struct Layer {
  Projection qkv, o, gate_up, down;
  std::vector<float> input_norm, post_attention_norm, head_norm;  // head_norm: Qwen3, else empty
  float head_eps;
};

class Decoder {
 public:
  Decoder(int64_t hidden, int64_t query_heads, int64_t kv_heads, int64_t head_dim,
          int64_t intermediate, double eps, double scaling)
      : hidden_(hidden), query_heads_(query_heads), kv_heads_(kv_heads), head_dim_(head_dim),
        intermediate_(intermediate), eps_(static_cast<float>(eps)),
        scaling_(static_cast<float>(scaling)) {}

  // projections: (kind, weight, scales, group, bias or empty) for qkv, o, gate_up, down
  void add_layer(at::Tensor input_norm, at::Tensor post_attention_norm, at::Tensor head_norm,
                 double head_eps, std::vector<int64_t> kinds, std::vector<at::Tensor> weights,
                 std::vector<at::Tensor> scales, std::vector<int64_t> groups,
                 std::vector<at::Tensor> biases, std::vector<int64_t> input_dtypes) {
    TORCH_CHECK(kinds.size() == 4 && weights.size() == 4 && scales.size() == 4 &&
                groups.size() == 4 && biases.size() == 4 && input_dtypes.size() == 4,
                "four projections a layer");
    Layer layer;
    Projection* projections[4] = {&layer.qkv, &layer.o, &layer.gate_up, &layer.down};
    for (int i = 0; i < 4; ++i)
      *projections[i] = Projection::make(kinds[i], weights[i], scales[i], groups[i], biases[i],
                                         input_dtypes[i]);
    layer.input_norm = floats(input_norm);
    layer.post_attention_norm = floats(post_attention_norm);
    layer.head_norm = head_norm.numel() ? floats(head_norm) : std::vector<float>();
    layer.head_eps = static_cast<float>(head_eps);
    layers_.push_back(std::move(layer));
  }

  // hidden [rows, hidden] float32 (the embedded tokens); cos / sin [rows, head_dim] float32,
  // sin signed as fused_llama.signed_sin makes it; keys / values per layer: [rows, kv heads,
  // capacity > length, head_dim] buffers holding `length` columns, float32 or bf16 (a bf16
  // model's batches: a step reads its whole cache, and at 600 tokens four rows' float32
  // cache is 110 MB, more than the weights), the new token's key and value go to column
  // `length`; starts: each row's first real column.
  at::Tensor step(at::Tensor hidden, at::Tensor cos, at::Tensor sin, std::vector<at::Tensor> keys,
                  std::vector<at::Tensor> values, int64_t length, std::vector<int64_t> starts) {
    const int64_t rows = hidden.size(0);
    check_inputs(hidden, cos, sin, keys, values, rows, length + 1);
    TORCH_CHECK(starts.empty() || static_cast<int64_t>(starts.size()) == rows, "one start per row");
    for (int64_t start : starts) TORCH_CHECK(start >= 0 && start <= length, "start out of range");
    Placement placement;
    for (int64_t r = 0; r < rows; ++r) {
      placement.cache_row.push_back(r);
      placement.column.push_back(length);
      placement.first.push_back(starts.empty() ? 0 : starts[r]);
    }
    return run_layers(hidden, cos, sin, keys, values, placement);
  }

  // A prompt pass of one sequence through the native layers: `hidden` [tokens, hidden] are
  // the prompt's tokens after `length` cached ones (cache row 0); token i's keys and values
  // go to column length + i and it attends over columns 0..length + i. The projections
  // take all tokens at once (the kernels' wide row blocks); everything else is the decode
  // step's own arithmetic.
  at::Tensor prompt(at::Tensor hidden, at::Tensor cos, at::Tensor sin, std::vector<at::Tensor> keys,
                    std::vector<at::Tensor> values, int64_t length) {
    const int64_t tokens = hidden.size(0);
    check_inputs(hidden, cos, sin, keys, values, 1, length + tokens);
    Placement placement;
    for (int64_t i = 0; i < tokens; ++i) {
      placement.cache_row.push_back(0);
      placement.column.push_back(length + i);
      placement.first.push_back(0);
    }
    return run_layers(hidden, cos, sin, keys, values, placement);
  }

  // The final norm and an int8 LM head (weights [vocab, hidden], a scale per row), its rows
  // as int16 (kInt8Int16) or float32 (kInt8).
  void set_head(at::Tensor norm, double eps, at::Tensor weight, at::Tensor scale, int64_t kind) {
    TORCH_CHECK(norm.numel() == hidden_ && weight.dim() == 2 && weight.size(1) == hidden_, "head: [vocab, hidden]");
    TORCH_CHECK(kind == kInt8 || kind == kInt8Int16, "head: int8 weights");
    final_norm_ = floats(norm);
    final_eps_ = static_cast<float>(eps);
    head_ = Projection::make(kind, weight, scale, 0, at::Tensor(), 0);
    has_head_ = true;
  }

  bool has_head() const { return has_head_; }
  bool head_int16_rows() const { return has_head_ && head_.kind == kInt8Int16; }

  // float32 logits [rows, vocab] of `hidden` [rows, hidden] float32 (what `step` returns).
  at::Tensor logits(at::Tensor hidden) const {
    TORCH_CHECK(has_head_, "no head set");
    TORCH_CHECK(hidden.scalar_type() == at::kFloat && hidden.is_contiguous() && hidden.dim() == 2 &&
                hidden.size(1) == hidden_, "hidden: contiguous float32 [rows, hidden]");
    const int64_t rows = hidden.size(0);
    at::Tensor out = at::empty({rows, head_.outputs()}, hidden.options());
    pybind11::gil_scoped_release no_gil;
    std::vector<float> normed(rows * hidden_);
    for (int64_t r = 0; r < rows; ++r)
      rms_norm(hidden.data_ptr<float>() + r * hidden_, final_norm_.data(), final_eps_, hidden_,
               normed.data() + r * hidden_);
    head_.apply(normed.data(), rows, hidden_, out.data_ptr<float>());
    return out;
  }

 private:
  // Where each row of a pass reads and writes the cache: its cache row, the column its new
  // keys and values go to, and its first real column (it attends over first..column).
  static constexpr int64_t kRowsApart = 16;  // rows from which the row-by-row work is shared

  struct Placement {
    std::vector<int64_t> cache_row, column, first;
  };

  void check_inputs(const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin,
                    const std::vector<at::Tensor>& keys, const std::vector<at::Tensor>& values,
                    int64_t cache_rows, int64_t columns) const {
    const int64_t rows = hidden.size(0);
    TORCH_CHECK(hidden.scalar_type() == at::kFloat && hidden.is_contiguous() &&
                hidden.size(1) == hidden_, "hidden: contiguous float32 [rows, hidden]");
    TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
                cos.is_contiguous() && sin.is_contiguous() && cos.numel() == rows * head_dim_ &&
                sin.numel() == rows * head_dim_, "cos / sin: contiguous float32 [rows, head_dim]");
    TORCH_CHECK(keys.size() == layers_.size() && values.size() == layers_.size(), "one cache per layer");
    for (size_t l = 0; l < layers_.size(); ++l)
      for (const at::Tensor* buffer : {&keys[l], &values[l]})
        TORCH_CHECK(buffer->scalar_type() == keys[0].scalar_type() &&
                    (buffer->scalar_type() == at::kFloat || buffer->scalar_type() == at::kBFloat16) &&
                    buffer->dim() == 4 &&
                    buffer->size(0) == cache_rows && buffer->size(1) == kv_heads_ &&
                    buffer->size(2) >= columns && buffer->size(3) == head_dim_ && buffer->stride(3) == 1,
                    "cache buffers: float32 or bf16 (all alike) [rows, kv heads, room for the new columns, head_dim]");
  }

  at::Tensor run_layers(const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin,
                        std::vector<at::Tensor>& keys, std::vector<at::Tensor>& values,
                        const Placement& placement) const {
    const int64_t rows = hidden.size(0);
    at::Tensor out = hidden.clone();
    pybind11::gil_scoped_release no_gil;
    float* h = out.data_ptr<float>();
    const int64_t rotated = (query_heads_ + kv_heads_) * head_dim_;
    const int64_t qkv_width = rotated + kv_heads_ * head_dim_;
    std::vector<float> normed(rows * hidden_), qkv(rows * qkv_width),
        attended(rows * query_heads_ * head_dim_), projected(rows * hidden_),
        gate_up(rows * 2 * intermediate_), activated(rows * intermediate_);
    // The row-by-row work (norms, rotations, activation, residual adds) runs on both threads
    // for a prompt's many rows; a decode step's few rows stay on one (below kRowsApart).
    const auto each_row = [rows](const auto& work) {
      if (rows < kRowsApart) {
        work(0, rows);
      } else {
        at::parallel_for(0, rows, kRowsApart / 2, work);
      }
    };
    for (size_t l = 0; l < layers_.size(); ++l) {
      const Layer& layer = layers_[l];
      each_row([&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
          rms_norm(h + r * hidden_, layer.input_norm.data(), eps_, hidden_, normed.data() + r * hidden_);
      });
      layer.qkv.apply(normed.data(), rows, hidden_, qkv.data());
      each_row([&](int64_t begin, int64_t end) {
        if (keys[l].scalar_type() == at::kBFloat16)
          rotate_and_store<at::BFloat16>(layer, qkv.data(), cos.data_ptr<float>(), sin.data_ptr<float>(), placement,
                                         begin, end, keys[l], values[l]);
        else
          rotate_and_store<float>(layer, qkv.data(), cos.data_ptr<float>(), sin.data_ptr<float>(), placement,
                                  begin, end, keys[l], values[l]);
      });
      if (keys[l].scalar_type() == at::kBFloat16)
        attend<at::BFloat16>(qkv.data(), qkv_width, keys[l], values[l], placement, attended.data());
      else
        attend<float>(qkv.data(), qkv_width, keys[l], values[l], placement, attended.data());
      layer.o.apply(attended.data(), rows, query_heads_ * head_dim_, projected.data());
      each_row([&](int64_t begin, int64_t end) {
        for (int64_t i = begin * hidden_; i < end * hidden_; ++i) h[i] += projected[i];
        for (int64_t r = begin; r < end; ++r)
          rms_norm(h + r * hidden_, layer.post_attention_norm.data(), eps_, hidden_,
                   normed.data() + r * hidden_);
      });
      layer.gate_up.apply(normed.data(), rows, hidden_, gate_up.data());
      each_row([&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const float* gate = gate_up.data() + r * 2 * intermediate_;
          const float* up = gate + intermediate_;
          float* act = activated.data() + r * intermediate_;
          for (int64_t i = 0; i < intermediate_; ++i) act[i] = gate[i] / (1.0f + exp_approx(-gate[i])) * up[i];
        }
      });
      layer.down.apply(activated.data(), rows, intermediate_, projected.data());
      each_row([&](int64_t begin, int64_t end) {
        for (int64_t i = begin * hidden_; i < end * hidden_; ++i) h[i] += projected[i];
      });
    }
    return out;
  }

  // Qwen3's head norm, then the rotary embedding of each query and key head of rows
  // begin..end (in place in `qkv`); the key and value heads go into the cache at each row's
  // placement.
  template <typename T>
  void rotate_and_store(const Layer& layer, float* qkv, const float* cos, const float* sin,
                        const Placement& placement, int64_t begin, int64_t end, at::Tensor& keys,
                        at::Tensor& values) const {
    const int64_t d = head_dim_, half = head_dim_ / 2, heads = query_heads_ + kv_heads_;
    const int64_t width = (heads + kv_heads_) * d;
    std::vector<float> head(d);
    T* key_data = keys.data_ptr<T>();
    T* value_data = values.data_ptr<T>();
    for (int64_t r = begin; r < end; ++r) {
      float* row = qkv + r * width;
      const float* c = cos + r * d;
      const float* s = sin + r * d;
      for (int64_t k = 0; k < heads; ++k) {
        float* x = row + k * d;
        if (!layer.head_norm.empty()) rms_norm(x, layer.head_norm.data() + k * d, layer.head_eps, d, x);
        for (int64_t i = 0; i < d; ++i) head[i] = x[i] * c[i] + x[(i + half) % d] * s[i];
        std::copy(head.begin(), head.end(), x);
      }
      for (int64_t k = 0; k < kv_heads_; ++k) {
        const int64_t cache_row = placement.cache_row[r], column = placement.column[r];
        std::copy(row + (query_heads_ + k) * d, row + (query_heads_ + k + 1) * d,
                  key_data + cache_row * keys.stride(0) + k * keys.stride(1) + column * keys.stride(2));
        std::copy(row + (heads + k) * d, row + (heads + k + 1) * d,
                  value_data + cache_row * values.stride(0) + k * values.stride(1) + column * values.stride(2));
      }
    }
  }

  // softmax(q·kᵀ · scaling)·v of each query head over its row's columns first..column. The
  // query heads that share a key/value head go together, so each cached row is read (and,
  // from bf16, widened) once for all of them. Tasks alternate between the first and last
  // rows left: in a prompt pass later rows attend over more columns, and each thread's
  // share of tasks then holds about half the work.
  template <typename T>
  void attend(const float* qkv, int64_t width, const at::Tensor& keys, const at::Tensor& values,
              const Placement& placement, float* attended) const {
    const int64_t d = head_dim_, groups = query_heads_ / kv_heads_;
    const int64_t rows = static_cast<int64_t>(placement.column.size());
    const T* key_data = keys.data_ptr<T>();
    const T* value_data = values.data_ptr<T>();
    int64_t most = 0, work = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t seen = placement.column[r] + 1 - placement.first[r];
      most = std::max(most, seen);
      work += query_heads_ * seen * d;
    }
    // Below 2^15 multiply-adds one thread does it all; above, even one row's three key/value
    // heads go to both (one row, 160 cached tokens: a step 5.09-5.17 ms against 5.31-5.36
    // with the threshold at 2^17).
    const int64_t grain = work < (1 << 15) ? rows * kv_heads_ : 1;
    at::parallel_for(0, rows * kv_heads_, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> scores(groups * most), sums(groups * d), row(d);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t pair = task / kv_heads_, k = task % kv_heads_;
        const int64_t r = pair % 2 == 0 ? pair / 2 : rows - 1 - pair / 2;
        const int64_t first = placement.first[r], seen = placement.column[r] + 1 - first;
        const int64_t cache_row = placement.cache_row[r];
        const Columns<T> columns{key_data + cache_row * keys.stride(0) + k * keys.stride(1) + first * keys.stride(2),
                                 value_data + cache_row * values.stride(0) + k * values.stride(1) + first * values.stride(2),
                                 keys.stride(2), values.stride(2), seen};
        const float* queries = qkv + r * width + k * groups * d;
        float* out = attended + (r * query_heads_ + k * groups) * d;
#if defined(PLAYGROUND_FLOAT_VECTOR)
        if (d % FloatVector::kLanes == 0) {
          float* sc = scores.data();
          switch (d / FloatVector::kLanes) {  // head_dim 16 to 128 in whole vectors
            case 1: attend_heads<1>(columns, queries, groups, sc, out); continue;
            case 2: attend_heads<2>(columns, queries, groups, sc, out); continue;
            case 4: attend_heads<4>(columns, queries, groups, sc, out); continue;
            case 6: attend_heads<6>(columns, queries, groups, sc, out); continue;
            case 8: attend_heads<8>(columns, queries, groups, sc, out); continue;
            case 16: attend_heads<16>(columns, queries, groups, sc, out); continue;
            default: break;
          }
        }
#endif
        attend_heads_scalar(columns, queries, groups, scores.data(), sums.data(), row.data(), out);
      }
    });
  }

  // One row's cached keys and values of one key/value head, from its first real column.
  template <typename T>
  struct Columns {
    const T* key;
    const T* value;
    int64_t key_stride, value_stride, seen;
  };

  // softmax of each query head's scores (groups rows of `seen`), in place. The largest score
  // and the total are taken over kLanes partial results, so all four loops vectorize.
  static void softmax(float* scores, int64_t groups, int64_t seen) {
    for (int64_t g = 0; g < groups; ++g) {
      float* score = scores + g * seen;
      float partial[kLanes];
      std::fill(partial, partial + kLanes, score[0]);
      int64_t c = 0;
      for (; c + kLanes <= seen; c += kLanes)
        for (int j = 0; j < kLanes; ++j) partial[j] = score[c + j] > partial[j] ? score[c + j] : partial[j];
      float top = *std::max_element(partial, partial + kLanes);
      for (; c < seen; ++c) top = std::max(top, score[c]);
      for (c = 0; c < seen; ++c) score[c] = exp_approx(score[c] - top);
      const float inverse = 1.0f / dot_ones(score, seen);
      for (c = 0; c < seen; ++c) score[c] *= inverse;
    }
  }

#if defined(PLAYGROUND_FLOAT_VECTOR)
  // The query heads sharing one key/value head, head_dim = C vectors: each cached key is
  // widened into registers once for all of them; each head's weighted values add up in C
  // registers (the value rows, a few KB, are read from L1 again for each head).
  template <int C, typename T>
  void attend_heads(const Columns<T>& columns, const float* queries, int64_t groups, float* scores,
                    float* out) const {
    using V = FloatVector;
    constexpr int L = V::kLanes;
    const int64_t seen = columns.seen;
    int64_t c = 0;
#if defined(__AVX512F__)
    if constexpr (C <= 4) {  // four columns' keys fit in registers: one reduction for their four sums
      for (; c + 4 <= seen; c += 4) {
        V::Type key[4][C];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < C; ++j) key[i][j] = V::widen(columns.key + (c + i) * columns.key_stride + j * L);
        for (int64_t g = 0; g < groups; ++g) {
          V::Type acc[4];
          for (int i = 0; i < 4; ++i) {
            acc[i] = V::zero();
            for (int j = 0; j < C; ++j) acc[i] = V::fmadd(V::floats(queries + (g * C + j) * L), key[i][j], acc[i]);
          }
          _mm_storeu_ps(scores + g * seen + c, _mm_mul_ps(sum4(acc[0], acc[1], acc[2], acc[3]), _mm_set1_ps(scaling_)));
        }
      }
    }
#endif
    for (; c < seen; ++c) {
      V::Type key[C];
      for (int j = 0; j < C; ++j) key[j] = V::widen(columns.key + c * columns.key_stride + j * L);
      for (int64_t g = 0; g < groups; ++g) {
        V::Type acc = V::zero();
        for (int j = 0; j < C; ++j) acc = V::fmadd(V::floats(queries + (g * C + j) * L), key[j], acc);
        scores[g * seen + c] = V::sum(acc) * scaling_;
      }
    }
    softmax(scores, groups, seen);
    constexpr int kHeads = std::max(1, std::min(4, 12 / C));  // heads per pass: their sums stay in registers
    for (int64_t g = 0; g < groups; g += kHeads) {
      switch (std::min<int64_t>(kHeads, groups - g)) {
        case 1: weigh_values<C, 1>(columns, scores + g * seen, out + g * C * L); break;
        case 2: weigh_values<C, std::min(2, kHeads)>(columns, scores + g * seen, out + g * C * L); break;
        case 3: weigh_values<C, std::min(3, kHeads)>(columns, scores + g * seen, out + g * C * L); break;
        default: weigh_values<C, kHeads>(columns, scores + g * seen, out + g * C * L); break;
      }
    }
  }

  // out[h] = Σ_c p[h][c] · value[c] for H heads (probabilities H rows of columns.seen): each
  // cached value row is widened once for all H heads.
  template <int C, int H, typename T>
  static void weigh_values(const Columns<T>& columns, const float* p, float* out) {
    using V = FloatVector;
    constexpr int L = V::kLanes;
    const int64_t seen = columns.seen;
    V::Type acc[H][C];
    for (int h = 0; h < H; ++h)
      for (int j = 0; j < C; ++j) acc[h][j] = V::zero();
    for (int64_t c = 0; c < seen; ++c) {
      V::Type value[C];
      for (int j = 0; j < C; ++j) value[j] = V::widen(columns.value + c * columns.value_stride + j * L);
      for (int h = 0; h < H; ++h) {
        const V::Type weight = V::broadcast(p[h * seen + c]);
        for (int j = 0; j < C; ++j) acc[h][j] = V::fmadd(weight, value[j], acc[h][j]);
      }
    }
    for (int h = 0; h < H; ++h)
      for (int j = 0; j < C; ++j) V::store(out + (h * C + j) * L, acc[h][j]);
  }
#endif

  // The same for any head_dim, one cached row at a time through `row`.
  template <typename T>
  void attend_heads_scalar(const Columns<T>& columns, const float* queries, int64_t groups, float* scores,
                           float* sums, float* row, float* out) const {
    const int64_t d = head_dim_, seen = columns.seen;
    for (int64_t c = 0; c < seen; ++c) {
      const float* cached = widened(columns.key + c * columns.key_stride, row, d);
      for (int64_t g = 0; g < groups; ++g) scores[g * seen + c] = head_dot(queries + g * d, cached, d) * scaling_;
    }
    softmax(scores, groups, seen);
    std::fill(sums, sums + groups * d, 0.f);
    for (int64_t c = 0; c < seen; ++c) {
      const float* cached = widened(columns.value + c * columns.value_stride, row, d);
      for (int64_t g = 0; g < groups; ++g) {
        const float p = scores[g * seen + c];
        float* sum = sums + g * d;
        for (int64_t i = 0; i < d; ++i) sum[i] += p * cached[i];
      }
    }
    std::copy(sums, sums + groups * d, out);
  }

  // A cached row as floats: itself when float32, else widened into `buffer`.
  static const float* widened(const float* src, float*, int64_t) { return src; }
  static const float* widened(const at::BFloat16* src, float* buffer, int64_t n) {
    for (int64_t i = 0; i < n; ++i) buffer[i] = static_cast<float>(src[i]);
    return buffer;
  }

  // q·k for one head: one vector of partial sums and one reduction where the head's size
  // allows (64 and 128 do), else `dot`.
  static float head_dot(const float* q, const float* k, int64_t d) {
#if defined(PLAYGROUND_FLOAT_VECTOR)
    using V = FloatVector;
    if (d % V::kLanes == 0) {
      V::Type acc = V::zero();
      for (int64_t i = 0; i < d; i += V::kLanes) acc = V::fmadd(V::floats(q + i), V::floats(k + i), acc);
      return V::sum(acc);
    }
#endif
    return dot(q, k, d);
  }


  int64_t hidden_, query_heads_, kv_heads_, head_dim_, intermediate_;
  float eps_, scaling_;
  std::vector<Layer> layers_;
  std::vector<float> final_norm_;
  float final_eps_ = 0.f;
  Projection head_;
  bool has_head_ = false;
};

at::Tensor apply_alone(const Projection& p, const at::Tensor& x) {
  const int64_t k = p.inputs();
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous() && x.size(1) == k,
              "x: contiguous float32 [rows, k]");
  at::Tensor out = at::empty({x.size(0), p.outputs()}, x.options());
  pybind11::gil_scoped_release no_gil;
  p.apply(x.data_ptr<float>(), x.size(0), x.size(1), out.data_ptr<float>());
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Decoder>(m, "Decoder")
      .def(pybind11::init<int64_t, int64_t, int64_t, int64_t, int64_t, double, double>())
      .def("add_layer", &Decoder::add_layer)
      .def("step", &Decoder::step)
      .def("prompt", &Decoder::prompt)
      .def("set_head", &Decoder::set_head)
      .def("has_head", &Decoder::has_head)
      .def("head_int16_rows", &Decoder::head_int16_rows)
      .def("logits", &Decoder::logits);
  // The int8 kernel alone (tests, benchmarks): float32 x [rows, k] -> [rows, n].
  m.def("int8_matmul", [](at::Tensor x, at::Tensor weight, at::Tensor scale) {
    return apply_alone(Projection::make(kInt8, weight, scale, 0, at::Tensor(), 0), x);
  });
  // The int16-rows int8 kernel alone: the same arguments, n a multiple of 16 and k of 32.
  m.def("int8_int16_matmul", [](at::Tensor x, at::Tensor weight, at::Tensor scale) {
    return apply_alone(Projection::make(kInt8Int16, weight, scale, 0, at::Tensor(), 0), x);
  });
  // The AMX int4 kernel alone: float32 x [rows, k], tile_layout's weight and scale_low.
  m.def("int4_tiles_matmul", [](at::Tensor x, at::Tensor weight, at::Tensor scale_low) {
    return apply_alone(Projection::make(kInt4Tiles, weight, scale_low, kTileGroup, at::Tensor(), 0), x);
  });
  // The int16-rows int4 kernel alone: the same layout, the rows rounded to int16 per group.
  m.def("int4_int16_matmul", [](at::Tensor x, at::Tensor weight, at::Tensor scale_low) {
    return apply_alone(Projection::make(kInt4Int16, weight, scale_low, kTileGroup, at::Tensor(), 0), x);
  });
  // Each row's argmax (-1 where a NaN is) and top k (empty where a NaN is): modules/engine/sampling.py.
  m.def("argmax_rows", &argmax_rows);
  m.def("top_rows", &top_rows);
  m.def("amx_ready", &amx_ready);
  m.def("int16_rows_ready", &int16_rows_ready);
  m.def("int16_rows_isa", &int16_rows_isa);
}
