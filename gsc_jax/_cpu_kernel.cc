// One pass per row of float32 logits: everything cross-entropy + GSC needs (gsc_jax/_fused.py).
//
// For each row z of length C (masked classes already -inf), with m = max_i z_i (0 if the row is
// all -inf) and e_i = exp(z_i - m):
//   exps[i]      = e_i                                   [rows, C]  (the backward pass's residual)
//   row_max      = m                                     [rows, 1]
//   total        = sum_i e_i                             [rows, 1]
//   weighted     = sum_i e_i (z_i - m)  (terms with e_i = 0 count 0)  [rows, 1]
//   top_values   = the top_c largest z_i, descending     [rows, top_c]
//   top_indices  = their indices; equal values in increasing index order, as jax.lax.top_k; an
//                  entry past the row's finite values is (-inf, C).
// Both sweeps over a row run while it is in cache: block maxima (then an insertion sort over the
// few blocks that can hold the top values) and a sweep of exp with two sums.
// Rows are split over XLA's intra-op thread pool.
//
// Built on first use by gsc_jax/_cpu_kernel.py with the system C++ compiler; see there.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>

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

// exp(x) for x <= 88, Cephes' expf polynomial (about 1 ulp); 0 below -87.3 (and for -inf).
inline float ExpNonPositive(float x) {
  const float clamped = std::min(std::max(x, -87.3f), 88.0f);
  const float n = std::floor(clamped * 1.44269504088896341f + 0.5f);
  const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? 0.0f : p * scale;
}

inline void Insert(float value, int32_t index, int64_t top_c, float* top_values,
                   int32_t* top_indices) {
  if (!(value > top_values[top_c - 1])) return;  // ties keep the earlier index
  int64_t position = top_c - 1;
  while (position > 0 && value > top_values[position - 1]) {
    top_values[position] = top_values[position - 1];
    top_indices[position] = top_indices[position - 1];
    --position;
  }
  top_values[position] = value;
  top_indices[position] = index;
}

// Values per block for rows of num_classes: ~sqrt(num_classes), a multiple of kLanes.
inline int64_t BlockSize(int64_t num_classes) {
  return num_classes <= 4096 ? 32 : (num_classes <= 32768 ? 64 : 128);
}

// max of `size` values (a multiple of kLanes): vertical maxima in a kLanes-wide vector (GCC/Clang
// vector extension, any target), then across its lanes.
inline float BlockMax(const float* block, int64_t size) {
  typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
  Lanes maxima;
  std::memcpy(&maxima, block, sizeof(maxima));
  for (int64_t j = kLanes; j < size; j += kLanes) {
    Lanes values;
    std::memcpy(&values, block + j, sizeof(values));
    maxima = maxima > values ? maxima : values;
  }
  float value = maxima[0];
  for (int64_t l = 1; l < kLanes; ++l) value = std::max(value, maxima[l]);
  return value;
}

// The top_c-th largest of values[0:n] (-inf if n < top_c); top_c <= kMaxTopC.
float KthLargest(const float* values, int64_t n, int64_t top_c) {
  float largest[kMaxTopC];
  int32_t unused_indices[kMaxTopC];
  for (int64_t k = 0; k < top_c; ++k) largest[k] = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    Insert(values[i], static_cast<int32_t>(i), top_c, largest, unused_indices);
  }
  return largest[top_c - 1];
}

// Inserts the values of z[begin:end] that are >= lower, in index order. Below `lower` a value has
// top_c larger ones (block maxima) and cannot enter; few values pass, so the test runs on whole
// vectors where AVX is available.
inline void InsertAtLeast(const float* z, int64_t begin, int64_t end, float lower, int64_t top_c,
                          float* top_values, int32_t* top_indices) {
  int64_t i = begin;
#ifdef __AVX__
  const __m256 bound = _mm256_set1_ps(lower);
  for (; i + 8 <= end; i += 8) {
    int hits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(z + i), bound, _CMP_GE_OQ));
    while (hits != 0) {
      const int lane = __builtin_ctz(hits);
      hits &= hits - 1;
      Insert(z[i + lane], static_cast<int32_t>(i + lane), top_c, top_values, top_indices);
    }
  }
#endif
  for (; i < end; ++i) {
    if (z[i] >= lower) Insert(z[i], static_cast<int32_t>(i), top_c, top_values, top_indices);
  }
}

// Top-c of a row with lax.top_k's order. Blocks are visited only if their maximum reaches the
// top_c-th largest block maximum (top_c blocks hold values at least that large).
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
    const float lower = top_c <= kMaxTopC ? KthLargest(block_max, count, top_c) : neg_inf;
    for (int64_t b = 0; b < count; ++b) {
      if (block_max[b] >= lower && block_max[b] >= top_values[top_c - 1]) {
        const int64_t offset = (start + b) * block_size;
        InsertAtLeast(z, offset, std::min(num_classes, offset + block_size), lower, top_c,
                      top_values, top_indices);
      }
    }
  }
}

void Row(const float* z, int64_t num_classes, int64_t top_c, float* exps, float* row_max,
         float* total, float* weighted, float* top_values, int32_t* top_indices) {
  TopC(z, num_classes, top_c, top_values, top_indices);
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
      const float shifted = z[j] - m;
      const float e = ExpNonPositive(shifted);
      exps[j] = e;
      chunk_sum += e;
      chunk_weighted += e * std::max(shifted, -104.0f);  // e = 0 below -87.3 and at -inf
    }
    sum += chunk_sum;
    weighted_sum += chunk_weighted;
  }
  *row_max = m;
  *total = static_cast<float>(sum);
  *weighted = static_cast<float>(weighted_sum);
}

struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

ffi::Error RowStatistics(ffi::ThreadPool thread_pool, ffi::Buffer<ffi::F32> logits,
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
  const float* z = logits.typed_data();
  float* e = exps->typed_data();
  float* m = row_max->typed_data();
  float* s = total->typed_data();
  float* w = weighted->typed_data();
  float* tv = top_values->typed_data();
  int32_t* ti = top_indices->typed_data();

  const int64_t rows_per_task =
      std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(num_classes, 1));
  const int64_t num_tasks = (num_rows + rows_per_task - 1) / rows_per_task;
  auto run_task = [=](int64_t task) {
    const int64_t end = std::min(num_rows, (task + 1) * rows_per_task);
    for (int64_t r = task * rows_per_task; r < end; ++r) {
      Row(z + r * num_classes, num_classes, top_c, e + r * num_classes, m + r, s + r, w + r,
          tv + r * top_c, ti + r * top_c);
    }
  };
  const int64_t helpers = std::min<int64_t>(thread_pool.num_threads(), num_tasks - 1);
  if (helpers <= 0) {
    for (int64_t task = 0; task < num_tasks; ++task) run_task(task);
    return ffi::Error::Success();
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
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GscRowStatistics, RowStatistics,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("top_c"));
