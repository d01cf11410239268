// Bias addition over the last axis and its bias gradient, float32, for MindSpore's Custom "aot"
// op on the CPU (see model/cpu_kernels/): the bias half of ConvMLP's Dense layers.
// MindSpore 2.10's BiasAddGrad is slow on ConvMLP's gradients (benchmarks/RESULTS.md, "Figures
// behind the kernels"); here the row sum runs over C innermost (vectorised), in float
// blocks of 256 rows added into double totals in the order of the blocks. Rows and blocks of rows
// are split over the library's worker pool (common.h); the sums do not depend on the threads.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"


namespace {

// The loops of the kernels, as functions of their own (their arguments are locals, so that the
// compiler vectorises the inner loops).

__attribute__((noinline))
void AddRows(const float *x, const float *b, int64_t c, int64_t r0, int64_t r1, float *y) {
  for (int64_t r = r0; r < r1; ++r) {
    const float *xr = x + r * c;
    float *yr = y + r * c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) yr[i] = xr[i] + b[i];
  }
}

constexpr int64_t kBlock = 256;

// part[i] = the float sum of g's rows [r0, r1) in column i, in the order of the rows.
__attribute__((noinline))
void SumRows(const float *g, int64_t c, int64_t r0, int64_t r1, float *part) {
  for (int64_t i = 0; i < c; ++i) part[i] = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float *gr = g + r * c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) part[i] += gr[i];
  }
}

// db[i] for the columns [i0, i1): the blocks' float sums added into double, in the order of the blocks.
__attribute__((noinline))
void AddBlocks(const float *parts, int64_t blocks, int64_t c, int64_t i0, int64_t i1, float *db) {
  std::vector<double> totals(i1 - i0, 0.0);
  double *total = totals.data();
  for (int64_t k = 0; k < blocks; ++k) {
    const float *part = parts + k * c + i0;
    for (int64_t i = 0; i < i1 - i0; ++i) total[i] += part[i];
  }
  for (int64_t i = 0; i < i1 - i0; ++i) db[i0 + i] = static_cast<float>(total[i]);
}

// db = the column sums of the (rows, c) array g: float sums of blocks of kBlock rows (the blocks
// on the pool), added into double in the order of the blocks: the same bits whatever the threads.
// With x and b given, each block's rows of g are first written as dy * GELU'(x + b).
void ColumnSums(const float *dy, int64_t rows, int64_t c, float *db, const float *x = nullptr,
                const float *b = nullptr, float *g = nullptr) {
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
  std::vector<float> parts(blocks * c);
  float *pp = parts.data();
  const float *grad = x != nullptr ? g : dy;
  convmlp::ParallelRange(blocks, kBlock * c * (x != nullptr ? 4 : 1), [=](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r0 = k * kBlock, r1 = std::min(rows, r0 + kBlock);
      if (x != nullptr) convmlp::BiasGeluGradBlock(dy, x, b, c, r0, r1, 0, c, g);
      SumRows(grad, c, r0, r1, pp + k * c);
    }
  });
  convmlp::ParallelColumns(c, blocks, [=](int64_t i0, int64_t i1) { AddBlocks(pp, blocks, c, i0, i1, db); });
}

}  // namespace

// Inputs: x (..., C), bias (C). Output: y (..., C) = x + bias.
extern "C" int BiasAddForward(int nparam, void **params, int *ndims, int64_t **shapes,
                              const char **dtypes, void *stream, void *extra) {
  int64_t rows, c;
  if (nparam != 3 || !convmlp::RowsOfChannels(ndims, shapes, 0, 1, &rows, &c)) return 1;
  if (c == 0) return 0;
  const float *x = static_cast<const float *>(params[0]);
  const float *b = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  convmlp::ParallelRange(rows, c, [=](int64_t r0, int64_t r1) { AddRows(x, b, c, r0, r1, y); });
  return 0;
}

// Inputs: dy (..., C). Output: dbias (C) = sum of dy over every axis but the last.
extern "C" int BiasAddBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                               const char **dtypes, void *stream, void *extra) {
  if (nparam != 2 || ndims[0] < 1) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  float *db = static_cast<float *>(params[1]);
  const int64_t c = shapes[0][ndims[0] - 1];
  if (c == 0) return 0;
  const int64_t rows = convmlp::Numel(ndims[0], shapes[0]) / c;
  ColumnSums(dy, rows, c, db);
  return 0;
}

// The gradients of BiasGeluForward (gelu.cc). Inputs: dy (..., C), x (..., C), bias (C).
// Outputs: dx (..., C) = dy * GELU'(x + bias), dbias (C) = the sum of dx over every axis but the
// last (as BiasAddBackward sums it), each block of rows summed while it is in cache.
extern "C" int BiasGeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  int64_t rows, c;
  if (nparam != 5 || !convmlp::RowsOfChannels(ndims, shapes, 0, 2, &rows, &c)) return 1;
  if (c == 0) return 0;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[3]);
  float *db = static_cast<float *>(params[4]);
  ColumnSums(dy, rows, c, db, x, b, dx);
  return 0;
}
