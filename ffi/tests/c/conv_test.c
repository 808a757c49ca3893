/*
 * The C ABI from C: convolutions through include/effnet.h, checked against a plain
 * double-precision reference written here, and every kind of misuse the ABI must
 * reject. Built and run (also under valgrind when present) by ffi/tests/c_abi.rs.
 *
 * Prints one line per check ("ok   ..." or "FAIL ...") and a closing
 * "effnet C ABI test: N passed, M failed"; exits 1 if any check failed.
 */
#include "effnet.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>

static int g_passed;
static int g_failed;

static void check(int ok, const char *what, const char *detail) {
    if (ok) {
        g_passed++;
        printf("ok   %s\n", what);
    } else {
        g_failed++;
        printf("FAIL %s: %s\n", what, detail ? detail : "");
    }
}

/* Checks a status and the last-error message: empty on success, non-empty on failure
 * and containing `needle` when one is given. */
static void expect(effnet_status got, effnet_status want, const char *needle,
                   const char *what) {
    const char *msg = effnet_last_error();
    char detail[1024];
    int ok = got == want;
    if (msg == NULL) {
        ok = 0;
        msg = "(NULL)";
    } else if (want == EFFNET_OK) {
        ok = ok && msg[0] == '\0';
    } else {
        ok = ok && msg[0] != '\0' && (needle == NULL || strstr(msg, needle) != NULL);
    }
    snprintf(detail, sizeof detail, "status %d (want %d), message \"%s\"%s%s",
             (int)got, (int)want, msg, needle ? ", expected to contain " : "",
             needle ? needle : "");
    check(ok, what, detail);
    if (ok && want != EFFNET_OK) {
        printf("     -> %s\n", msg);
    }
}

/* ---------------------------------------------------------------- data, reference */

static uint64_t g_rng = 0x2545F4914F6CDD1DULL;

static float uniform(void) {
    /* xorshift64*, uniform in [-1, 1) */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (float)((g_rng * 0x2545F4914F6CDD1DULL) >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
}

static float *random_floats(size_t n) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) {
        p[i] = uniform();
    }
    return p;
}

static float *filled(size_t n, float v) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) {
        p[i] = v;
    }
    return p;
}

typedef struct {
    long n, h, w, ci, co, gs, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, cog;
} dims;

static dims dims_of(const effnet_conv_desc *d) {
    dims r;
    r.n = d->batch;
    r.h = d->in_h;
    r.w = d->in_w;
    r.ci = d->in_channels;
    r.co = d->out_channels;
    r.gs = d->group_size;
    r.kh = d->kernel_h;
    r.kw = d->kernel_w;
    r.sh = d->stride_h;
    r.sw = d->stride_w;
    r.dh = d->dilation_h;
    r.dw = d->dilation_w;
    r.pt = d->pad_top;
    r.pl = d->pad_left;
    r.oh = (d->in_h + d->pad_top + d->pad_bottom - d->dilation_h * (d->kernel_h - 1) - 1) /
               d->stride_h + 1;
    r.ow = (d->in_w + d->pad_left + d->pad_right - d->dilation_w * (d->kernel_w - 1) - 1) /
               d->stride_w + 1;
    r.cog = d->out_channels / (d->in_channels / d->group_size);
    return r;
}

enum pass { FORWARD, BACKWARD_DATA, BACKWARD_WEIGHT };

/* One loop nest for the three passes (double accumulation): forward reads x, w and
 * writes y; backward-data reads dy (in y), w and writes dx (in x); backward-weight
 * reads x, dy and writes dw (in w). Outputs must be zeroed by the caller. */
static void reference(const dims *d, enum pass pass, const float *x, const float *w,
                      const float *y, double *out) {
    for (long n = 0; n < d->n; n++)
        for (long oh = 0; oh < d->oh; oh++)
            for (long ow = 0; ow < d->ow; ow++)
                for (long kh = 0; kh < d->kh; kh++) {
                    long ih = oh * d->sh + kh * d->dh - d->pt;
                    if (ih < 0 || ih >= d->h) continue;
                    for (long kw = 0; kw < d->kw; kw++) {
                        long iw = ow * d->sw + kw * d->dw - d->pl;
                        if (iw < 0 || iw >= d->w) continue;
                        for (long co = 0; co < d->co; co++) {
                            long g = co / d->cog;
                            long yi = ((n * d->oh + oh) * d->ow + ow) * d->co + co;
                            for (long ci = 0; ci < d->gs; ci++) {
                                long xi = ((n * d->h + ih) * d->w + iw) * d->ci + g * d->gs + ci;
                                long wi = ((kh * d->kw + kw) * d->gs + ci) * d->co + co;
                                if (pass == FORWARD) {
                                    out[yi] += (double)x[xi] * w[wi];
                                } else if (pass == BACKWARD_DATA) {
                                    out[xi] += (double)y[yi] * w[wi];
                                } else {
                                    out[wi] += (double)y[yi] * x[xi];
                                }
                            }
                        }
                    }
                }
}

/* ||got - scale*want|| / ||scale*want||, with `base` added to want when not NULL. */
static double rel_err(const float *got, const double *want, const double *base,
                      size_t n, double scale) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double v = scale * want[i] + (base ? base[i] : 0.0);
        num += (got[i] - v) * (got[i] - v);
        den += v * v;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void expect_close(const float *got, const double *want, const double *base,
                         size_t n, double scale, const char *what) {
    char detail[128];
    double e = rel_err(got, want, base, n, scale);
    snprintf(detail, sizeof detail, "relative error %.3g > 1e-5", e);
    check(e <= 1e-5, what, detail);
}

/* ------------------------------------------------------------------ convolutions */

typedef struct {
    const char *name;
    effnet_conv_desc desc;
    effnet_conv_family family;
} conv_case;

static effnet_conv_desc make_desc(long n, long h, long w, long ci, long co, long gs,
                                  long k, long stride, long pt, long pb, long pl,
                                  long pr) {
    effnet_conv_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.batch = n;
    d.in_h = h;
    d.in_w = w;
    d.in_channels = ci;
    d.out_channels = co;
    d.group_size = gs;
    d.kernel_h = k;
    d.kernel_w = k;
    d.stride_h = stride;
    d.stride_w = stride;
    d.dilation_h = 1;
    d.dilation_w = 1;
    d.pad_top = pt;
    d.pad_bottom = pb;
    d.pad_left = pl;
    d.pad_right = pr;
    d.dtype = EFFNET_DTYPE_F32;
    return d;
}

static void label(char *buf, size_t size, const char *name, const char *what) {
    snprintf(buf, size, "%s: %s", name, what);
}

/* Caller-owned workspaces: each _ws pass, given a workspace of exactly the queried size
 * full of stale bytes (NaN patterns), gives the allocating pass's bits; a workspace one
 * float short, NULL with a size, misaligned or overlapping an output is rejected. */
static void workspace_case(const char *name, effnet_context *ctx, effnet_conv_plan *plan,
                           effnet_conv_family family, const float *x, size_t xl,
                           const float *w, size_t wl, const float *b, size_t bl,
                           const float *dy, size_t yl) {
    char what[256];
    size_t bytes[3] = {0, 0, 0};
    const uint32_t passes[3] = {EFFNET_CONV_PASS_FORWARD, EFFNET_CONV_PASS_BACKWARD_DATA,
                                EFFNET_CONV_PASS_BACKWARD_WEIGHT};
    for (int p = 0; p < 3; p++) {
        label(what, sizeof what, name, "workspace size query");
        expect(effnet_conv_workspace_size(ctx, plan, passes[p], &bytes[p]), EFFNET_OK, NULL,
               what);
    }
    /* Every family takes its scratch from the workspace, so no pass needs 0 bytes. */
    (void)family;
    label(what, sizeof what, name, "workspace sizes are whole floats, none 0");
    check(bytes[0] % 4 == 0 && bytes[1] % 4 == 0 && bytes[2] % 4 == 0 && bytes[0] &&
              bytes[1] && bytes[2],
          what, "unexpected sizes");
    size_t out_len[3] = {yl, xl, wl + bl};
    for (int p = 0; p < 3; p++) {
        size_t n = out_len[p];
        float *want = filled(n, NAN), *got = filled(n, NAN);
        /* +64 so that the workspace can also start off its natural alignment. */
        unsigned char *ws = malloc(bytes[p] + 64);
        memset(ws, 0xff, bytes[p] + 64);
        effnet_status s_want, s_got, s_short = EFFNET_OK;
        switch (p) {
        case 0:
            s_want = effnet_conv_forward(ctx, plan, x, xl, w, wl, b, bl, want, yl);
            s_got = effnet_conv_forward_ws(ctx, plan, x, xl, w, wl, b, bl, got, yl, ws + 4,
                                           bytes[p]);
            if (bytes[p] >= 4)
                s_short = effnet_conv_forward_ws(ctx, plan, x, xl, w, wl, b, bl, got, yl, ws,
                                                 bytes[p] - 4);
            break;
        case 1:
            s_want = effnet_conv_backward_data(ctx, plan, dy, yl, w, wl, want, xl);
            s_got = effnet_conv_backward_data_ws(ctx, plan, dy, yl, w, wl, got, xl, ws + 4,
                                                 bytes[p]);
            if (bytes[p] >= 4)
                s_short = effnet_conv_backward_data_ws(ctx, plan, dy, yl, w, wl, got, xl, ws,
                                                       bytes[p] - 4);
            break;
        default:
            s_want = effnet_conv_backward_weight(ctx, plan, x, xl, dy, yl, want, wl,
                                                 want + wl, bl, 0);
            s_got = effnet_conv_backward_weight_ws(ctx, plan, x, xl, dy, yl, got, wl,
                                                   got + wl, bl, 0, ws + 4, bytes[p]);
            if (bytes[p] >= 4)
                s_short = effnet_conv_backward_weight_ws(ctx, plan, x, xl, dy, yl, got, wl,
                                                         got + wl, bl, 0, ws, bytes[p] - 4);
            break;
        }
        static const char *names[3] = {"forward", "backward-data", "backward-weight"};
        char pass_name[128];
        snprintf(pass_name, sizeof pass_name, "%s with a caller workspace", names[p]);
        label(what, sizeof what, name, pass_name);
        check(s_want == EFFNET_OK && s_got == EFFNET_OK, what, effnet_last_error());
        snprintf(pass_name, sizeof pass_name, "%s: workspace and allocating give the same bits",
                 names[p]);
        label(what, sizeof what, name, pass_name);
        check(memcmp(want, got, n * sizeof *got) == 0, what, "results differ");
        if (bytes[p] >= 4) {
            snprintf(pass_name, sizeof pass_name, "%s: workspace one float short", names[p]);
            label(what, sizeof what, name, pass_name);
            expect(s_short, EFFNET_INVALID_ARGUMENT, "workspace", what);
        }
        free(want); free(got); free(ws);
    }
}

/* Weights packed once: the forward pass on them gives the plain forward pass's bits
 * (with the library's buffer and with a caller workspace, with and without bias); a
 * short or never-packed buffer is rejected. */
static void packed_case(const char *name, effnet_context *ctx, effnet_conv_plan *plan,
                        const float *x, size_t xl, const float *w, size_t wl,
                        const float *b, size_t bl, size_t yl) {
    char what[256];
    size_t pbytes = 0, wsbytes = 0;
    label(what, sizeof what, name, "packed weights: size query");
    expect(effnet_conv_packed_weights_size(plan, &pbytes), EFFNET_OK, NULL, what);
    expect(effnet_conv_workspace_size(ctx, plan, EFFNET_CONV_PASS_FORWARD, &wsbytes),
           EFFNET_OK, NULL, what);
    label(what, sizeof what, name, "packed weights: a header and whole floats");
    check(pbytes >= 64 && pbytes % 4 == 0, what, "unexpected size");
    float *packed = filled(pbytes / 4, NAN);
    float *ws = filled(wsbytes / 4 + 1, NAN);
    float *want = filled(yl, NAN), *got = filled(yl, NAN);
    label(what, sizeof what, name, "packed weights: never packed is rejected");
    expect(effnet_conv_forward_packed(ctx, plan, x, xl, packed, pbytes, b, bl, got, yl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "pack", what);
    label(what, sizeof what, name, "packed weights: pack into a short buffer");
    expect(effnet_conv_pack_weights(ctx, plan, w, wl, packed, pbytes - 4),
           EFFNET_INVALID_ARGUMENT, "packed", what);
    label(what, sizeof what, name, "packed weights: pack");
    expect(effnet_conv_pack_weights(ctx, plan, w, wl, packed, pbytes), EFFNET_OK, NULL, what);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        const float *bb = with_bias ? b : NULL;
        size_t bbl = with_bias ? bl : 0;
        expect(effnet_conv_forward(ctx, plan, x, xl, w, wl, bb, bbl, want, yl), EFFNET_OK,
               NULL, "packed weights: plain forward");
        label(what, sizeof what, name,
              with_bias ? "forward_packed (bias, library buffer)" : "forward_packed (library buffer)");
        expect(effnet_conv_forward_packed(ctx, plan, x, xl, packed, pbytes, bb, bbl, got, yl,
                                          NULL, 0),
               EFFNET_OK, NULL, what);
        label(what, sizeof what, name, "forward_packed gives the forward bits");
        check(memcmp(want, got, yl * sizeof *got) == 0, what, "results differ");
        for (size_t i = 0; i < yl; i++) got[i] = NAN;
        label(what, sizeof what, name, "forward_packed (caller workspace)");
        expect(effnet_conv_forward_packed(ctx, plan, x, xl, packed, pbytes, bb, bbl, got, yl,
                                          ws, wsbytes),
               EFFNET_OK, NULL, what);
        label(what, sizeof what, name, "forward_packed with a workspace gives the forward bits");
        check(memcmp(want, got, yl * sizeof *got) == 0, what, "results differ");
    }
    label(what, sizeof what, name, "forward_packed: packed buffer one float short");
    expect(effnet_conv_forward_packed(ctx, plan, x, xl, packed, pbytes - 4, b, bl, got, yl,
                                      NULL, 0),
           EFFNET_INVALID_ARGUMENT, "packed", what);
    label(what, sizeof what, name, "forward_packed: NULL packed buffer");
    expect(effnet_conv_forward_packed(ctx, plan, x, xl, NULL, 0, b, bl, got, yl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "packed", what);
    if (wsbytes >= 4) {
        label(what, sizeof what, name, "forward_packed: workspace one float short");
        expect(effnet_conv_forward_packed(ctx, plan, x, xl, packed, pbytes, b, bl, got, yl, ws,
                                          wsbytes - 4),
               EFFNET_INVALID_ARGUMENT, "workspace", what);
    }
    free(packed); free(ws); free(want); free(got);
}

static void run_case(const conv_case *c, effnet_context *ctx1, effnet_context *ctx3) {
    char what[256];
    effnet_conv_plan *plan = NULL;
    const dims d = dims_of(&c->desc);

    label(what, sizeof what, c->name, "plan create");
    expect(effnet_conv_plan_create(ctx3, &c->desc, &plan), EFFNET_OK, NULL, what);
    if (plan == NULL) return;

    effnet_conv_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    label(what, sizeof what, c->name, "shape query");
    expect(effnet_conv_plan_shape(plan, &s), EFFNET_OK, NULL, what);
    size_t xl = (size_t)(d.n * d.h * d.w * d.ci), yl = (size_t)(d.n * d.oh * d.ow * d.co);
    size_t wl = (size_t)(d.kh * d.kw * d.gs * d.co), bl = (size_t)d.co;
    label(what, sizeof what, c->name, "shape: sizes, counts and family");
    check(s.out_h == d.oh && s.out_w == d.ow && s.groups == d.ci / d.gs && s.x_len == xl &&
              s.y_len == yl && s.w_len == wl && s.bias_len == bl &&
              s.family == (uint32_t)c->family && s.struct_size == sizeof s,
          what, "shape differs from the formula");

    float *x = random_floats(xl), *w = random_floats(wl), *b = random_floats(bl);
    float *dy = random_floats(yl);
    float *y3 = filled(yl, NAN), *y1 = filled(yl, NAN);
    float *dx3 = filled(xl, NAN), *dx1 = filled(xl, NAN);
    float *dw3 = filled(wl, NAN), *dw1 = filled(wl, NAN), *db3 = filled(bl, NAN);
    float *db1 = filled(bl, NAN);
    double *ry = calloc(yl, sizeof *ry), *rdx = calloc(xl, sizeof *rdx);
    double *rdw = calloc(wl, sizeof *rdw), *rdb = calloc(bl, sizeof *rdb);
    double *bias_rows = calloc(yl, sizeof *bias_rows);
    reference(&d, FORWARD, x, w, NULL, ry);
    reference(&d, BACKWARD_DATA, NULL, w, dy, rdx);
    reference(&d, BACKWARD_WEIGHT, x, NULL, dy, rdw);
    for (size_t i = 0; i < yl; i++) {
        bias_rows[i] = b[i % bl];
        rdb[i % bl] += dy[i];
    }

    /* Forward, with and without bias; 3 threads against 1, bitwise. */
    label(what, sizeof what, c->name, "forward with bias");
    expect(effnet_conv_forward(ctx3, plan, x, xl, w, wl, b, bl, y3, yl), EFFNET_OK, NULL, what);
    label(what, sizeof what, c->name, "forward with bias matches the reference");
    expect_close(y3, ry, bias_rows, yl, 1.0, what);
    label(what, sizeof what, c->name, "forward on 1 thread");
    expect(effnet_conv_forward(ctx1, plan, x, xl, w, wl, b, bl, y1, yl), EFFNET_OK, NULL, what);
    label(what, sizeof what, c->name, "forward: 1 and 3 threads give the same bits");
    check(memcmp(y1, y3, yl * sizeof *y1) == 0, what, "results differ");
    label(what, sizeof what, c->name, "forward without bias");
    expect(effnet_conv_forward(ctx3, plan, x, xl, w, wl, NULL, 0, y3, yl), EFFNET_OK, NULL,
           what);
    label(what, sizeof what, c->name, "forward without bias matches the reference");
    expect_close(y3, ry, NULL, yl, 1.0, what);

    /* Backward-data. */
    label(what, sizeof what, c->name, "backward-data");
    expect(effnet_conv_backward_data(ctx3, plan, dy, yl, w, wl, dx3, xl), EFFNET_OK, NULL,
           what);
    label(what, sizeof what, c->name, "backward-data matches the reference");
    expect_close(dx3, rdx, NULL, xl, 1.0, what);
    label(what, sizeof what, c->name, "backward-data on 1 thread");
    expect(effnet_conv_backward_data(ctx1, plan, dy, yl, w, wl, dx1, xl), EFFNET_OK, NULL,
           what);
    label(what, sizeof what, c->name, "backward-data: 1 and 3 threads give the same bits");
    check(memcmp(dx1, dx3, xl * sizeof *dx1) == 0, what, "results differ");

    /* Backward-weight: overwrite (outputs start as NaN), then accumulate (2x). */
    label(what, sizeof what, c->name, "backward-weight, overwrite");
    expect(effnet_conv_backward_weight(ctx3, plan, x, xl, dy, yl, dw3, wl, db3, bl, 0),
           EFFNET_OK, NULL, what);
    label(what, sizeof what, c->name, "backward-weight dw matches the reference");
    expect_close(dw3, rdw, NULL, wl, 1.0, what);
    label(what, sizeof what, c->name, "backward-weight dbias matches the reference");
    expect_close(db3, rdb, NULL, bl, 1.0, what);
    label(what, sizeof what, c->name, "backward-weight on 1 thread");
    expect(effnet_conv_backward_weight(ctx1, plan, x, xl, dy, yl, dw1, wl, db1, bl, 0),
           EFFNET_OK, NULL, what);
    label(what, sizeof what, c->name, "backward-weight: 1 and 3 threads give the same bits");
    check(memcmp(dw1, dw3, wl * sizeof *dw1) == 0 && memcmp(db1, db3, bl * sizeof *db1) == 0,
          what, "results differ");
    label(what, sizeof what, c->name, "backward-weight, accumulate");
    expect(effnet_conv_backward_weight(ctx3, plan, x, xl, dy, yl, dw3, wl, db3, bl, 1),
           EFFNET_OK, NULL, what);
    label(what, sizeof what, c->name, "accumulated dw is twice the reference");
    expect_close(dw3, rdw, NULL, wl, 2.0, what);
    label(what, sizeof what, c->name, "accumulated dbias is twice the reference");
    expect_close(db3, rdb, NULL, bl, 2.0, what);
    for (size_t i = 0; i < wl; i++) dw1[i] = NAN;
    label(what, sizeof what, c->name, "backward-weight without dbias");
    expect(effnet_conv_backward_weight(ctx3, plan, x, xl, dy, yl, dw1, wl, NULL, 0, 0),
           EFFNET_OK, NULL, what);
    label(what, sizeof what, c->name, "backward-weight without dbias matches the reference");
    expect_close(dw1, rdw, NULL, wl, 1.0, what);

    workspace_case(c->name, ctx3, plan, c->family, x, xl, w, wl, b, bl, dy, yl);
    workspace_case(c->name, ctx1, plan, c->family, x, xl, w, wl, b, bl, dy, yl);
    packed_case(c->name, ctx3, plan, x, xl, w, wl, b, bl, yl);

    label(what, sizeof what, c->name, "plan destroy");
    expect(effnet_conv_plan_destroy(plan), EFFNET_OK, NULL, what);

    free(x); free(w); free(b); free(dy); free(y3); free(y1); free(dx3); free(dx1);
    free(dw3); free(dw1); free(db3); free(db1);
    free(ry); free(rdx); free(rdw); free(rdb); free(bias_rows);
}

/* ------------------------------------------------------------------------ misuse */

static void *other_thread(void *arg) {
    const char **seen = arg;
    /* The main thread's error is not visible here... */
    seen[0] = effnet_last_error()[0] == '\0' ? "empty" : "not empty";
    /* ...and an error here does not replace the main thread's. */
    effnet_context_create(0, NULL);
    seen[1] = effnet_last_error()[0] != '\0' ? "set" : "unset";
    return NULL;
}

static void misuse(effnet_context *ctx) {
    effnet_status st;
    effnet_conv_plan *plan = NULL;
    effnet_context *c2 = NULL;
    /* A pointwise 6 -> 6 convolution: x and y have the same size, for overlap tests. */
    effnet_conv_desc good = make_desc(1, 4, 4, 6, 6, 6, 1, 1, 0, 0, 0, 0);
    const size_t n = 1 * 4 * 4 * 6, wl = 36, bl = 6;
    float *x = random_floats(n + 1), *y = filled(n + 1, 0), *w = random_floats(wl);
    float *b = random_floats(bl), *dw = filled(wl, 0);

    /* Contexts. */
    expect(effnet_context_create(1, NULL), EFFNET_INVALID_ARGUMENT, "out_ctx",
           "context create: NULL out pointer");
    c2 = (effnet_context *)0x1;
    expect(effnet_context_create(UINT32_MAX, &c2), EFFNET_INVALID_ARGUMENT, "threads",
           "context create: huge thread count");
    check(c2 == (effnet_context *)0x1, "context create: out pointer untouched on failure",
          "written");
    expect(effnet_context_destroy(NULL), EFFNET_OK, NULL, "context destroy: NULL is a no-op");
    expect(effnet_conv_plan_destroy(NULL), EFFNET_OK, NULL, "plan destroy: NULL is a no-op");
    expect(effnet_context_create(0, &c2), EFFNET_OK, NULL, "context create: default threads");
    expect(effnet_context_destroy(c2), EFFNET_OK, NULL, "context destroy");
    expect(effnet_context_destroy(c2), EFFNET_INVALID_ARGUMENT, "not a live",
           "context destroy: twice");
    expect(effnet_conv_plan_create(c2, &good, &plan), EFFNET_INVALID_ARGUMENT, "not a live",
           "plan create: destroyed context");
    for (int i = 0; i < 8; i++) {
        effnet_context *c = NULL;
        st = effnet_context_create((uint32_t)(1 + i % 3), &c);
        if (st == EFFNET_OK) st = effnet_context_destroy(c);
        if (st != EFFNET_OK) break;
    }
    expect(st, EFFNET_OK, NULL, "contexts: create and destroy 8 times");

    /* Plan creation: handles and pointers. */
    expect(effnet_conv_plan_create(NULL, &good, &plan), EFFNET_INVALID_ARGUMENT, "ctx",
           "plan create: NULL context");
    expect(effnet_conv_plan_create(ctx, NULL, &plan), EFFNET_INVALID_ARGUMENT, "desc",
           "plan create: NULL descriptor");
    expect(effnet_conv_plan_create(ctx, &good, NULL), EFFNET_INVALID_ARGUMENT, "out_plan",
           "plan create: NULL out pointer");
    {
        int not_a_context = 0;
        expect(effnet_conv_plan_create((effnet_context *)&not_a_context, &good, &plan),
               EFFNET_INVALID_ARGUMENT, "not a live", "plan create: garbage context pointer");
    }
    {
        unsigned char raw[sizeof(effnet_conv_desc) + 8];
        unsigned char *odd = raw + 1;
        if (((uintptr_t)odd % 8) == 0) odd++;
        memcpy(odd, &good, sizeof good);
        expect(effnet_conv_plan_create(ctx, (const effnet_conv_desc *)(void *)odd, &plan),
               EFFNET_INVALID_ARGUMENT, "aligned", "plan create: misaligned descriptor");
    }

    /* Descriptor: struct_size. */
    {
        effnet_conv_desc d = good;
        d.struct_size = 8;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT,
               "struct_size", "descriptor: struct_size too small");
        d.struct_size = 0;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT,
               "struct_size", "descriptor: struct_size not set");
        d.struct_size = SIZE_MAX;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT,
               "struct_size", "descriptor: struct_size huge");
    }
    {
        struct {
            effnet_conv_desc d;
            uint64_t newer_fields[4];
        } big;
        memset(&big, 0, sizeof big);
        big.d = good;
        big.d.struct_size = sizeof big;
        expect(effnet_conv_plan_create(ctx, &big.d, &plan), EFFNET_OK, NULL,
               "descriptor: larger struct_size with zero tail is accepted");
        expect(effnet_conv_plan_destroy(plan), EFFNET_OK, NULL, "plan destroy");
        plan = NULL;
        big.newer_fields[2] = 1;
        expect(effnet_conv_plan_create(ctx, &big.d, &plan), EFFNET_INVALID_ARGUMENT,
               "not zero", "descriptor: larger struct_size with a non-zero tail");
    }

    /* Descriptor: values. */
    {
        effnet_conv_desc d;
        d = good; d.batch = 0;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "batch",
               "descriptor: zero batch");
        d = good; d.in_h = -5;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "in_h",
               "descriptor: negative height");
        d = good; d.pad_left = -1;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "pad_left",
               "descriptor: negative padding");
        d = good; d.stride_w = 0;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "stride_w",
               "descriptor: zero stride");
        d = good; d.group_size = 4;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "group_size",
               "descriptor: group size does not divide the input channels");
        d = make_desc(1, 8, 8, 32, 24, 16, 3, 1, 1, 1, 1, 1);
        d.out_channels = 25;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "groups",
               "descriptor: groups do not divide the output channels");
        d = good; d.kernel_h = 7;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "kernel",
               "descriptor: kernel larger than the padded input");
        d = make_desc(1, 8, 8, 4, 4, 1, 3, 1, 3, 0, 0, 0);
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "padding",
               "descriptor: padding as large as the kernel");
        d = good; d.batch = INT64_MAX;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "overflow",
               "descriptor: huge batch (buffer size overflows)");
        d = good; d.in_channels = INT64_MAX; d.group_size = INT64_MAX; d.out_channels = 1;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, NULL,
               "descriptor: huge channel count");
        d = good; d.dilation_h = INT64_MAX; d.kernel_h = 3;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, NULL,
               "descriptor: huge dilation");
        d = good; d.dtype = EFFNET_DTYPE_F16;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_UNSUPPORTED, "F16",
               "descriptor: f16 is not supported yet");
        d = good; d.dtype = 99;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "dtype",
               "descriptor: unknown dtype");
        d = good; d.reserved = 3;
        expect(effnet_conv_plan_create(ctx, &d, &plan), EFFNET_INVALID_ARGUMENT, "reserved",
               "descriptor: non-zero reserved field");
        check(plan == NULL, "plan create: out pointer untouched on failure", "written");
    }

    /* A good plan for the buffer checks. */
    expect(effnet_conv_plan_create(ctx, &good, &plan), EFFNET_OK, NULL, "plan create");
    {
        effnet_conv_shape s;
        memset(&s, 0, sizeof s);
        expect(effnet_conv_plan_shape(plan, NULL), EFFNET_INVALID_ARGUMENT, "out_shape",
               "shape: NULL out pointer");
        expect(effnet_conv_plan_shape(plan, &s), EFFNET_INVALID_ARGUMENT, "struct_size",
               "shape: struct_size not set");
        s.struct_size = sizeof s;
        expect(effnet_conv_plan_shape(NULL, &s), EFFNET_INVALID_ARGUMENT, "plan",
               "shape: NULL plan");
        expect(effnet_conv_plan_shape((effnet_conv_plan *)ctx, &s), EFFNET_INVALID_ARGUMENT,
               "effnet_context", "shape: a context passed as a plan");
    }
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl, b, bl, y, n), EFFNET_OK, NULL,
           "forward: good call (the kernels are linked)");
    expect(effnet_conv_forward(NULL, plan, x, n, w, wl, b, bl, y, n), EFFNET_INVALID_ARGUMENT,
           "ctx", "forward: NULL context");
    expect(effnet_conv_forward(ctx, NULL, x, n, w, wl, b, bl, y, n), EFFNET_INVALID_ARGUMENT,
           "plan", "forward: NULL plan");
    expect(effnet_conv_forward((effnet_context *)plan, plan, x, n, w, wl, b, bl, y, n),
           EFFNET_INVALID_ARGUMENT, "effnet_conv_plan", "forward: a plan passed as a context");
    expect(effnet_conv_forward(ctx, plan, NULL, n, w, wl, b, bl, y, n), EFFNET_INVALID_ARGUMENT,
           "`x` is NULL", "forward: NULL x");
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl, b, bl, NULL, n),
           EFFNET_INVALID_ARGUMENT, "`y` is NULL", "forward: NULL y");
    expect(effnet_conv_forward(ctx, plan, x, n - 1, w, wl, b, bl, y, n),
           EFFNET_INVALID_ARGUMENT, "`x` has", "forward: x count too small");
    expect(effnet_conv_forward(ctx, plan, x, 0, w, wl, b, bl, y, n), EFFNET_INVALID_ARGUMENT,
           "`x` has 0", "forward: zero x count");
    expect(effnet_conv_forward(ctx, plan, x, SIZE_MAX, w, wl, b, bl, y, n),
           EFFNET_INVALID_ARGUMENT, "`x` has", "forward: huge x count");
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl, b, bl, y, n + 1),
           EFFNET_INVALID_ARGUMENT, "`y` has", "forward: y count too large");
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl + 1, b, bl, y, n),
           EFFNET_INVALID_ARGUMENT, "`w` has", "forward: wrong weight count");
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl, b, bl - 1, y, n),
           EFFNET_INVALID_ARGUMENT, "`bias` has", "forward: wrong bias count");
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl, NULL, bl, y, n),
           EFFNET_INVALID_ARGUMENT, "`bias` is NULL", "forward: NULL bias with a count");
    expect(effnet_conv_forward(ctx, plan, (const float *)(const void *)((const char *)x + 1), n,
                               w, wl, b, bl, y, n),
           EFFNET_INVALID_ARGUMENT, "aligned", "forward: misaligned x");
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl, b, bl,
                               (float *)(void *)((char *)y + 2), n),
           EFFNET_INVALID_ARGUMENT, "aligned", "forward: misaligned y");
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl, b, bl, x, n), EFFNET_INVALID_ARGUMENT,
           "overlap", "forward: y is x (in place)");
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl, b, bl, x + 1, n),
           EFFNET_INVALID_ARGUMENT, "overlap", "forward: y overlaps x");
    expect(effnet_conv_backward_data(ctx, plan, y, n, w, wl, NULL, n), EFFNET_INVALID_ARGUMENT,
           "`dx` is NULL", "backward-data: NULL dx");
    expect(effnet_conv_backward_data(ctx, plan, y, n, w, wl, y, n), EFFNET_INVALID_ARGUMENT,
           "overlap", "backward-data: dx is dy");
    expect(effnet_conv_backward_data(ctx, plan, y, n, NULL, 0, x, n), EFFNET_INVALID_ARGUMENT,
           "`w` is NULL", "backward-data: NULL weight");
    expect(effnet_conv_backward_weight(ctx, plan, x, n, y, n, dw, wl, b, bl, 2),
           EFFNET_INVALID_ARGUMENT, "accumulate", "backward-weight: accumulate = 2");
    expect(effnet_conv_backward_weight(ctx, plan, x, n, y, n, dw, wl, dw, bl, 0),
           EFFNET_INVALID_ARGUMENT, "overlap", "backward-weight: dbias overlaps dw");
    expect(effnet_conv_backward_weight(ctx, plan, x, n, y, n, NULL, wl, NULL, 0, 0),
           EFFNET_INVALID_ARGUMENT, "`dw` is NULL", "backward-weight: NULL dw");
    expect(effnet_conv_backward_weight(ctx, plan, x, n, y, n, dw, wl, NULL, 5, 0),
           EFFNET_INVALID_ARGUMENT, "dbias", "backward-weight: NULL dbias with a count");

    /* Workspaces: the size query and the _ws passes' own misuse. */
    {
        size_t bytes = 0;
        expect(effnet_conv_workspace_size(ctx, plan, 7, &bytes), EFFNET_INVALID_ARGUMENT,
               "effnet_conv_pass", "workspace size: unknown pass");
        expect(effnet_conv_workspace_size(ctx, plan, EFFNET_CONV_PASS_FORWARD, NULL),
               EFFNET_INVALID_ARGUMENT, "out_bytes", "workspace size: NULL out pointer");
        expect(effnet_conv_workspace_size(NULL, plan, EFFNET_CONV_PASS_FORWARD, &bytes),
               EFFNET_INVALID_ARGUMENT, "ctx", "workspace size: NULL context");
        expect(effnet_conv_workspace_size(ctx, NULL, EFFNET_CONV_PASS_FORWARD, &bytes),
               EFFNET_INVALID_ARGUMENT, "plan", "workspace size: NULL plan");
        expect(effnet_conv_workspace_size(ctx, plan, EFFNET_CONV_PASS_FORWARD, &bytes),
               EFFNET_OK, NULL, "workspace size: forward");
        check(bytes > 0, "workspace size: a pointwise forward needs one", "0 bytes");
        unsigned char *ws = malloc(bytes + 8);
        expect(effnet_conv_forward_ws(ctx, plan, x, n, w, wl, b, bl, y, n, ws, bytes),
               EFFNET_OK, NULL, "forward_ws: good call");
        expect(effnet_conv_forward_ws(ctx, plan, x, n, w, wl, b, bl, y, n, ws, bytes + 8),
               EFFNET_OK, NULL, "forward_ws: a larger workspace is fine");
        expect(effnet_conv_forward_ws(ctx, plan, x, n, w, wl, b, bl, y, n, ws, bytes - 4),
               EFFNET_INVALID_ARGUMENT, "effnet_conv_workspace_size",
               "forward_ws: workspace one float short");
        expect(effnet_conv_forward_ws(ctx, plan, x, n, w, wl, b, bl, y, n, NULL, 0),
               EFFNET_INVALID_ARGUMENT, "workspace", "forward_ws: NULL workspace, size 0");
        expect(effnet_conv_forward_ws(ctx, plan, x, n, w, wl, b, bl, y, n, NULL, bytes),
               EFFNET_INVALID_ARGUMENT, "`workspace_bytes` is", "forward_ws: NULL workspace with a size");
        expect(effnet_conv_forward_ws(ctx, plan, x, n, w, wl, b, bl, y, n, ws + 1, bytes),
               EFFNET_INVALID_ARGUMENT, "aligned", "forward_ws: misaligned workspace");
        expect(effnet_conv_forward_ws(ctx, plan, x, n, w, wl, b, bl, y, n, y, n * 4),
               EFFNET_INVALID_ARGUMENT, "overlap", "forward_ws: workspace is y");
        expect(effnet_conv_forward_ws(ctx, plan, x, n, w, wl, b, bl, y, n, ws, SIZE_MAX),
               EFFNET_INVALID_ARGUMENT, "address space", "forward_ws: huge workspace size");
        expect(effnet_conv_backward_data_ws(ctx, plan, y, n, w, wl, x, n, ws, 4),
               EFFNET_INVALID_ARGUMENT, "workspace", "backward_data_ws: workspace too small");
        expect(effnet_conv_backward_weight_ws(ctx, plan, x, n, y, n, dw, wl, NULL, 0, 0, dw,
                                              wl * 4),
               EFFNET_INVALID_ARGUMENT, "overlap", "backward_weight_ws: workspace is dw");
        expect(effnet_conv_backward_weight_ws(ctx, plan, x, n, y, n, dw, wl, NULL, 0, 3, ws,
                                              bytes),
               EFFNET_INVALID_ARGUMENT, "accumulate", "backward_weight_ws: accumulate = 3");
        free(ws);
    }

    /* The last error is per thread, and cleared by the next successful call. */
    {
        const char *seen[2] = {"?", "?"};
        pthread_t t;
        char mine[256];
        effnet_conv_forward(ctx, plan, NULL, n, w, wl, b, bl, y, n);
        snprintf(mine, sizeof mine, "%s", effnet_last_error());
        pthread_create(&t, NULL, other_thread, (void *)seen);
        pthread_join(t, NULL);
        check(strcmp(seen[0], "empty") == 0 && strcmp(seen[1], "set") == 0,
              "last error: thread-local", "another thread saw this thread's error");
        check(mine[0] != '\0' && strcmp(mine, effnet_last_error()) == 0,
              "last error: kept until the next call on this thread",
              "changed by another thread");
        expect(effnet_conv_forward(ctx, plan, x, n, w, wl, b, bl, y, n), EFFNET_OK, NULL,
               "last error: cleared by a successful call");
        check(effnet_abi_version() == EFFNET_ABI_VERSION, "abi version matches the header",
              "mismatch");
    }

    /* A destroyed plan. */
    expect(effnet_conv_plan_destroy(plan), EFFNET_OK, NULL, "plan destroy");
    expect(effnet_conv_forward(ctx, plan, x, n, w, wl, b, bl, y, n), EFFNET_INVALID_ARGUMENT,
           "not a live", "forward: destroyed plan");
    expect(effnet_conv_backward_data(ctx, plan, y, n, w, wl, x, n), EFFNET_INVALID_ARGUMENT,
           "not a live", "backward-data: destroyed plan");
    {
        size_t bytes = 0;
        expect(effnet_conv_workspace_size(ctx, plan, EFFNET_CONV_PASS_FORWARD, &bytes),
               EFFNET_INVALID_ARGUMENT, "not a live", "workspace size: destroyed plan");
    }
    expect(effnet_conv_plan_destroy(plan), EFFNET_INVALID_ARGUMENT, "not a live",
           "plan destroy: twice");

    free(x); free(y); free(w); free(b); free(dw);
}

#include "ops_test.c"

/* The fused epilogue (post-ops): for every activation, with and without a residual,
 * plain and packed weights, the fused forward gives the bits of the unfused sequence
 * conv -> activation -> add; then the misuse a fused plan must reject. */
static void fused_case(const conv_case *c, effnet_context *ctx) {
    char what[256];
    effnet_conv_plan *plain_plan = NULL;
    expect(effnet_conv_plan_create(ctx, &c->desc, &plain_plan), EFFNET_OK, NULL,
           "fused: the unfused plan");
    effnet_conv_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_conv_plan_shape(plain_plan, &s), EFFNET_OK, NULL, "fused: shape");
    size_t xl = s.x_len, wl = s.w_len, yl = s.y_len, bl = (size_t)c->desc.out_channels;
    float *x = random_floats(xl), *w = random_floats(wl), *b = random_floats(bl);
    float *r = random_floats(yl);
    float *conv_y = filled(yl, NAN), *want = filled(yl, NAN), *got = filled(yl, NAN);
    expect(effnet_conv_forward(ctx, plain_plan, x, xl, w, wl, b, bl, conv_y, yl), EFFNET_OK,
           NULL, "fused: unfused forward");
    const uint32_t acts[] = {EFFNET_ACT_IDENTITY, EFFNET_ACT_RELU, EFFNET_ACT_SIGMOID,
                             EFFNET_ACT_SWISH};
    for (size_t a = 0; a < 4; a++) {
        for (uint32_t res = 0; res < 2; res++) {
            effnet_conv_post_ops post;
            memset(&post, 0, sizeof post);
            post.struct_size = sizeof post;
            post.activation = acts[a];
            post.residual = res;
            effnet_conv_plan *plan = NULL;
            snprintf(what, sizeof what, "%s fused act %u residual %u: plan", c->name,
                     acts[a], res);
            expect(effnet_conv_plan_create_fused(ctx, &c->desc, &post, &plan), EFFNET_OK,
                   NULL, what);
            if (plan == NULL) continue;
            effnet_conv_post_ops back;
            memset(&back, 0, sizeof back);
            back.struct_size = sizeof back;
            expect(effnet_conv_plan_post_ops(plan, &back), EFFNET_OK, NULL,
                   "fused: post-ops read back");
            check(back.activation == acts[a] && back.residual == res,
                  "fused: post-ops read back equal", "differ");
            /* The unfused sequence. */
            expect(effnet_activation_forward(ctx, acts[a], conv_y, want, yl), EFFNET_OK,
                   NULL, "fused: unfused activation");
            if (res) {
                for (size_t i = 0; i < yl; i++) want[i] += r[i];
            }
            const float *rr = res ? r : NULL;
            size_t rl = res ? yl : 0;
            for (size_t i = 0; i < yl; i++) got[i] = NAN;
            snprintf(what, sizeof what, "%s fused act %u residual %u: plain weights",
                     c->name, acts[a], res);
            expect(effnet_conv_forward_fused(ctx, plan, x, xl, w, wl, NULL, 0, b, bl, rr, rl,
                                             got, yl, NULL, 0),
                   EFFNET_OK, NULL, what);
            snprintf(what, sizeof what, "%s fused act %u residual %u: = unfused bits",
                     c->name, acts[a], res);
            check(memcmp(want, got, yl * sizeof *got) == 0, what, "results differ");
            size_t pbytes = 0;
            expect(effnet_conv_packed_weights_size(plan, &pbytes), EFFNET_OK, NULL,
                   "fused: packed size");
            float *packed = filled(pbytes / 4, NAN);
            expect(effnet_conv_pack_weights(ctx, plan, w, wl, packed, pbytes), EFFNET_OK,
                   NULL, "fused: pack");
            size_t wsbytes = 0;
            expect(effnet_conv_workspace_size(ctx, plan, EFFNET_CONV_PASS_FORWARD, &wsbytes),
                   EFFNET_OK, NULL, "fused: workspace size");
            float *ws = filled(wsbytes / 4 + 1, NAN);
            for (size_t i = 0; i < yl; i++) got[i] = NAN;
            snprintf(what, sizeof what,
                     "%s fused act %u residual %u: packed weights, caller workspace",
                     c->name, acts[a], res);
            expect(effnet_conv_forward_fused(ctx, plan, x, xl, NULL, 0, packed, pbytes, b, bl,
                                             rr, rl, got, yl, ws, wsbytes),
                   EFFNET_OK, NULL, what);
            check(memcmp(want, got, yl * sizeof *got) == 0, what, "results differ");
            if (res) {
                expect(effnet_conv_forward_fused(ctx, plan, x, xl, w, wl, NULL, 0, b, bl,
                                                 NULL, 0, got, yl, NULL, 0),
                       EFFNET_INVALID_ARGUMENT, "residual", "fused: residual missing");
                expect(effnet_conv_forward_fused(ctx, plan, x, xl, w, wl, NULL, 0, b, bl, r,
                                                 yl - 1, got, yl, NULL, 0),
                       EFFNET_INVALID_ARGUMENT, "residual", "fused: residual one short");
                expect(effnet_conv_forward_fused(ctx, plan, x, xl, w, wl, NULL, 0, b, bl, got,
                                                 yl, got, yl, NULL, 0),
                       EFFNET_INVALID_ARGUMENT, NULL, "fused: residual overlaps y");
                expect(effnet_conv_forward(ctx, plan, x, xl, w, wl, b, bl, got, yl),
                       EFFNET_INVALID_ARGUMENT, "residual",
                       "fused: plain forward on a residual plan");
            } else {
                expect(effnet_conv_forward_fused(ctx, plan, x, xl, w, wl, NULL, 0, b, bl, r,
                                                 yl, got, yl, NULL, 0),
                       EFFNET_INVALID_ARGUMENT, "residual", "fused: residual not wanted");
                /* Without a residual, the ordinary forward applies the activation. */
                for (size_t i = 0; i < yl; i++) got[i] = NAN;
                expect(effnet_conv_forward(ctx, plan, x, xl, w, wl, b, bl, got, yl), EFFNET_OK,
                       NULL, "fused: plain forward applies the activation");
                check(memcmp(want, got, yl * sizeof *got) == 0,
                      "fused: plain forward = unfused bits", "results differ");
            }
            expect(effnet_conv_forward_fused(ctx, plan, x, xl, w, wl, packed, pbytes, b, bl,
                                             rr, rl, got, yl, NULL, 0),
                   EFFNET_INVALID_ARGUMENT, "exactly one", "fused: both weight forms");
            expect(effnet_conv_forward_fused(ctx, plan, x, xl, NULL, 0, NULL, 0, b, bl, rr, rl,
                                             got, yl, NULL, 0),
                   EFFNET_INVALID_ARGUMENT, "exactly one", "fused: no weights");
            free(packed);
            free(ws);
            expect(effnet_conv_plan_destroy(plan), EFFNET_OK, NULL, "fused: destroy");
        }
    }
    effnet_conv_post_ops bad;
    memset(&bad, 0, sizeof bad);
    bad.struct_size = sizeof bad;
    bad.activation = 99;
    effnet_conv_plan *none = NULL;
    expect(effnet_conv_plan_create_fused(ctx, &c->desc, &bad, &none), EFFNET_INVALID_ARGUMENT,
           "activation", "fused: unknown activation");
    bad.activation = 0;
    bad.residual = 2;
    expect(effnet_conv_plan_create_fused(ctx, &c->desc, &bad, &none), EFFNET_INVALID_ARGUMENT,
           "residual", "fused: residual flag 2");
    bad.residual = 0;
    bad.struct_size = 4;
    expect(effnet_conv_plan_create_fused(ctx, &c->desc, &bad, &none), EFFNET_INVALID_ARGUMENT,
           "struct_size", "fused: short struct_size");
    expect(effnet_conv_plan_create_fused(ctx, &c->desc, NULL, &none), EFFNET_INVALID_ARGUMENT,
           "post_ops", "fused: NULL post-ops");
    check(none == NULL, "fused: no plan written on failure", "a plan was written");
    effnet_conv_post_ops zero;
    memset(&zero, 0, sizeof zero);
    zero.struct_size = sizeof zero;
    expect(effnet_conv_plan_post_ops(plain_plan, &zero), EFFNET_OK, NULL,
           "fused: an unfused plan's post-ops");
    check(zero.activation == 0 && zero.residual == 0, "fused: an unfused plan has none",
          "non-zero");
    expect(effnet_conv_plan_destroy(plain_plan), EFFNET_OK, NULL, "fused: destroy");
    free(x); free(w); free(b); free(r); free(conv_y); free(want); free(got);
}

/* The statistics post-op: the per-image channel sums and sums of squares of the fused
 * output, gathered in the same pass, equal the double sums of that output, are the
 * same bits on 1 and 3 threads and leave the output's bits alone; then misuse. */
static void one_stats_run(effnet_context *ctx, effnet_conv_plan *plan, const float *x,
                          size_t xl, const float *w, size_t wl, const float *b, size_t bl,
                          const float *r, size_t yl, float *y, double *sums, double *squares,
                          size_t nc, const char *what) {
    effnet_conv_post_args args;
    memset(&args, 0, sizeof args);
    args.struct_size = sizeof args;
    args.residual = r;
    args.residual_len = yl;
    args.sums = sums;
    args.sums_len = nc;
    args.squares = squares;
    args.squares_len = nc;
    for (size_t i = 0; i < yl; i++) y[i] = NAN;
    expect(effnet_conv_forward_post(ctx, plan, x, xl, w, wl, NULL, 0, b, bl, &args, y, yl,
                                    NULL, 0),
           EFFNET_OK, NULL, what);
}

/* A LayerNorm on the statistics a convolution gathered for its output `y` (sums and
 * squares, [n][co] doubles): effnet_norm_forward_from_sums_ws gives effnet_norm_forward's
 * y and saved statistics within float rounding, with the library's buffer and with a
 * workspace; a BatchNorm plan and short sums are refused. */
static void norm_from_sums_case(effnet_context *ctx, const char *name, const float *y,
                                const double *sums, const double *squares, size_t n,
                                size_t pixels, size_t co) {
    char what[256];
    effnet_norm_desc nd;
    memset(&nd, 0, sizeof nd);
    nd.struct_size = sizeof nd;
    nd.batch = (int64_t)n; nd.h = (int64_t)pixels; nd.w = 1; nd.channels = (int64_t)co;
    nd.kind = EFFNET_NORM_LAYER; nd.affine = 1; nd.activation = EFFNET_ACT_SWISH;
    effnet_norm_plan *ln = NULL, *bn = NULL;
    expect(effnet_norm_plan_create(ctx, &nd, &ln), EFFNET_OK, NULL, "from sums: LN plan");
    nd.kind = EFFNET_NORM_BATCH;
    expect(effnet_norm_plan_create(ctx, &nd, &bn), EFFNET_OK, NULL, "from sums: BN plan");
    if (ln == NULL || bn == NULL) return;
    effnet_norm_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_norm_plan_shape(ln, &s), EFFNET_OK, NULL, "from sums: shape");
    size_t len = s.x_len, nc = n * co, wsbytes = 0;
    expect(effnet_norm_workspace_size(ctx, ln, EFFNET_NORM_PASS_FORWARD, &wsbytes), EFFNET_OK,
           NULL, "from sums: workspace size");
    float *affine = random_floats(s.affine_len);
    float *want = filled(len, NAN), *got = filled(len, NAN), *ws = filled(wsbytes / 4 + 1, NAN);
    float *saved_want = filled(s.saved_len, NAN), *saved = filled(s.saved_len, NAN);
    expect(effnet_norm_forward(ctx, ln, y, len, affine, s.affine_len, want, len, saved_want,
                               s.saved_len),
           EFFNET_OK, NULL, "from sums: the norm's own forward");
    double *want64 = calloc(len, sizeof *want64), *saved64 = calloc(s.saved_len, sizeof *saved64);
    for (size_t i = 0; i < len; i++) want64[i] = want[i];
    for (size_t i = 0; i < s.saved_len; i++) saved64[i] = saved_want[i];
    for (int with_ws = 0; with_ws < 2; with_ws++) {
        snprintf(what, sizeof what, "%s from sums (%s)", name,
                 with_ws ? "caller workspace" : "library buffer");
        expect(effnet_norm_forward_from_sums_ws(ctx, ln, y, len, affine, s.affine_len, sums,
                                                squares, nc, got, len, saved, s.saved_len,
                                                with_ws ? ws : NULL, with_ws ? wsbytes : 0),
               EFFNET_OK, NULL, what);
        snprintf(what, sizeof what, "%s from sums: y equals the norm's forward", name);
        expect_close(got, want64, NULL, len, 1.0, what);
        snprintf(what, sizeof what, "%s from sums: saved statistics equal", name);
        expect_close(saved, saved64, NULL, s.saved_len, 1.0, what);
    }
    expect(effnet_norm_forward_from_sums_ws(ctx, ln, y, len, affine, s.affine_len, sums,
                                            squares, nc - 1, got, len, saved, s.saved_len,
                                            NULL, 0),
           EFFNET_INVALID_ARGUMENT, "sums", "from sums: short sums");
    expect(effnet_norm_forward_from_sums_ws(ctx, ln, y, len, affine, s.affine_len, sums, NULL,
                                            nc, got, len, saved, s.saved_len, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "squares", "from sums: NULL squares");
    effnet_norm_shape bs;
    memset(&bs, 0, sizeof bs);
    bs.struct_size = sizeof bs;
    expect(effnet_norm_plan_shape(bn, &bs), EFFNET_OK, NULL, "from sums: BN shape");
    /* BatchNorm in training mode adds the samples' sums over the batch. */
    float *bsaved = filled(bs.saved_len, NAN), *bsaved_want = filled(bs.saved_len, NAN);
    expect(effnet_norm_forward(ctx, bn, y, len, affine, bs.affine_len, want, len, bsaved_want,
                               bs.saved_len),
           EFFNET_OK, NULL, "from sums: BatchNorm's own forward");
    expect(effnet_norm_forward_from_sums_ws(ctx, bn, y, len, affine, bs.affine_len, sums,
                                            squares, nc, got, len, bsaved, bs.saved_len, NULL,
                                            0),
           EFFNET_OK, NULL, "from sums: BatchNorm");
    for (size_t i = 0; i < len; i++) want64[i] = want[i];
    expect_close(got, want64, NULL, len, 1.0, "from sums: BatchNorm y equals its forward");
    double *bsaved64 = calloc(bs.saved_len, sizeof *bsaved64);
    for (size_t i = 0; i < bs.saved_len; i++) bsaved64[i] = bsaved_want[i];
    expect_close(bsaved, bsaved64, NULL, bs.saved_len, 1.0,
                 "from sums: BatchNorm saved statistics equal");
    free(bsaved_want); free(bsaved64);
    expect(effnet_norm_plan_destroy(ln), EFFNET_OK, NULL, "from sums: destroy");
    expect(effnet_norm_plan_destroy(bn), EFFNET_OK, NULL, "from sums: destroy");
    free(affine); free(want); free(got); free(ws); free(saved_want); free(saved);
    free(want64); free(saved64); free(bsaved);
}

/* Packed pointwise weights scaled per input channel (a squeeze-excite gate on the
 * weights): the packing of the scaled weights, bit for bit, and the forward pass of
 * the gated input within float rounding; other families, short and unpacked buffers
 * are refused. */
static void scaled_case(const conv_case *c, effnet_context *ctx) {
    char what[256];
    effnet_conv_plan *plan = NULL;
    expect(effnet_conv_plan_create(ctx, &c->desc, &plan), EFFNET_OK, NULL, "scaled: plan");
    if (plan == NULL) return;
    effnet_conv_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_conv_plan_shape(plan, &s), EFFNET_OK, NULL, "scaled: shape");
    size_t ci = (size_t)c->desc.in_channels, co = (size_t)c->desc.out_channels;
    size_t pbytes = 0;
    expect(effnet_conv_packed_weights_size(plan, &pbytes), EFFNET_OK, NULL, "scaled: size");
    float *x = random_floats(s.x_len), *w = random_floats(s.w_len), *g = random_floats(ci);
    for (size_t i = 0; i < ci; i++) g[i] = 0.5f + 0.45f * g[i];
    float *packed = filled(pbytes / 4, 0), *out = filled(pbytes / 4, NAN);
    float *want_p = filled(pbytes / 4, NAN), *gw = filled(s.w_len, 0);
    expect(effnet_conv_pack_weights(ctx, plan, w, s.w_len, packed, pbytes), EFFNET_OK, NULL,
           "scaled: pack");
    effnet_status st =
        effnet_conv_scale_packed_input_channels(plan, packed, pbytes, g, ci, out, pbytes);
    if (c->family != EFFNET_CONV_POINTWISE) {
        snprintf(what, sizeof what, "%s scaled: refused for this family", c->name);
        expect(st, EFFNET_INVALID_ARGUMENT, "pointwise", what);
    } else {
        snprintf(what, sizeof what, "%s scaled: scale the packed weights", c->name);
        expect(st, EFFNET_OK, NULL, what);
        for (size_t i = 0; i < s.w_len; i++) gw[i] = w[i] * g[i / co];
        expect(effnet_conv_pack_weights(ctx, plan, gw, s.w_len, want_p, pbytes), EFFNET_OK,
               NULL, "scaled: pack the scaled weights");
        snprintf(what, sizeof what, "%s scaled: the packing of the scaled weights", c->name);
        check(memcmp(out, want_p, pbytes) == 0, what, "bits differ");
        float *y = filled(s.y_len, NAN), *yg = filled(s.y_len, NAN), *gx = filled(s.x_len, 0);
        for (size_t i = 0; i < s.x_len; i++) gx[i] = x[i] * g[i % ci];
        expect(effnet_conv_forward_packed(ctx, plan, x, s.x_len, out, pbytes, NULL, 0, y,
                                          s.y_len, NULL, 0),
               EFFNET_OK, NULL, "scaled: forward on the scaled weights");
        expect(effnet_conv_forward(ctx, plan, gx, s.x_len, w, s.w_len, NULL, 0, yg, s.y_len),
               EFFNET_OK, NULL, "scaled: forward of the gated input");
        double *yg64 = calloc(s.y_len, sizeof *yg64);
        for (size_t i = 0; i < s.y_len; i++) yg64[i] = yg[i];
        snprintf(what, sizeof what, "%s scaled: forward equals the gated input's", c->name);
        expect_close(y, yg64, NULL, s.y_len, 1.0, what);
        expect(effnet_conv_scale_packed_input_channels(plan, packed, pbytes, g, ci - 1, out,
                                                       pbytes),
               EFFNET_INVALID_ARGUMENT, "scale", "scaled: short scale");
        expect(effnet_conv_scale_packed_input_channels(plan, packed, pbytes, g, ci, out,
                                                       pbytes - 4),
               EFFNET_INVALID_ARGUMENT, "out", "scaled: short out");
        expect(effnet_conv_scale_packed_input_channels(plan, want_p, pbytes, g, ci, want_p,
                                                       pbytes),
               EFFNET_INVALID_ARGUMENT, NULL, "scaled: out overlaps packed");
        for (size_t i = 0; i < pbytes / 4; i++) want_p[i] = 0.5f;
        expect(effnet_conv_scale_packed_input_channels(plan, want_p, pbytes, g, ci, out,
                                                       pbytes),
               EFFNET_INVALID_ARGUMENT, "pack", "scaled: not packed");
        free(y); free(yg); free(gx); free(yg64);
    }
    expect(effnet_conv_plan_destroy(plan), EFFNET_OK, NULL, "scaled: destroy");
    free(x); free(w); free(g); free(packed); free(out); free(want_p); free(gw);
}


static void stats_case(const conv_case *c, effnet_context *ctx1, effnet_context *ctx3) {
    char what[256];
    effnet_conv_post_ops post;
    memset(&post, 0, sizeof post);
    post.struct_size = sizeof post;
    post.activation = EFFNET_ACT_SWISH;
    post.residual = 1;
    effnet_conv_plan *bare = NULL, *plan = NULL, *sums_only = NULL;
    expect(effnet_conv_plan_create_fused(ctx3, &c->desc, &post, &bare), EFFNET_OK, NULL,
           "stats: plan without statistics");
    post.stats = 2;
    expect(effnet_conv_plan_create_fused(ctx3, &c->desc, &post, &plan), EFFNET_OK, NULL,
           "stats: plan with sums and squares");
    post.stats = 1;
    expect(effnet_conv_plan_create_fused(ctx3, &c->desc, &post, &sums_only), EFFNET_OK, NULL,
           "stats: plan with sums");
    if (bare == NULL || plan == NULL || sums_only == NULL) return;
    effnet_conv_post_ops back;
    memset(&back, 0, sizeof back);
    back.struct_size = sizeof back;
    expect(effnet_conv_plan_post_ops(plan, &back), EFFNET_OK, NULL, "stats: read back");
    check(back.stats == 2, "stats: read back equal", "differ");
    effnet_conv_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_conv_plan_shape(plan, &s), EFFNET_OK, NULL, "stats: shape");
    size_t xl = s.x_len, wl = s.w_len, yl = s.y_len, bl = (size_t)c->desc.out_channels;
    size_t n = (size_t)c->desc.batch, co = (size_t)c->desc.out_channels, nc = n * co;
    size_t pixels = yl / nc;
    float *x = random_floats(xl), *w = random_floats(wl), *b = random_floats(bl);
    float *r = random_floats(yl), *want = filled(yl, NAN), *y1 = filled(yl, NAN);
    float *y3 = filled(yl, NAN);
    double *s1 = calloc(nc, sizeof *s1), *q1 = calloc(nc, sizeof *q1);
    double *s3 = calloc(nc, sizeof *s3), *q3 = calloc(nc, sizeof *q3);
    expect(effnet_conv_forward_fused(ctx3, bare, x, xl, w, wl, NULL, 0, b, bl, r, yl, want, yl,
                                     NULL, 0),
           EFFNET_OK, NULL, "stats: output without statistics");
    snprintf(what, sizeof what, "%s stats: 1 thread", c->name);
    one_stats_run(ctx1, plan, x, xl, w, wl, b, bl, r, yl, y1, s1, q1, nc, what);
    snprintf(what, sizeof what, "%s stats: 3 threads", c->name);
    one_stats_run(ctx3, plan, x, xl, w, wl, b, bl, r, yl, y3, s3, q3, nc, what);
    snprintf(what, sizeof what, "%s stats: output bits unchanged", c->name);
    check(memcmp(want, y1, yl * sizeof *y1) == 0 && memcmp(want, y3, yl * sizeof *y3) == 0,
          what, "results differ");
    snprintf(what, sizeof what, "%s stats: same bits on 1 and 3 threads", c->name);
    check(memcmp(s1, s3, nc * sizeof *s1) == 0 && memcmp(q1, q3, nc * sizeof *q1) == 0, what,
          "statistics differ");
    double worst = 0;
    for (size_t img = 0; img < n; img++) {
        for (size_t ch = 0; ch < co; ch++) {
            double sum = 0, sq = 0, abs_sum = 0;
            for (size_t p = 0; p < pixels; p++) {
                double v = want[(img * pixels + p) * co + ch];
                sum += v;
                sq += v * v;
                abs_sum += fabs(v);
            }
            double e1 = fabs(s1[img * co + ch] - sum) / (abs_sum + 1e-30);
            double e2 = fabs(q1[img * co + ch] - sq) / (sq + 1e-30);
            if (e1 > worst) worst = e1;
            if (e2 > worst) worst = e2;
        }
    }
    snprintf(what, sizeof what, "%s stats: sums equal the double sums (rel %.2g)", c->name,
             worst);
    check(worst < 1e-5, what, "too far");
    norm_from_sums_case(ctx3, c->name, want, s1, q1, n, pixels, co);
    /* Misuse. */
    effnet_conv_post_args args;
    memset(&args, 0, sizeof args);
    args.struct_size = sizeof args;
    args.residual = r;
    args.residual_len = yl;
    args.sums = s1;
    args.sums_len = nc;
    expect(effnet_conv_forward_post(ctx3, plan, x, xl, w, wl, NULL, 0, b, bl, &args, y1, yl,
                                    NULL, 0),
           EFFNET_INVALID_ARGUMENT, "squares", "stats: squares missing");
    expect(effnet_conv_forward_post(ctx3, sums_only, x, xl, w, wl, NULL, 0, b, bl, &args, y1,
                                    yl, NULL, 0),
           EFFNET_OK, NULL, "stats: sums only");
    args.sums_len = nc - 1;
    expect(effnet_conv_forward_post(ctx3, sums_only, x, xl, w, wl, NULL, 0, b, bl, &args, y1,
                                    yl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "sums", "stats: sums one short");
    args.sums_len = nc;
    expect(effnet_conv_forward_post(ctx3, bare, x, xl, w, wl, NULL, 0, b, bl, &args, y1, yl,
                                    NULL, 0),
           EFFNET_INVALID_ARGUMENT, "sums", "stats: sums not gathered");
    args.sums = (double *)(void *)y1;
    args.sums_len = nc;
    if (nc * 2 <= yl) {
        expect(effnet_conv_forward_post(ctx3, sums_only, x, xl, w, wl, NULL, 0, b, bl, &args,
                                        y1, yl, NULL, 0),
               EFFNET_INVALID_ARGUMENT, NULL, "stats: sums overlap y");
    }
    expect(effnet_conv_forward_fused(ctx3, sums_only, x, xl, w, wl, NULL, 0, b, bl, r, yl, y1,
                                     yl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "sums", "stats: the fused entry has no statistics");
    expect(effnet_conv_forward_post(ctx3, sums_only, x, xl, w, wl, NULL, 0, b, bl, NULL, y1,
                                    yl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "args", "stats: NULL args");
    post.stats = 3;
    effnet_conv_plan *none = NULL;
    expect(effnet_conv_plan_create_fused(ctx3, &c->desc, &post, &none),
           EFFNET_INVALID_ARGUMENT, "stats", "stats: stats 3");
    /* A caller built before `stats` existed: a 16-byte struct, no statistics. */
    post.stats = 0;
    post.struct_size = 16;
    expect(effnet_conv_plan_create_fused(ctx3, &c->desc, &post, &none), EFFNET_OK, NULL,
           "stats: the first version's struct_size");
    if (none != NULL) {
        memset(&back, 0xff, sizeof back);
        back.struct_size = 16;
        expect(effnet_conv_plan_post_ops(none, &back), EFFNET_OK, NULL,
               "stats: read back into the first version's struct");
        check(back.stats == 0xffffffffu && back.residual == 1,
              "stats: a short struct is written as far as it reaches", "wrote past it");
        expect(effnet_conv_plan_destroy(none), EFFNET_OK, NULL, "stats: destroy");
    }
    expect(effnet_conv_plan_destroy(bare), EFFNET_OK, NULL, "stats: destroy");
    expect(effnet_conv_plan_destroy(plan), EFFNET_OK, NULL, "stats: destroy");
    expect(effnet_conv_plan_destroy(sums_only), EFFNET_OK, NULL, "stats: destroy");
    free(x); free(w); free(b); free(r); free(want); free(y1); free(y3);
    free(s1); free(q1); free(s3); free(q3);
}

/* The per-output-channel scale post-op: y = act(s[c] * (conv + bias)) + r, with the
 * identity activation the bits of the unfused sequence (the plain forward, then the
 * multiply and the add in C); 1 and 3 threads alike; misuse named. */
static void scale_case(const conv_case *c, effnet_context *ctx1, effnet_context *ctx3) {
    char what[256];
    effnet_conv_post_ops post;
    memset(&post, 0, sizeof post);
    post.struct_size = sizeof post;
    effnet_conv_plan *bare = NULL, *plan = NULL;
    expect(effnet_conv_plan_create_fused(ctx3, &c->desc, &post, &bare), EFFNET_OK, NULL,
           "scale: plan without post-ops");
    post.scale = 1;
    post.residual = 1;
    expect(effnet_conv_plan_create_fused(ctx3, &c->desc, &post, &plan), EFFNET_OK, NULL,
           "scale: plan with a scale and a residual");
    if (bare == NULL || plan == NULL) return;
    effnet_conv_post_ops back;
    memset(&back, 0, sizeof back);
    back.struct_size = sizeof back;
    expect(effnet_conv_plan_post_ops(plan, &back), EFFNET_OK, NULL, "scale: read back");
    check(back.scale == 1 && back.residual == 1, "scale: read back equal", "differ");
    effnet_conv_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_conv_plan_shape(plan, &s), EFFNET_OK, NULL, "scale: shape");
    size_t xl = s.x_len, wl = s.w_len, yl = s.y_len, co = (size_t)c->desc.out_channels;
    float *x = random_floats(xl), *w = random_floats(wl), *b = random_floats(co);
    float *sc = random_floats(co), *r = random_floats(yl);
    float *want = filled(yl, NAN), *y1 = filled(yl, NAN), *y3 = filled(yl, NAN);
    sc[0] = 0.0f;
    expect(effnet_conv_forward(ctx3, bare, x, xl, w, wl, b, co, want, yl),
           EFFNET_OK, NULL, "scale: the unfused forward");
    for (size_t i = 0; i < yl; i++) {
        float v = want[i] * sc[i % co];
        want[i] = v + r[i];
    }
    effnet_conv_post_args args;
    memset(&args, 0, sizeof args);
    args.struct_size = sizeof args;
    args.residual = r;
    args.residual_len = yl;
    args.scale = sc;
    args.scale_len = co;
    expect(effnet_conv_forward_post(ctx1, plan, x, xl, w, wl, NULL, 0, b, co, &args, y1, yl,
                                    NULL, 0),
           EFFNET_OK, NULL, "scale: 1 thread");
    expect(effnet_conv_forward_post(ctx3, plan, x, xl, w, wl, NULL, 0, b, co, &args, y3, yl,
                                    NULL, 0),
           EFFNET_OK, NULL, "scale: 3 threads");
    snprintf(what, sizeof what, "%s scale: the bits of the unfused sequence", c->name);
    check(memcmp(want, y1, yl * sizeof *y1) == 0 && memcmp(want, y3, yl * sizeof *y3) == 0,
          what, "results differ");
    /* Misuse. */
    args.scale_len = co - 1;
    expect(effnet_conv_forward_post(ctx3, plan, x, xl, w, wl, NULL, 0, b, co, &args, y1, yl,
                                    NULL, 0),
           EFFNET_INVALID_ARGUMENT, "scale", "scale: one short");
    args.scale = NULL;
    args.scale_len = 0;
    expect(effnet_conv_forward_post(ctx3, plan, x, xl, w, wl, NULL, 0, b, co, &args, y1, yl,
                                    NULL, 0),
           EFFNET_INVALID_ARGUMENT, "scale", "scale: missing");
    expect(effnet_conv_forward_fused(ctx3, plan, x, xl, w, wl, NULL, 0, b, co, r, yl, y1, yl,
                                     NULL, 0),
           EFFNET_INVALID_ARGUMENT, "scale", "scale: the fused entry has no scale");
    args.scale = sc;
    args.scale_len = co;
    args.residual = NULL;
    args.residual_len = 0;
    expect(effnet_conv_forward_post(ctx3, bare, x, xl, w, wl, NULL, 0, b, co, &args, y1, yl,
                                    NULL, 0),
           EFFNET_INVALID_ARGUMENT, "scale", "scale: not in the plan");
    /* A caller built before `scale` existed passes the shorter post_args. */
    args.struct_size = offsetof(effnet_conv_post_args, scale);
    expect(effnet_conv_forward_post(ctx3, bare, x, xl, w, wl, NULL, 0, b, co, &args, y1, yl,
                                    NULL, 0),
           EFFNET_OK, NULL, "scale: the previous post_args size");
    post.scale = 2;
    effnet_conv_plan *none = NULL;
    expect(effnet_conv_plan_create_fused(ctx3, &c->desc, &post, &none),
           EFFNET_INVALID_ARGUMENT, "scale", "scale: scale 2");
    expect(effnet_conv_plan_destroy(bare), EFFNET_OK, NULL, "scale: destroy");
    expect(effnet_conv_plan_destroy(plan), EFFNET_OK, NULL, "scale: destroy");
    free(x); free(w); free(b); free(sc); free(r); free(want); free(y1); free(y3);
}

/* The forward prologue (pre-ops): x' = p * swish(a*x + b) + q per image and input
 * channel, with a residual epilogue, against the reference convolution of x'
 * computed here; 1 and 3 threads give the same bits; misuse is rejected. */
static void pre_case(const conv_case *c, effnet_context *ctx1, effnet_context *ctx3) {
    char what[256];
    effnet_conv_pre_ops pre;
    memset(&pre, 0, sizeof pre);
    pre.struct_size = sizeof pre;
    pre.enabled = 1;
    pre.shift = 1;
    pre.activation = EFFNET_ACT_SWISH;
    pre.out_scale = 1;
    pre.out_shift = 1;
    effnet_conv_post_ops post;
    memset(&post, 0, sizeof post);
    post.struct_size = sizeof post;
    post.residual = 1;
    effnet_conv_plan *plan = NULL;
    snprintf(what, sizeof what, "%s pre-ops: plan", c->name);
    expect(effnet_conv_plan_create_ops(ctx3, &c->desc, &pre, &post, &plan), EFFNET_OK, NULL,
           what);
    if (plan == NULL) return;
    effnet_conv_pre_ops back;
    memset(&back, 0, sizeof back);
    back.struct_size = sizeof back;
    expect(effnet_conv_plan_pre_ops(plan, &back), EFFNET_OK, NULL, "pre-ops: read back");
    check(memcmp(&back, &pre, sizeof pre) == 0, "pre-ops: read back equal", "differ");
    effnet_conv_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_conv_plan_shape(plan, &s), EFFNET_OK, NULL, "pre-ops: shape");
    size_t xl = s.x_len, wl = s.w_len, yl = s.y_len, co = (size_t)c->desc.out_channels;
    size_t ci = (size_t)c->desc.in_channels, nc = (size_t)c->desc.batch * ci;
    float *x = random_floats(xl), *w = random_floats(wl), *bias = random_floats(co);
    float *a = random_floats(nc), *b = random_floats(nc), *p = random_floats(nc);
    float *q = random_floats(nc), *r = random_floats(yl), *xt = filled(xl, 0.0f);
    float *y1 = filled(yl, NAN), *y3 = filled(yl, NAN);
    double *want = calloc(yl, sizeof *want);
    for (size_t i = 0; i < xl; i++) {
        size_t k = i / (xl / (size_t)c->desc.batch) * ci + i % ci;
        double u = (double)a[k] * x[i] + b[k];
        xt[i] = (float)(p[k] * (u / (1.0 + exp(-u))) + q[k]);
    }
    dims d = dims_of(&c->desc);
    reference(&d, FORWARD, xt, w, NULL, want);
    for (size_t i = 0; i < yl; i++) want[i] += (double)bias[i % co] + r[i];
    effnet_conv_post_args args;
    memset(&args, 0, sizeof args);
    args.struct_size = sizeof args;
    args.residual = r;
    args.residual_len = yl;
    args.pre_scale = a;
    args.pre_scale_len = nc;
    args.pre_shift = b;
    args.pre_shift_len = nc;
    args.pre_out_scale = p;
    args.pre_out_scale_len = nc;
    args.pre_out_shift = q;
    args.pre_out_shift_len = nc;
    expect(effnet_conv_forward_post(ctx1, plan, x, xl, w, wl, NULL, 0, bias, co, &args, y1,
                                    yl, NULL, 0),
           EFFNET_OK, NULL, "pre-ops: 1 thread");
    expect(effnet_conv_forward_post(ctx3, plan, x, xl, w, wl, NULL, 0, bias, co, &args, y3,
                                    yl, NULL, 0),
           EFFNET_OK, NULL, "pre-ops: 3 threads");
    snprintf(what, sizeof what, "%s pre-ops: matches the reference of x'", c->name);
    expect_close(y3, want, NULL, yl, 1.0, what);
    check(memcmp(y1, y3, yl * sizeof *y1) == 0, "pre-ops: 1 and 3 threads, the same bits",
          "results differ");
    /* Misuse: operands missing, short or not in the plan; plain entry points. */
    args.pre_shift_len = nc - 1;
    expect(effnet_conv_forward_post(ctx3, plan, x, xl, w, wl, NULL, 0, bias, co, &args, y1,
                                    yl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "pre_shift", "pre-ops: shift one short");
    args.pre_shift = NULL;
    args.pre_shift_len = 0;
    expect(effnet_conv_forward_post(ctx3, plan, x, xl, w, wl, NULL, 0, bias, co, &args, y1,
                                    yl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "pre_shift", "pre-ops: shift missing");
    expect(effnet_conv_forward_fused(ctx3, plan, x, xl, w, wl, NULL, 0, bias, co, r, yl, y1,
                                     yl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "pre-op", "pre-ops: the fused entry has no operands");
    effnet_conv_plan *bare = NULL;
    expect(effnet_conv_plan_create_ops(ctx3, &c->desc, NULL, &post, &bare), EFFNET_OK, NULL,
           "pre-ops: a plan without them");
    args.pre_shift = b;
    args.pre_shift_len = nc;
    expect(effnet_conv_forward_post(ctx3, bare, x, xl, w, wl, NULL, 0, bias, co, &args, y1,
                                    yl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "pre_scale", "pre-ops: not in the plan");
    /* A caller built before the prologue fields existed: they read as NULL. */
    args.struct_size = offsetof(effnet_conv_post_args, pre_scale);
    expect(effnet_conv_forward_post(ctx3, bare, x, xl, w, wl, NULL, 0, bias, co, &args, y1,
                                    yl, NULL, 0),
           EFFNET_OK, NULL, "pre-ops: the previous post_args size");
    memset(&back, 0, sizeof back);
    back.struct_size = sizeof back;
    expect(effnet_conv_plan_pre_ops(bare, &back), EFFNET_OK, NULL, "pre-ops: none read back");
    check(back.enabled == 0 && back.activation == 0, "pre-ops: none reads as zero", "not zero");
    effnet_conv_plan *none = NULL;
    pre.out_scale = 2;
    expect(effnet_conv_plan_create_ops(ctx3, &c->desc, &pre, NULL, &none),
           EFFNET_INVALID_ARGUMENT, "out_scale", "pre-ops: out_scale 2");
    pre.out_scale = 0;
    pre.enabled = 0;
    expect(effnet_conv_plan_create_ops(ctx3, &c->desc, &pre, NULL, &none),
           EFFNET_INVALID_ARGUMENT, "enabled", "pre-ops: fields set but not enabled");
    pre.enabled = 1;
    pre.activation = 9;
    expect(effnet_conv_plan_create_ops(ctx3, &c->desc, &pre, NULL, &none),
           EFFNET_INVALID_ARGUMENT, "activation", "pre-ops: a bad activation");
    expect(effnet_conv_plan_destroy(bare), EFFNET_OK, NULL, "pre-ops: destroy");
    expect(effnet_conv_plan_destroy(plan), EFFNET_OK, NULL, "pre-ops: destroy");
    free(x); free(w); free(bias); free(a); free(b); free(p); free(q); free(r); free(xt);
    free(y1); free(y3); free(want);
}

int main(void) {
    effnet_context *ctx1 = NULL, *ctx3 = NULL;
    printf("effnet ABI version %u\n", effnet_abi_version());
    expect(effnet_context_create(1, &ctx1), EFFNET_OK, NULL, "context with 1 thread");
    expect(effnet_context_create(3, &ctx3), EFFNET_OK, NULL, "context with 3 threads");
    if (ctx1 == NULL || ctx3 == NULL) return 1;

    const conv_case cases[] = {
        /* Depthwise 3x3 stride 2, odd sizes, 24 channels (not a multiple of 16). */
        {"depthwise 3x3/2", make_desc(2, 9, 7, 24, 24, 1, 3, 2, 1, 1, 1, 1),
         EFFNET_CONV_DEPTHWISE},
        /* Depthwise 5x5 stride 1, TF-SAME-style padding. */
        {"depthwise 5x5/1", make_desc(1, 6, 5, 20, 20, 1, 5, 1, 2, 2, 2, 2),
         EFFNET_CONV_DEPTHWISE},
        /* G16: 32 -> 48 channels in 2 groups, 3x3 stride 2, asymmetric padding. */
        {"G16 3x3/2", make_desc(2, 8, 9, 32, 48, 16, 3, 2, 0, 1, 1, 1), EFFNET_CONV_GROUPED},
        /* Pointwise 19 -> 13, batch 3. */
        {"pointwise 1x1", make_desc(3, 5, 7, 19, 13, 19, 1, 1, 0, 0, 0, 0),
         EFFNET_CONV_POINTWISE},
        /* The dense 3-channel stem, 3x3 stride 2, TF SAME on an odd input. */
        {"stem 3x3/2", make_desc(2, 11, 10, 3, 8, 3, 3, 2, 1, 1, 0, 1), EFFNET_CONV_GROUPED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_case(&cases[i], ctx1, ctx3);
        fused_case(&cases[i], ctx3);
        stats_case(&cases[i], ctx1, ctx3);
        scale_case(&cases[i], ctx1, ctx3);
        scaled_case(&cases[i], ctx3);
        pre_case(&cases[i], ctx1, ctx3);
    }
    misuse(ctx3);
    ops_tests(ctx3);

    expect(effnet_context_destroy(ctx1), EFFNET_OK, NULL, "context destroy");
    expect(effnet_context_destroy(ctx3), EFFNET_OK, NULL, "context destroy");
    printf("effnet C ABI test: %d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
