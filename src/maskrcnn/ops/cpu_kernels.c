/*
 * CPU kernels for ops whose MindSpore 2.7 CPU kernels are far slower than the arithmetic needs,
 * called from Python pyfunc ops through ctypes (src/maskrcnn/ops/cpu_kernels.py builds this file
 * with the system C compiler; src/maskrcnn/ops/cpu_ops.py wraps the kernels as MindSpore ops).
 *
 * Every kernel works on contiguous float32 arrays of planes (batch * channels planes of
 * [height, width], the network's NCHW layout) and splits the planes over `threads` OpenMP
 * threads, so that no two threads write the same cell.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The larger of a and b; a NaN wins (and stays), as in MindSpore's and PyTorch's max-pool. */
static inline float max_or_nan(float a, float b)
{
    return (b > a || b != b) ? b : a;
}

/* The cells [*start, *end) of window `index` along an axis of `extent` cells: it starts at
 * index * stride - pad and spans `size` cells, clipped to the map. */
static inline void window_cells(int64_t index, int stride, int pad, int size, int64_t extent, int64_t *start,
                                int64_t *end)
{
    int64_t first = index * stride - pad, last = first + size;
    *start = first < 0 ? 0 : first;
    *end = last > extent ? extent : last;
}

/* Max-pool of each [height, width] plane with a size x size window and the given stride: the
 * window of output (i, j) starts at (i * stride - pad_top, j * stride - pad_left) and only its
 * cells inside the map count (padding never wins). Row by row: the column-wise maximum over the
 * window's rows, then the maximum over each window's columns. */
int64_t max_pool_forward(const float *x, int64_t planes, int64_t height, int64_t width, int size, int stride,
                         int pad_top, int pad_left, int64_t out_height, int64_t out_width, float *y, int threads)
{
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *columns = malloc(sizeof(float) * (size_t)(width > 0 ? width : 1));
        if (columns == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < planes; ++p) {
            if (columns == NULL) {
                continue;
            }
            const float *map = x + p * height * width;
            float *pooled = y + p * out_height * out_width;
            for (int64_t i = 0; i < out_height; ++i) {
                int64_t top, bottom;
                window_cells(i, stride, pad_top, size, height, &top, &bottom);
                memcpy(columns, map + top * width, sizeof(float) * (size_t)width);
                for (int64_t row = top + 1; row < bottom; ++row) {
                    const float *src = map + row * width;
                    for (int64_t col = 0; col < width; ++col) {
                        columns[col] = max_or_nan(columns[col], src[col]);
                    }
                }
                for (int64_t j = 0; j < out_width; ++j) {
                    int64_t left, right;
                    window_cells(j, stride, pad_left, size, width, &left, &right);
                    float best = columns[left];
                    for (int64_t col = left + 1; col < right; ++col) {
                        best = max_or_nan(best, columns[col]);
                    }
                    pooled[i * out_width + j] = best;
                }
            }
        }
        free(columns);
    }
    return failed ? -1 : 0;
}

/* Gradient of max_pool_forward given its output y: each output's gradient goes to the first cell
 * of its window (row-major) that holds the window's maximum (a NaN when the maximum is NaN). */
int64_t max_pool_backward(const float *x, const float *y, const float *grad_y, int64_t planes, int64_t height,
                          int64_t width, int size, int stride, int pad_top, int pad_left, int64_t out_height,
                          int64_t out_width, float *grad_x, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
        const float *map = x + p * height * width;
        const float *pooled = y + p * out_height * out_width;
        const float *grad = grad_y + p * out_height * out_width;
        float *dst = grad_x + p * height * width;
        memset(dst, 0, sizeof(float) * (size_t)(height * width));
        for (int64_t i = 0; i < out_height; ++i) {
            int64_t top, bottom;
            window_cells(i, stride, pad_top, size, height, &top, &bottom);
            for (int64_t j = 0; j < out_width; ++j) {
                int64_t left, right;
                window_cells(j, stride, pad_left, size, width, &left, &right);
                float best = pooled[i * out_width + j];
                int nan = best != best;
                int64_t winner = -1;
                for (int64_t row = top; row < bottom && winner < 0; ++row) {
                    const float *src = map + row * width;
                    for (int64_t col = left; col < right; ++col) {
                        float value = src[col];
                        if (value == best || (nan && value != value)) {
                            winner = row * width + col;
                            break;
                        }
                    }
                }
                if (winner >= 0) {
                    dst[winner] += grad[i * out_width + j];
                }
            }
        }
    }
    return 0;
}

/* Nearest-neighbour upsampling of each [height, width] plane by an integer factor:
 * y[i, j] = x[i / factor, j / factor]. */
int64_t upsample_nearest_forward(const float *x, int64_t planes, int64_t height, int64_t width, int factor,
                                 float *y, int threads)
{
    int64_t out_width = width * factor;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
        const float *map = x + p * height * width;
        float *dst = y + p * height * width * factor * factor;
        for (int64_t i = 0; i < height; ++i) {
            float *row = dst + i * factor * out_width;
            for (int64_t j = 0; j < width; ++j) {
                for (int f = 0; f < factor; ++f) {
                    row[j * factor + f] = map[i * width + j];
                }
            }
            for (int f = 1; f < factor; ++f) {
                memcpy(row + f * out_width, row, sizeof(float) * (size_t)out_width);
            }
        }
    }
    return 0;
}

/* Gradient of upsample_nearest_forward: each input cell sums its factor x factor block. */
int64_t upsample_nearest_backward(const float *grad_y, int64_t planes, int64_t height, int64_t width, int factor,
                                  float *grad_x, int threads)
{
    int64_t out_width = width * factor;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
        const float *grad = grad_y + p * height * width * factor * factor;
        float *dst = grad_x + p * height * width;
        for (int64_t i = 0; i < height; ++i) {
            for (int64_t j = 0; j < width; ++j) {
                float sum = 0.0f;
                for (int fy = 0; fy < factor; ++fy) {
                    const float *row = grad + (i * factor + fy) * out_width + j * factor;
                    for (int fx = 0; fx < factor; ++fx) {
                        sum += row[fx];
                    }
                }
                dst[i * width + j] = sum;
            }
        }
    }
    return 0;
}
