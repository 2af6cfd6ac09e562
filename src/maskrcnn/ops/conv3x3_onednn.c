/*
 * 3x3 convolutions (stride 1, padding 1, no bias) for MindSpore's CPU backend on oneDNN 3,
 * as "aot" Custom-op entry points (src/maskrcnn/ops/cpu_ops.py, Conv3x3).
 *
 * Why: MindSpore 2.7.2 runs every convolution on its bundled oneDNN 2.2 with plain NCHW tensors,
 * where oneDNN picks its im2col + GEMM implementation ("gemm:jit"). oneDNN 3 with the layouts it
 * chooses itself (blocked over channels) runs its direct AVX2/AVX-512 kernels, 1.2-1.9x faster on
 * the network's stride-1 3x3 shapes, reorders to and from NCHW included (BENCHMARKS.md). MindSpore's
 * own kernels were as fast on the stride-2 3x3 and faster on the 1x1 convolutions, which keep them.
 *
 * Entry points (MindSpore's aot signature; params = inputs, then the output):
 *   conv3x3_forward           (x [N,C,H,W], w [O,C,3,3])      -> y  [N,O,H,W]
 *   conv3x3_backward_data     (dy, w, x: only its shape used)  -> dx [N,C,H,W]
 *   conv3x3_backward_weights  (x, dy, w: only its shape used)  -> dw [O,C,3,3]
 * Each returns 0, or 1 after printing the failing oneDNN call to stderr.
 *
 * A plan (primitive, layouts, reorders, blocked buffers) is built once per (pass, stride, shapes)
 * and kept for the process; calls are serialised by one mutex (each plan owns its buffers, and
 * oneDNN already spreads one call over all cores).
 */
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum pass { FORWARD = 0, BACKWARD_DATA = 1, BACKWARD_WEIGHTS = 2 };

/* One tensor of a plan: its plain (NCHW / OIHW) view on MindSpore's buffer and, when oneDNN wants
 * another layout, a buffer in that layout and the reorder between the two. */
struct operand {
    dnnl_memory_t plain;
    dnnl_memory_t blocked;   /* NULL: the primitive reads/writes the plain buffer itself */
    dnnl_primitive_t reorder;
    int arg;                 /* DNNL_ARG_* of the convolution primitive */
};

struct plan {
    int64_t key[9];
    dnnl_primitive_t conv;
    struct operand in0, in1, out;
    struct plan *next;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static dnnl_engine_t g_engine;
static dnnl_stream_t g_stream;
static struct plan *g_plans;

#define CHECK(call)                                                                    \
    do {                                                                               \
        dnnl_status_t status_ = (call);                                                \
        if (status_ != dnnl_success) {                                                 \
            fprintf(stderr, "conv3x3_onednn: %s failed (status %d)\n", #call, (int)status_); \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

static int ensure_engine(void) {
    if (g_engine) return 0;
    CHECK(dnnl_engine_create(&g_engine, dnnl_cpu, 0));
    CHECK(dnnl_stream_create(&g_stream, g_engine, dnnl_stream_default_flags));
    return 0;
}

/* The operand for the primitive's memory descriptor `chosen` of a tensor whose MindSpore buffer
 * is plain (`plain_md`). `is_output`: reorder blocked -> plain after the convolution. */
static int make_operand(struct operand *op, const_dnnl_memory_desc_t plain_md, const_dnnl_memory_desc_t chosen,
                        int arg, int is_output) {
    dnnl_primitive_desc_t reorder_pd;
    op->arg = arg;
    op->blocked = NULL;
    op->reorder = NULL;
    CHECK(dnnl_memory_create(&op->plain, plain_md, g_engine, DNNL_MEMORY_NONE));
    if (dnnl_memory_desc_equal(plain_md, chosen)) return 0;
    CHECK(dnnl_memory_create(&op->blocked, chosen, g_engine, DNNL_MEMORY_ALLOCATE));
    if (is_output)
        CHECK(dnnl_reorder_primitive_desc_create(&reorder_pd, chosen, g_engine, plain_md, g_engine, NULL));
    else
        CHECK(dnnl_reorder_primitive_desc_create(&reorder_pd, plain_md, g_engine, chosen, g_engine, NULL));
    CHECK(dnnl_primitive_create(&op->reorder, reorder_pd));
    CHECK(dnnl_primitive_desc_destroy(reorder_pd));
    return 0;
}

static int build_plan(struct plan *p, int pass, int64_t stride, const int64_t *x, const int64_t *w,
                      const int64_t *y) {
    dnnl_memory_desc_t x_plain, w_plain, y_plain, x_any, w_any, y_any;
    dnnl_primitive_desc_t fwd_pd, pd;
    dnnl_dims_t strides = {stride, stride}, dilates = {0, 0}, pad_l = {1, 1};
    /* Right/bottom padding that gives MindSpore's floor((H + 2 - 3) / stride) + 1 outputs. */
    dnnl_dims_t pad_r = {(y[2] - 1) * stride + 3 - x[2] - 1, (y[3] - 1) * stride + 3 - x[3] - 1};
    CHECK(dnnl_memory_desc_create_with_tag(&x_plain, 4, x, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_create_with_tag(&w_plain, 4, w, dnnl_f32, dnnl_oihw));
    CHECK(dnnl_memory_desc_create_with_tag(&y_plain, 4, y, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_create_with_tag(&x_any, 4, x, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_create_with_tag(&w_any, 4, w, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_create_with_tag(&y_any, 4, y, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_convolution_forward_primitive_desc_create(&fwd_pd, g_engine, dnnl_forward_training,
                                                         dnnl_convolution_direct, x_any, w_any, NULL, y_any, strides,
                                                         dilates, pad_l, pad_r, NULL));
    if (pass == FORWARD) {
        pd = fwd_pd;
        if (make_operand(&p->in0, x_plain, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), DNNL_ARG_SRC, 0) ||
            make_operand(&p->in1, w_plain, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0),
                         DNNL_ARG_WEIGHTS, 0) ||
            make_operand(&p->out, y_plain, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), DNNL_ARG_DST, 1))
            return 1;
    } else if (pass == BACKWARD_DATA) {
        CHECK(dnnl_convolution_backward_data_primitive_desc_create(&pd, g_engine, dnnl_convolution_direct, x_any,
                                                                   w_any, y_any, strides, dilates, pad_l, pad_r,
                                                                   fwd_pd, NULL));
        if (make_operand(&p->in0, y_plain, dnnl_primitive_desc_query_md(pd, dnnl_query_diff_dst_md, 0),
                         DNNL_ARG_DIFF_DST, 0) ||
            make_operand(&p->in1, w_plain, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0),
                         DNNL_ARG_WEIGHTS, 0) ||
            make_operand(&p->out, x_plain, dnnl_primitive_desc_query_md(pd, dnnl_query_diff_src_md, 0),
                         DNNL_ARG_DIFF_SRC, 1))
            return 1;
    } else {
        CHECK(dnnl_convolution_backward_weights_primitive_desc_create(&pd, g_engine, dnnl_convolution_direct, x_any,
                                                                      w_any, NULL, y_any, strides, dilates, pad_l,
                                                                      pad_r, fwd_pd, NULL));
        if (make_operand(&p->in0, x_plain, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), DNNL_ARG_SRC, 0) ||
            make_operand(&p->in1, y_plain, dnnl_primitive_desc_query_md(pd, dnnl_query_diff_dst_md, 0),
                         DNNL_ARG_DIFF_DST, 0) ||
            make_operand(&p->out, w_plain, dnnl_primitive_desc_query_md(pd, dnnl_query_diff_weights_md, 0),
                         DNNL_ARG_DIFF_WEIGHTS, 1))
            return 1;
    }
    CHECK(dnnl_primitive_create(&p->conv, pd));
    if (pd != fwd_pd) CHECK(dnnl_primitive_desc_destroy(pd));
    CHECK(dnnl_primitive_desc_destroy(fwd_pd));
    dnnl_memory_desc_destroy(x_plain);
    dnnl_memory_desc_destroy(w_plain);
    dnnl_memory_desc_destroy(y_plain);
    dnnl_memory_desc_destroy(x_any);
    dnnl_memory_desc_destroy(w_any);
    dnnl_memory_desc_destroy(y_any);
    return 0;
}

static struct plan *find_plan(int pass, int64_t stride, const int64_t *x, const int64_t *w, const int64_t *y) {
    int64_t key[9] = {pass, stride, x[0], x[1], x[2], x[3], w[0], y[2], y[3]};
    struct plan *p;
    for (p = g_plans; p; p = p->next)
        if (memcmp(p->key, key, sizeof(key)) == 0) return p;
    p = calloc(1, sizeof(*p));
    if (!p || ensure_engine() || build_plan(p, pass, stride, x, w, y)) {
        free(p); /* a half-built plan leaks its oneDNN handles; the call fails and training stops */
        return NULL;
    }
    memcpy(p->key, key, sizeof(key));
    p->next = g_plans;
    g_plans = p;
    return p;
}

static int reorder(dnnl_primitive_t prim, dnnl_memory_t from, dnnl_memory_t to) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    CHECK(dnnl_primitive_execute(prim, g_stream, 2, args));
    return 0;
}

/* Points the operand's plain view at `data`; the memory the convolution uses. */
static dnnl_memory_t bind(struct operand *op, void *data, int is_output, int *failed) {
    if (dnnl_memory_set_data_handle(op->plain, data) != dnnl_success) *failed = 1;
    if (!op->blocked) return op->plain;
    if (!is_output && reorder(op->reorder, op->plain, op->blocked)) *failed = 1;
    return op->blocked;
}

static int run(int pass, int64_t stride, void **params, int64_t **shapes) {
    /* MindSpore's order: the two inputs, the shape-only input (backward passes), the output. */
    const int64_t *x, *w, *y;
    int out_index = pass == FORWARD ? 2 : 3, failed = 0, status;
    struct plan *p;
    dnnl_exec_arg_t args[3];
    if (pass == FORWARD) { x = shapes[0]; w = shapes[1]; y = shapes[2]; }
    else if (pass == BACKWARD_DATA) { y = shapes[0]; w = shapes[1]; x = shapes[3]; }
    else { x = shapes[0]; y = shapes[1]; w = shapes[3]; }
    pthread_mutex_lock(&g_lock);
    p = find_plan(pass, stride, x, w, y);
    if (!p) {
        pthread_mutex_unlock(&g_lock);
        return 1;
    }
    args[0].arg = p->in0.arg;
    args[0].memory = bind(&p->in0, params[0], 0, &failed);
    args[1].arg = p->in1.arg;
    args[1].memory = bind(&p->in1, params[1], 0, &failed);
    args[2].arg = p->out.arg;
    args[2].memory = bind(&p->out, params[out_index], 1, &failed);
    status = failed || dnnl_primitive_execute(p->conv, g_stream, 3, args) != dnnl_success;
    if (!status && p->out.blocked) status = reorder(p->out.reorder, p->out.blocked, p->out.plain);
    if (!status && dnnl_stream_wait(g_stream) != dnnl_success) status = 1;
    pthread_mutex_unlock(&g_lock);
    if (status) fprintf(stderr, "conv3x3_onednn: pass %d, stride %ld failed\n", pass, (long)stride);
    return status;
}

#define ENTRY(name, pass, stride)                                                                        \
    int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, \
             void *extra) {                                                                              \
        (void)nparam; (void)ndims; (void)dtypes; (void)stream; (void)extra;                              \
        return run(pass, stride, params, shapes);                                                        \
    }

ENTRY(conv3x3_forward, FORWARD, 1)
ENTRY(conv3x3_backward_data, BACKWARD_DATA, 1)
ENTRY(conv3x3_backward_weights, BACKWARD_WEIGHTS, 1)
