// The row kernels of the fused cross-entropy + GSC path on CPU (gsc_jax/_fused.py), two XLA FFI
// custom calls on float32 or bfloat16 logits (bfloat16 rows are converted to float32 a row at a
// time, in cache).
//
// GscRowStatistics, the forward pass. For each row z of length C (masked classes already -inf),
// with m = max_i z_i (0 if the row is all -inf) and e_i = exp(z_i - m):
//   exps[i]      = e_i                                   [rows, C]  (the backward pass's residual)
//   row_max      = m                                     [rows, 1]
//   total        = sum_i e_i                             [rows, 1]
//   weighted     = sum_i e_i (z_i - m)  (terms with e_i = 0 count 0)  [rows, 1]
//   top_values   = the top_c largest z_i, descending     [rows, top_c]
//   top_indices  = their indices; equal values in increasing index order, as jax.lax.top_k; an
//                  entry past the row's finite values is (-inf, C).
// Both sweeps over a row run while it is in cache: block maxima, from which the top_c-th largest
// bounds the values that can enter the top c (the few that reach it are packed and inserted
// without branches), then a sweep of exp with two sums. Rows of at most 64 values go eight at a
// time, one row per vector lane.
//
// GscRowGradient, the backward pass: exps * (a - b (z - m)) per entry with per-row a, b, then
// the row's top-c entries set and its label entry added (see RowGradient), in exps' buffer.
//
// Rows are split over XLA's intra-op thread pool. Built by gsc_jax.cpu_kernel.enable() with the
// system C++ compiler (gsc_jax/cpu_kernel/_build.py).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <type_traits>

#ifdef __AVX__
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 8;
constexpr int64_t kMaxBlocks = 1024;
constexpr int64_t kMaxTopC = 64;
constexpr int64_t kChunk = 1024;
constexpr int64_t kMinElementsPerTask = 1 << 15;

// Lower end of ExpNonPositive's range: below it exp(x) < 2^-126.9, returned as 0.
constexpr float kExpFloor = -88.0f;

// kLanes floats or int32s (GCC/Clang vector extension, any target): one row per lane in
// ShortRows, a block's vertical maxima in BlockMax.
typedef float FloatLanes __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IntLanes __attribute__((vector_size(kLanes * sizeof(int32_t))));

typedef uint32_t UintLanes __attribute__((vector_size(kLanes * sizeof(uint32_t))));

// A float's bits as an unsigned integer (wrapping arithmetic, no overflow), and back.
inline uint32_t BitsOf(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}
inline UintLanes BitsOf(FloatLanes x) { return reinterpret_cast<UintLanes>(x); }
inline float FromBits(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}
inline FloatLanes FromBits(UintLanes bits) { return reinterpret_cast<FloatLanes>(bits); }
// max(a, b) as std::max computes it: a NaN in `a` is kept (a NaN logit makes its row NaN, as on
// XLA's path).
inline float Max(float a, float b) { return std::max(a, b); }
inline FloatLanes Max(FloatLanes a, FloatLanes b) { return a < b ? b : a; }

// exp(x) for x <= 0 given max(x, kExpFloor), on a float or on FloatLanes: Cephes' expf
// polynomial (about 1 ulp) times 2^n. n = round(x / log 2) comes from the rounding of
// x / log 2 + 1.5 * 2^23, whose low bits are n; at x = kExpFloor n is -127 and 2^n's bits are 0,
// so the result is exactly 0 there (and for -inf).
template <typename Float>
inline Float ExpNonPositive(Float clamped) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  const Float rounded = clamped * 1.44269504088896341f + kRound;
  const Float n = rounded - kRound;
  const Float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  Float p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // BitsOf(rounded) = BitsOf(kRound) + n; the exponent field of 2^n holds n + 127.
  return p * FromBits((BitsOf(rounded) - 0x4B400000u + 127u) << 23);
}

// Inserts `value` into descending top[0:top_c] (values only) without branches: a chain of
// compare-exchanges.
template <int64_t kTopC>
inline void InsertValue(float value, int64_t top_c, float* top) {
  const int64_t count = kTopC > 0 ? kTopC : top_c;
  for (int64_t k = 0; k < count; ++k) {
    const float larger = std::max(top[k], value);
    value = std::min(top[k], value);
    top[k] = larger;
  }
}

// One step of an insertion in (value descending, index ascending) order, jax.lax.top_k's: the
// first of (value, index) and (top_value, top_index) stays in top_*, the other is carried on.
// Without branches, on a float and int32 or lane by lane on FloatLanes and IntLanes.
inline bool Ahead(float value, int32_t index, float other_value, int32_t other_index) {
  return (value > other_value) | ((value == other_value) & (index < other_index));
}
inline IntLanes Ahead(FloatLanes value, IntLanes index, FloatLanes other_value,
                      IntLanes other_index) {
  return (value > other_value) | ((value == other_value) & (index < other_index));
}

template <typename Float, typename Int>
inline void CompareExchange(Float& value, Int& index, Float& top_value, Int& top_index) {
  const auto ahead = Ahead(value, index, top_value, top_index);
  const Float kept_value = ahead ? value : top_value;
  const Int kept_index = ahead ? index : top_index;
  value = ahead ? top_value : value;
  index = ahead ? top_index : index;
  top_value = kept_value;
  top_index = kept_index;
}

// Inserts (value, index) into top_values/top_indices[0:top_c], ordered by value descending, then
// index ascending (jax.lax.top_k's order): compare-exchanges in that total order, no branches.
template <int64_t kTopC>
inline void InsertPair(float value, int32_t index, int64_t top_c, float* top_values,
                       int32_t* top_indices) {
  const int64_t count = kTopC > 0 ? kTopC : top_c;
  // Values arrive in increasing index order, so one not above the last entry stays out; for a
  // long list (top_c not fixed) this test saves the chain.
  if (kTopC == 0 && !(value > top_values[count - 1])) return;
  for (int64_t k = 0; k < count; ++k) CompareExchange(value, index, top_values[k], top_indices[k]);
}

// Values per block for rows of num_classes: ~sqrt(num_classes), a multiple of kLanes (rows of up
// to 256 values: kLanes, so that top_c <= 8 leaves at least top_c blocks).
inline int64_t BlockSize(int64_t num_classes) {
  if (num_classes <= 256) return 8;
  return num_classes <= 4096 ? 32 : (num_classes <= 32768 ? 64 : 128);
}

// max of `size` values (a multiple of kLanes): vertical maxima in FloatLanes, then across lanes.
inline float BlockMax(const float* block, int64_t size) {
  FloatLanes maxima;
  std::memcpy(&maxima, block, sizeof(maxima));
  for (int64_t j = kLanes; j < size; j += kLanes) {
    FloatLanes values;
    std::memcpy(&values, block + j, sizeof(values));
    maxima = maxima > values ? maxima : values;
  }
  float value = maxima[0];
  for (int64_t l = 1; l < kLanes; ++l) value = std::max(value, maxima[l]);
  return value;
}

// Values a row keeps as top-c candidates between insertions: at least the values of one block
// plus one vector's overrun.
constexpr int64_t kCandidates = 256;

#ifdef __AVX2__
// For each 8-bit mask, the lanes whose bit is set, first, in order: a permutation for
// _mm256_permutevar8x32 that packs the selected lanes of a vector to its front.
struct PackTable {
  alignas(32) int32_t lanes[256][8];
  PackTable() {
    for (int mask = 0; mask < 256; ++mask) {
      int32_t count = 0;
      for (int32_t lane = 0; lane < 8; ++lane) {
        if (mask & (1 << lane)) lanes[mask][count++] = lane;
      }
      while (count < 8) lanes[mask][count++] = 0;
    }
  }
};
const PackTable kPackTable;
#endif

// Appends the values of z[begin:end) that are >= lower and > -inf, with their indices, in index
// order, to values/indices[count:]; returns the new count. No branch depends on the data, so the
// few values that pass cost no mispredictions. Needs end - begin + kLanes free slots.
inline int64_t AppendAtLeast(const float* z, int64_t begin, int64_t end, float lower,
                             float* values, int32_t* indices, int64_t count) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  int64_t i = begin;
#ifdef __AVX2__
  const __m256 bound = _mm256_set1_ps(lower);
  const __m256 floor = _mm256_set1_ps(neg_inf);
  const __m256i lane_ids = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (; i + 8 <= end; i += 8) {
    const __m256 block = _mm256_loadu_ps(z + i);
    const int mask = _mm256_movemask_ps(
        _mm256_and_ps(_mm256_cmp_ps(block, bound, _CMP_GE_OQ), _mm256_cmp_ps(block, floor, _CMP_GT_OQ)));
    const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPackTable.lanes[mask]));
    const __m256i ids = _mm256_add_epi32(lane_ids, _mm256_set1_epi32(static_cast<int32_t>(i)));
    _mm256_storeu_ps(values + count, _mm256_permutevar8x32_ps(block, order));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(indices + count),
                        _mm256_permutevar8x32_epi32(ids, order));
    count += __builtin_popcount(mask);
  }
#endif
  for (; i < end; ++i) {
    values[count] = z[i];
    indices[count] = static_cast<int32_t>(i);
    count += (z[i] >= lower) & (z[i] > neg_inf);
  }
  return count;
}

// Top-c of a row with lax.top_k's order (kTopC: top_c fixed at compile time, or 0). Within each
// run of up to kMaxBlocks blocks, only values at least the top_c-th largest block maximum can
// enter (top_c blocks hold values at least that large), so only blocks reaching it are read again.
template <int64_t kTopC>
void TopC(const float* z, int64_t num_classes, int64_t top_c, float* top_values,
          int32_t* top_indices) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t k = 0; k < top_c; ++k) {
    top_values[k] = neg_inf;
    top_indices[k] = static_cast<int32_t>(num_classes);
  }
  // Blocks of block_size values; the last one may be shorter.
  const int64_t block_size = BlockSize(num_classes);
  const int64_t num_blocks = (num_classes + block_size - 1) / block_size;
  float block_max[kMaxBlocks];
  int32_t visited[kMaxBlocks];
  float largest_maxima[kMaxTopC];
  float candidate_values[kCandidates];
  int32_t candidate_indices[kCandidates];
  for (int64_t start = 0; start < num_blocks; start += kMaxBlocks) {
    const int64_t count = std::min(kMaxBlocks, num_blocks - start);
    for (int64_t b = 0; b < count; ++b) {
      const int64_t offset = (start + b) * block_size;
      if (offset + block_size <= num_classes) {
        block_max[b] = BlockMax(z + offset, block_size);
      } else {
        block_max[b] = z[offset];
        for (int64_t i = offset + 1; i < num_classes; ++i) block_max[b] = std::max(block_max[b], z[i]);
      }
    }
    float lower = neg_inf;
    if (top_c <= kMaxTopC) {
      for (int64_t k = 0; k < top_c; ++k) largest_maxima[k] = neg_inf;
      for (int64_t b = 0; b < count; ++b) InsertValue<kTopC>(block_max[b], top_c, largest_maxima);
      lower = largest_maxima[top_c - 1];
    }
    lower = std::max(lower, top_values[top_c - 1]);
    // The blocks that reach `lower`, listed without branches, then their values that do.
    int64_t num_visited = 0;
    for (int64_t b = 0; b < count; ++b) {
      visited[num_visited] = static_cast<int32_t>(b);
      num_visited += block_max[b] >= lower;
    }
    int64_t num_candidates = 0;
    for (int64_t v = 0; v < num_visited; ++v) {
      const int64_t offset = (start + visited[v]) * block_size;
      num_candidates = AppendAtLeast(z, offset, std::min(num_classes, offset + block_size), lower,
                                     candidate_values, candidate_indices, num_candidates);
      if (num_candidates > kCandidates - block_size - kLanes || v + 1 == num_visited) {
        for (int64_t k = 0; k < num_candidates; ++k) {
          InsertPair<kTopC>(candidate_values[k], candidate_indices[k], top_c, top_values,
                            top_indices);
        }
        num_candidates = 0;
      }
    }
  }
}

void TopCAnyCount(const float* z, int64_t num_classes, int64_t top_c, float* top_values,
                  int32_t* top_indices) {
  switch (top_c) {
    case 1: return TopC<1>(z, num_classes, top_c, top_values, top_indices);
    case 2: return TopC<2>(z, num_classes, top_c, top_values, top_indices);
    case 3: return TopC<3>(z, num_classes, top_c, top_values, top_indices);
    case 4: return TopC<4>(z, num_classes, top_c, top_values, top_indices);
    case 5: return TopC<5>(z, num_classes, top_c, top_values, top_indices);
    case 6: return TopC<6>(z, num_classes, top_c, top_values, top_indices);
    case 7: return TopC<7>(z, num_classes, top_c, top_values, top_indices);
    case 8: return TopC<8>(z, num_classes, top_c, top_values, top_indices);
    default: return TopC<0>(z, num_classes, top_c, top_values, top_indices);
  }
}

// bfloat16 logits, read as their bits: the upper half of a float32's.
struct BFloat16 {
  uint16_t bits;
};

// z[0:n) as floats: z itself for float input, else converted into `scratch` (n floats).
inline const float* AsFloats(const float* z, int64_t n, float* scratch) { return z; }
inline const float* AsFloats(const BFloat16* z, int64_t n, float* scratch) {
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t bits = static_cast<uint32_t>(z[j].bits) << 16;
    std::memcpy(scratch + j, &bits, sizeof(bits));
  }
  return scratch;
}

// Room for AsFloats of rows of num_classes values: none for float input.
template <typename Input>
inline std::unique_ptr<float[]> Scratch(int64_t num_values) {
  return std::is_same<Input, float>::value ? nullptr : std::make_unique<float[]>(num_values);
}

void Row(const float* z, int64_t num_classes, int64_t top_c, float* exps, float* row_max,
         float* total, float* weighted, float* top_values, int32_t* top_indices) {
  TopCAnyCount(z, num_classes, top_c, top_values, top_indices);
  const float m = top_values[0] > -std::numeric_limits<float>::infinity() ? top_values[0] : 0.0f;
  // Sums over chunks of kChunk values (vectorised, in float) are added up in double.
  double sum = 0.0;
  double weighted_sum = 0.0;
  for (int64_t start = 0; start < num_classes; start += kChunk) {
    const int64_t end = std::min(num_classes, start + kChunk);
    float chunk_sum = 0.0f;
    float chunk_weighted = 0.0f;
#pragma omp simd reduction(+ : chunk_sum, chunk_weighted)
    for (int64_t j = start; j < end; ++j) {
      const float shifted = std::max(z[j] - m, kExpFloor);  // -inf (masked) included: e = 0
      const float e = ExpNonPositive(shifted);
      exps[j] = e;
      chunk_sum += e;
      chunk_weighted += e * shifted;
    }
    sum += chunk_sum;
    weighted_sum += chunk_weighted;
  }
  *row_max = m;
  *total = static_cast<float>(sum);
  *weighted = static_cast<float>(weighted_sum);
}

// Rows of at most kShortRow values go kLanes at a time, one row per lane, through ShortRows: the
// per-row work (a few values each) then runs on whole vectors.
constexpr int64_t kShortRow = 64;

// `Row` for kLanes rows of num_classes <= kShortRow values with top_c = kTopC (1 to 8): the same
// top-c insertion (compare-exchanges in lax.top_k's order), exps and sums, lane by lane.
template <int64_t kTopC>
void ShortRows(const float* z, int64_t num_classes, float* exps, float* row_max, float* total,
               float* weighted, float* top_values, int32_t* top_indices) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  FloatLanes columns[kShortRow];  // columns[j][l] = z[l * num_classes + j]
  for (int64_t l = 0; l < kLanes; ++l) {
    for (int64_t j = 0; j < num_classes; ++j) columns[j][l] = z[l * num_classes + j];
  }
  FloatLanes values[kTopC];
  IntLanes indices[kTopC];
  for (int64_t k = 0; k < kTopC; ++k) {
    values[k] = FloatLanes{} + neg_inf;
    indices[k] = IntLanes{} + static_cast<int32_t>(num_classes);
  }
  for (int64_t j = 0; j < num_classes; ++j) {
    FloatLanes value = columns[j];
    // -inf never enters: behind the (-inf, num_classes) entries it starts from.
    IntLanes index = value > neg_inf ? IntLanes{} + static_cast<int32_t>(j)
                                     : IntLanes{} + std::numeric_limits<int32_t>::max();
    for (int64_t k = 0; k < kTopC; ++k) CompareExchange(value, index, values[k], indices[k]);
  }
  const FloatLanes m = values[0] > neg_inf ? values[0] : FloatLanes{};
  FloatLanes sum = {};
  FloatLanes weighted_sum = {};
  for (int64_t j = 0; j < num_classes; ++j) {
    const FloatLanes shifted = Max(columns[j] - m, FloatLanes{} + kExpFloor);
    const FloatLanes e = ExpNonPositive(shifted);
    columns[j] = e;
    sum += e;
    weighted_sum += e * shifted;
  }
  for (int64_t l = 0; l < kLanes; ++l) {
    for (int64_t j = 0; j < num_classes; ++j) exps[l * num_classes + j] = columns[j][l];
    row_max[l] = m[l];
    total[l] = sum[l];
    weighted[l] = weighted_sum[l];
    for (int64_t k = 0; k < kTopC; ++k) {
      top_values[l * kTopC + k] = values[k][l];
      top_indices[l * kTopC + k] = indices[k][l];
    }
  }
}

// Rows [begin, end) of the arrays RowStatistics hands out: ShortRows where it applies, else Row.
template <typename Input>
void Rows(const Input* z, int64_t num_classes, int64_t top_c, int64_t begin, int64_t end,
          float* exps, float* row_max, float* total, float* weighted, float* top_values,
          int32_t* top_indices) {
  int64_t r = begin;
  if (num_classes <= kShortRow && top_c <= 8) {
    float scratch[kLanes * kShortRow];
    auto short_rows = [&](auto top_c_constant) {
      constexpr int64_t kTopC = decltype(top_c_constant)::value;
      for (; r + kLanes <= end; r += kLanes) {
        ShortRows<kTopC>(AsFloats(z + r * num_classes, kLanes * num_classes, scratch),
                         num_classes, exps + r * num_classes, row_max + r, total + r,
                         weighted + r, top_values + r * kTopC, top_indices + r * kTopC);
      }
    };
    switch (top_c) {
      case 1: short_rows(std::integral_constant<int64_t, 1>()); break;
      case 2: short_rows(std::integral_constant<int64_t, 2>()); break;
      case 3: short_rows(std::integral_constant<int64_t, 3>()); break;
      case 4: short_rows(std::integral_constant<int64_t, 4>()); break;
      case 5: short_rows(std::integral_constant<int64_t, 5>()); break;
      case 6: short_rows(std::integral_constant<int64_t, 6>()); break;
      case 7: short_rows(std::integral_constant<int64_t, 7>()); break;
      default: short_rows(std::integral_constant<int64_t, 8>()); break;
    }
  }
  const auto scratch = Scratch<Input>(num_classes);
  for (; r < end; ++r) {
    Row(AsFloats(z + r * num_classes, num_classes, scratch.get()), num_classes, top_c,
        exps + r * num_classes, row_max + r, total + r, weighted + r, top_values + r * top_c,
        top_indices + r * top_c);
  }
}

struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// Runs run_task(0), ..., run_task(num_tasks - 1) on the caller and XLA's intra-op threads.
template <typename Task>
void ParallelFor(ffi::ThreadPool& thread_pool, int64_t num_tasks, Task run_task) {
  const int64_t helpers = std::min<int64_t>(thread_pool.num_threads(), num_tasks - 1);
  if (helpers <= 0) {
    for (int64_t task = 0; task < num_tasks; ++task) run_task(task);
    return;
  }
  // Tasks are claimed from a shared counter, so the caller finishes the work even if a helper
  // starts late; a late helper finds nothing to claim and touches only `progress`.
  auto progress = std::make_shared<Progress>();
  auto work = [progress, run_task, num_tasks]() {
    for (int64_t task; (task = progress->next.fetch_add(1)) < num_tasks;) {
      run_task(task);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t h = 0; h < helpers; ++h) thread_pool.Schedule(decltype(work)(work));
  work();
  while (progress->done.load(std::memory_order_acquire) < num_tasks) std::this_thread::yield();
}

// Rows per task: about kMinElementsPerTask values, whole groups of kLanes rows (for ShortRows).
inline int64_t RowsPerTask(int64_t num_classes) {
  return (std::max<int64_t>(1, kMinElementsPerTask / num_classes) + kLanes - 1) / kLanes * kLanes;
}

// run(z) with z the logits' data as const float* or const BFloat16*; an error for other types.
template <typename Run>
ffi::Error WithLogits(const ffi::AnyBuffer& logits, Run run) {
  switch (logits.element_type()) {
    case ffi::DataType::F32: run(static_cast<const float*>(logits.untyped_data())); break;
    case ffi::DataType::BF16: run(static_cast<const BFloat16*>(logits.untyped_data())); break;
    default: return ffi::Error::InvalidArgument("logits must be float32 or bfloat16");
  }
  return ffi::Error::Success();
}

ffi::Error RowStatistics(ffi::ThreadPool thread_pool, ffi::AnyBuffer logits,
                         ffi::ResultBuffer<ffi::F32> exps, ffi::ResultBuffer<ffi::F32> row_max,
                         ffi::ResultBuffer<ffi::F32> total, ffi::ResultBuffer<ffi::F32> weighted,
                         ffi::ResultBuffer<ffi::F32> top_values,
                         ffi::ResultBuffer<ffi::S32> top_indices, int64_t top_c) {
  const auto dims = logits.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("logits must have a class axis");
  const int64_t num_classes = dims[dims.size() - 1];
  if (num_classes == 0) return ffi::Error::Success();
  if (top_c < 1 || top_c > num_classes) {
    return ffi::Error::InvalidArgument("top_c must be in [1, num_classes]");
  }
  const int64_t num_rows = static_cast<int64_t>(logits.element_count()) / num_classes;
  float* e = exps->typed_data();
  float* m = row_max->typed_data();
  float* s = total->typed_data();
  float* w = weighted->typed_data();
  float* tv = top_values->typed_data();
  int32_t* ti = top_indices->typed_data();
  const int64_t rows_per_task = RowsPerTask(num_classes);
  const int64_t num_tasks = (num_rows + rows_per_task - 1) / rows_per_task;
  auto run = [&](auto* z) {
    ParallelFor(thread_pool, num_tasks, [=](int64_t task) {
      Rows(z, num_classes, top_c, task * rows_per_task,
           std::min(num_rows, (task + 1) * rows_per_task), e, m, s, w, tv, ti);
    });
  };
  return WithLogits(logits, run);
}

// The backward pass of gsc_jax/_fused.py for one row (see RowGradient).
void GradientRow(const float* z, const float* exps, float scale, float slope, float m,
                 const int32_t* entry_indices, const float* entries, int64_t num_entries,
                 int32_t label, float label_entry, int64_t num_classes, float* gradient) {
#pragma omp simd
  for (int64_t j = 0; j < num_classes; ++j) {
    gradient[j] = exps[j] * (scale - slope * std::max(z[j] - m, kExpFloor));
  }
  for (int64_t k = 0; k < num_entries; ++k) {
    const int32_t index = entry_indices[k];
    if (index >= 0 && index < num_classes) gradient[index] = entries[k];
  }
  if (label >= 0 && label < num_classes) gradient[label] += label_entry;
}

// Per row, with e = exps and every [rows, 1] operand read at its row:
//   gradient[i] = e_i * (scale - slope * (z_i - m))      (z_i - m floored at kExpFloor: e_i = 0)
// then gradient[entry_indices[k]] = entries[k] for the row's num_entries entries, then
// gradient[label] += label_entry. Indices outside [0, num_classes) are skipped. gradient may be
// exps' buffer (aliased by the caller).
ffi::Error RowGradient(ffi::ThreadPool thread_pool, ffi::AnyBuffer logits,
                       ffi::Buffer<ffi::F32> exps, ffi::Buffer<ffi::F32> scale,
                       ffi::Buffer<ffi::F32> slope, ffi::Buffer<ffi::F32> row_max,
                       ffi::Buffer<ffi::S32> entry_indices, ffi::Buffer<ffi::F32> entries,
                       ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> label_entries,
                       ffi::ResultBuffer<ffi::F32> gradient) {
  const auto dims = logits.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("logits must have a class axis");
  const int64_t num_classes = dims[dims.size() - 1];
  if (num_classes == 0) return ffi::Error::Success();
  const int64_t num_rows = static_cast<int64_t>(logits.element_count()) / num_classes;
  const auto entry_dims = entry_indices.dimensions();
  const int64_t num_entries = entry_dims.size() == 0 ? 0 : entry_dims[entry_dims.size() - 1];
  if (static_cast<int64_t>(scale.element_count()) != num_rows ||
      static_cast<int64_t>(slope.element_count()) != num_rows ||
      static_cast<int64_t>(row_max.element_count()) != num_rows ||
      static_cast<int64_t>(labels.element_count()) != num_rows ||
      static_cast<int64_t>(label_entries.element_count()) != num_rows ||
      static_cast<int64_t>(entry_indices.element_count()) != num_rows * num_entries ||
      static_cast<int64_t>(entries.element_count()) != num_rows * num_entries) {
    return ffi::Error::InvalidArgument("row operands must have one value (entries: a row) a row");
  }
  const float* e = exps.typed_data();
  const float* a = scale.typed_data();
  const float* b = slope.typed_data();
  const float* m = row_max.typed_data();
  const int32_t* ei = entry_indices.typed_data();
  const float* ev = entries.typed_data();
  const int32_t* y = labels.typed_data();
  const float* yv = label_entries.typed_data();
  float* g = gradient->typed_data();
  const int64_t rows_per_task = RowsPerTask(num_classes);
  const int64_t num_tasks = (num_rows + rows_per_task - 1) / rows_per_task;
  auto run = [&](auto* z) {
    using Input = std::remove_const_t<std::remove_pointer_t<decltype(z)>>;
    ParallelFor(thread_pool, num_tasks, [=](int64_t task) {
      const auto scratch = Scratch<Input>(num_classes);
      const int64_t end = std::min(num_rows, (task + 1) * rows_per_task);
      for (int64_t r = task * rows_per_task; r < end; ++r) {
        GradientRow(AsFloats(z + r * num_classes, num_classes, scratch.get()),
                    e + r * num_classes, a[r], b[r], m[r], ei + r * num_entries,
                    ev + r * num_entries, num_entries, y[r], yv[r], num_classes,
                    g + r * num_classes);
      }
    });
  };
  return WithLogits(logits, run);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GscRowStatistics, RowStatistics,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // logits: float32 or bfloat16
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("top_c"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GscRowGradient, RowGradient,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // logits: float32 or bfloat16
                                  .Arg<ffi::Buffer<ffi::F32>>()  // exps
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // slope
                                  .Arg<ffi::Buffer<ffi::F32>>()  // row_max
                                  .Arg<ffi::Buffer<ffi::S32>>()  // entry_indices
                                  .Arg<ffi::Buffer<ffi::F32>>()  // entries
                                  .Arg<ffi::Buffer<ffi::S32>>()  // labels
                                  .Arg<ffi::Buffer<ffi::F32>>()  // label_entries
                                  .Ret<ffi::Buffer<ffi::F32>>());
