/*
 * The C ABI at its limits: sizes a caller may give that are far too large (huge
 * Proxy Norm k, channels, classes, counts that wrap size_t), stale handles after their
 * memory was reused, garbage handles, and a bogus EFFNET_SIMD. Each call must return
 * its documented status with a message, leave the out-parameters alone, keep the
 * process alive and print nothing to stderr (the harness, ffi/tests/c_abi.rs, checks
 * that stderr is empty; it also runs this program under valgrind).
 *
 *   limits_test             every case but the environment one
 *   limits_test bogus-simd  run with EFFNET_SIMD=bogus: no context can be made
 *
 * Prints one line per check ("ok   ..." or "FAIL ...") and a closing
 * "effnet C ABI limits test: N passed, M failed"; exits 1 if any check failed.
 */
#include "effnet.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

/* A status and the last-error message: empty on success, non-empty on failure and
 * containing `needle` when one is given. */
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
    snprintf(detail, sizeof detail, "status %d (want %d), message \"%s\"%s%s", (int)got,
             (int)want, msg, needle ? ", expected to contain " : "", needle ? needle : "");
    check(ok, what, detail);
    if (ok && want != EFFNET_OK) {
        printf("     -> %s\n", msg);
    }
}

static effnet_norm_desc layer_norm(int64_t channels) {
    effnet_norm_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.batch = 1;
    d.h = 1;
    d.w = 1;
    d.channels = channels;
    d.kind = EFFNET_NORM_LAYER;
    d.affine = 1;
    return d;
}

static effnet_proxy_norm_desc proxy(int64_t channels, int64_t k) {
    effnet_proxy_norm_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.channels = channels;
    d.k = k;
    d.activation = EFFNET_ACT_SWISH;
    return d;
}

#define SENTINEL ((void *)0x5e57)

static void proxy_k(effnet_context *ctx) {
    static const struct {
        int64_t k;
        const char *name;
    } cases[] = {
        {EFFNET_PROXY_MAX_K + 1, "proxy plan: k = EFFNET_PROXY_MAX_K + 1"},
        {(int64_t)1 << 40, "proxy plan: k = 2^40"},
        {(int64_t)1 << 62, "proxy plan: k = 2^62"},
        {INT64_MAX, "proxy plan: k = INT64_MAX"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        effnet_proxy_norm_desc pd = proxy(8, cases[i].k);
        effnet_proxy_norm_plan *p = SENTINEL;
        expect(effnet_proxy_norm_plan_create(ctx, NULL, &pd, &p), EFFNET_INVALID_ARGUMENT,
               "EFFNET_PROXY_MAX_K", cases[i].name);
        check(p == SENTINEL, "proxy plan: out untouched on failure", NULL);
        effnet_norm_desc nd = layer_norm(8);
        expect(effnet_proxy_norm_plan_create(ctx, &nd, &pd, &p), EFFNET_INVALID_ARGUMENT,
               "EFFNET_PROXY_MAX_K", "fused proxy plan: k beyond the bound");
    }
    effnet_proxy_norm_desc pd = proxy(8, -1);
    effnet_proxy_norm_plan *p = NULL;
    expect(effnet_proxy_norm_plan_create(ctx, NULL, &pd, &p), EFFNET_INVALID_ARGUMENT,
           "k = -1", "proxy plan: negative k");
    pd = proxy(8, EFFNET_PROXY_MAX_K);
    expect(effnet_proxy_norm_plan_create(ctx, NULL, &pd, &p), EFFNET_OK, NULL,
           "proxy plan: k = EFFNET_PROXY_MAX_K is accepted");
    expect(effnet_proxy_norm_plan_destroy(p), EFFNET_OK, NULL, "proxy plan destroy");
}

static void huge_channels(effnet_context *ctx) {
    /* LayerNorm, GroupNorm and the fused Proxy Norm keep no per-channel table in their
     * plans (the group of a channel is computed): 2^45 and 2^40 channels are plans
     * (whose buffers no caller could pass), made at once, with exact sizes. */
    const int64_t sizes[2] = {(int64_t)1 << 45, (int64_t)1 << 40};
    for (int i = 0; i < 2; i++) {
        char what[128];
        const char *label = i == 0 ? "2^45" : "2^40";
        const size_t c = (size_t)sizes[i];
        effnet_norm_plan *np = NULL;
        effnet_norm_desc nd = layer_norm(sizes[i]);
        snprintf(what, sizeof what, "LayerNorm plan: channels = %s", label);
        expect(effnet_norm_plan_create(ctx, &nd, &np), EFFNET_OK, NULL, what);
        effnet_norm_shape ns;
        memset(&ns, 0, sizeof ns);
        ns.struct_size = sizeof ns;
        expect(effnet_norm_plan_shape(np, &ns), EFFNET_OK, NULL, "LayerNorm plan: shape");
        snprintf(what, sizeof what, "LayerNorm plan: exact sizes for %s channels", label);
        check(ns.x_len == c && ns.affine_len == 2 * c, what, NULL);
        expect(effnet_norm_plan_destroy(np), EFFNET_OK, NULL, "LayerNorm plan destroy");
        nd.kind = EFFNET_NORM_GROUP;
        nd.groups = sizes[i];
        np = NULL;
        snprintf(what, sizeof what, "GroupNorm plan: channels = groups = %s", label);
        expect(effnet_norm_plan_create(ctx, &nd, &np), EFFNET_OK, NULL, what);
        expect(effnet_norm_plan_destroy(np), EFFNET_OK, NULL, "GroupNorm plan destroy");
        nd = layer_norm(sizes[i]);
        effnet_proxy_norm_desc pd = proxy(sizes[i], 0);
        effnet_proxy_norm_plan *pp = NULL;
        snprintf(what, sizeof what, "fused Proxy Norm plan: channels = %s", label);
        expect(effnet_proxy_norm_plan_create(ctx, &nd, &pd, &pp), EFFNET_OK, NULL, what);
        expect(effnet_proxy_norm_plan_destroy(pp), EFFNET_OK, NULL, "proxy plan destroy");
    }
    /* BatchNorm keeps no per-channel table in its plan: 2^40 channels is a plan (whose
     * buffers the caller could never pass), with exact sizes. */
    effnet_norm_desc bd = layer_norm((int64_t)1 << 40);
    bd.kind = EFFNET_NORM_BATCH;
    effnet_norm_plan *bp = NULL;
    expect(effnet_norm_plan_create(ctx, &bd, &bp), EFFNET_OK, NULL,
           "BatchNorm plan: channels = 2^40 (nothing allocated per channel)");
    effnet_norm_shape ns;
    memset(&ns, 0, sizeof ns);
    ns.struct_size = sizeof ns;
    expect(effnet_norm_plan_shape(bp, &ns), EFFNET_OK, NULL, "BatchNorm plan: shape");
    check(ns.affine_len == (size_t)1 << 41 && ns.saved_len == (size_t)3 << 40 &&
              ns.running_len == (size_t)1 << 41,
          "BatchNorm plan: exact sizes for 2^40 channels", NULL);
    expect(effnet_norm_plan_destroy(bp), EFFNET_OK, NULL, "BatchNorm plan destroy");
    /* Sizes that wrap: batch * h * w * channels beyond size_t. */
    effnet_norm_desc wrap = layer_norm((int64_t)1 << 40);
    wrap.batch = (int64_t)1 << 30;
    effnet_norm_plan *wp = SENTINEL;
    expect(effnet_norm_plan_create(ctx, &wrap, &wp), EFFNET_INVALID_ARGUMENT, "overflow",
           "norm plan: batch*channels wraps");
    check(wp == SENTINEL, "norm plan: out untouched on overflow", NULL);
    wrap = layer_norm(INT64_MAX);
    expect(effnet_norm_plan_create(ctx, &wrap, &wp), EFFNET_INVALID_ARGUMENT, "overflow",
           "norm plan: channels = INT64_MAX");
}

static void standalone_proxy(effnet_context *ctx) {
    /* 2^62 channels: 4*channels parameters would wrap; rejected, not params_len = 0. */
    effnet_proxy_norm_desc pd = proxy((int64_t)1 << 62, 0);
    effnet_proxy_norm_plan *p = SENTINEL;
    expect(effnet_proxy_norm_plan_create(ctx, NULL, &pd, &p), EFFNET_INVALID_ARGUMENT,
           "overflow", "standalone proxy plan: channels = 2^62");
    check(p == SENTINEL, "standalone proxy plan: out untouched on failure", NULL);
    pd = proxy(INT64_MAX, 0);
    expect(effnet_proxy_norm_plan_create(ctx, NULL, &pd, &p), EFFNET_INVALID_ARGUMENT,
           "overflow", "standalone proxy plan: channels = INT64_MAX");
    /* 2^40 channels: a valid plan (it allocates nothing per channel) with exact sizes. */
    const size_t c = (size_t)1 << 40;
    pd = proxy((int64_t)c, 0);
    expect(effnet_proxy_norm_plan_create(ctx, NULL, &pd, &p), EFFNET_OK, NULL,
           "standalone proxy plan: channels = 2^40");
    effnet_proxy_norm_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_proxy_norm_plan_shape(p, &s), EFFNET_OK, NULL, "standalone proxy: shape");
    check(s.channels == c && s.params_len == 4 * c && s.saved_len == 3 * c &&
              s.scale_offset == 2 * c,
          "standalone proxy: exact sizes for 2^40 channels (no wrap)", NULL);
    /* Workspace sizes grow with x_len, or the query fails: never a smaller size for
     * more rows. */
    size_t small = 0, big = 0, bytes = 12345;
    for (uint32_t pass = 0; pass < 2; pass++) {
        char what[128];
        snprintf(what, sizeof what, "standalone proxy workspace (pass %u): 3 rows", pass);
        expect(effnet_proxy_norm_workspace_size(ctx, p, pass, 3 * c, &small), EFFNET_OK, NULL,
               what);
        const size_t rows[2] = {(size_t)1 << 12, (size_t)1 << 20};
        for (int r = 0; r < 2; r++) {
            effnet_status st = effnet_proxy_norm_workspace_size(ctx, p, pass, rows[r] * c, &big);
            snprintf(what, sizeof what,
                     "standalone proxy workspace (pass %u): 2^%d rows is larger or refused",
                     pass, r == 0 ? 12 : 20);
            const char *msg = effnet_last_error();
            check((st == EFFNET_OK && big >= small && msg[0] == '\0') ||
                      (st == EFFNET_INVALID_ARGUMENT && strstr(msg, "overflow") != NULL),
                  what, msg);
        }
        /* x_len near SIZE_MAX (a multiple of the channels): not addressable. */
        bytes = 12345;
        snprintf(what, sizeof what, "standalone proxy workspace (pass %u): x_len near SIZE_MAX",
                 pass);
        expect(effnet_proxy_norm_workspace_size(ctx, p, pass, SIZE_MAX / c * c, &bytes),
               EFFNET_INVALID_ARGUMENT, "memory addressing", what);
        check(bytes == 12345, "standalone proxy workspace: out untouched on failure", NULL);
    }
    expect(effnet_proxy_norm_plan_destroy(p), EFFNET_OK, NULL, "standalone proxy destroy");
}

static void huge_classes(effnet_context *ctx) {
    effnet_model_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.optimizer = EFFNET_OPTIMIZER_SGD;
    effnet_model *m = SENTINEL;
    /* 2^40 classes: petabytes of classifier weights, beyond the address space. */
    d.classes = (int64_t)1 << 40;
    expect(effnet_model_create(ctx, "tiny_g16_lnpn", &d, &m), EFFNET_OUT_OF_MEMORY,
           "classifier", "model create: classes = 2^40");
    check(m == SENTINEL, "model create: out untouched on failure", NULL);
    /* 2^62 classes: the classifier's element count overflows. */
    d.classes = (int64_t)1 << 62;
    expect(effnet_model_create(ctx, "tiny_g16_lnpn", &d, &m), EFFNET_INVALID_ARGUMENT,
           "overflow", "model create: classes = 2^62");
    d.classes = INT64_MAX;
    expect(effnet_model_create(ctx, "tiny_g16_lnpn", &d, &m), EFFNET_INVALID_ARGUMENT,
           "overflow", "model create: classes = INT64_MAX");
    check(m == SENTINEL, "model create: out untouched on overflow", NULL);
    /* A working model, then batch and resolution that wrap. */
    d.classes = 3;
    expect(effnet_model_create(ctx, "tiny_g16_lnpn", &d, &m), EFFNET_OK, NULL,
           "model create: 3 classes");
    float x[12] = {0}, logits[6] = {0};
    expect(effnet_model_forward(ctx, m, (size_t)1 << 62, (size_t)1 << 40, x, 12, logits, 6),
           EFFNET_INVALID_ARGUMENT, "overflow", "model forward: batch * res^2 wraps");
    expect(effnet_model_forward(ctx, m, 1, SIZE_MAX, x, 12, logits, 6),
           EFFNET_INVALID_ARGUMENT, "overflow", "model forward: res = SIZE_MAX");
    int64_t labels[2] = {0, 1};
    float loss = -1;
    expect(effnet_model_train_step(ctx, m, SIZE_MAX, 64, x, 12, labels, 2, 0.1f, 1, &loss),
           EFFNET_INVALID_ARGUMENT, "overflow", "model train step: batch = SIZE_MAX");
    check(loss == -1, "model train step: loss untouched on failure", NULL);
    /* The errors name the model, not a plan. */
    expect(effnet_model_forward(ctx, NULL, 1, 32, x, 12, logits, 6), EFFNET_INVALID_ARGUMENT,
           "`model` is NULL", "model forward: NULL model is named `model`");
    expect(effnet_model_forward(ctx, m, 1, 32, x, 12, logits, 6), EFFNET_INVALID_ARGUMENT,
           "the call needs", "model forward: short input speaks of the call, not a plan");
    expect(effnet_model_destroy(m), EFFNET_OK, NULL, "model destroy");
}

/* Destroyed handles stay destroyed after their memory is reused: make and destroy a
 * handle, make another of the same type (the allocator hands out the freed memory
 * again), and the old handle is still reported as destroyed while the new one works. */
static void stale_handles(effnet_context *ctx) {
    effnet_norm_desc nd = layer_norm(8);
    effnet_norm_plan *a = NULL, *b = NULL;
    expect(effnet_norm_plan_create(ctx, &nd, &a), EFFNET_OK, NULL, "stale: plan A");
    expect(effnet_norm_plan_destroy(a), EFFNET_OK, NULL, "stale: destroy A");
    expect(effnet_norm_plan_create(ctx, &nd, &b), EFFNET_OK, NULL, "stale: plan B");
    check(a != b, "stale: the new plan does not get the old handle", NULL);
    effnet_norm_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_norm_plan_shape(a, &s), EFFNET_INVALID_ARGUMENT, "destroyed",
           "stale: A is reported destroyed after B reused its memory");
    expect(effnet_norm_plan_destroy(a), EFFNET_INVALID_ARGUMENT, "destroyed",
           "stale: destroying A again is reported");
    expect(effnet_norm_plan_shape(b, &s), EFFNET_OK, NULL, "stale: B still works");
    check(s.x_len == 8, "stale: B's shape is B's", NULL);
    /* Many rounds: no stale handle ever aliases a live one. */
    int aliased = 0;
    for (int i = 0; i < 200; i++) {
        effnet_norm_plan *c = NULL;
        effnet_norm_plan_create(ctx, &nd, &c);
        if (effnet_norm_plan_shape(a, &s) != EFFNET_INVALID_ARGUMENT) aliased++;
        effnet_norm_plan_destroy(c);
        if (effnet_norm_plan_shape(c, &s) != EFFNET_INVALID_ARGUMENT) aliased++;
    }
    check(aliased == 0, "stale: 200 create/destroy rounds, no stale handle is live", NULL);
    expect(effnet_norm_plan_destroy(b), EFFNET_OK, NULL, "stale: destroy B");

    /* Contexts and models the same way; a destroyed handle of another type is named. */
    effnet_context *c1 = NULL, *c2 = NULL;
    expect(effnet_context_create(1, &c1), EFFNET_OK, NULL, "stale: context 1");
    expect(effnet_context_destroy(c1), EFFNET_OK, NULL, "stale: destroy context 1");
    expect(effnet_context_create(1, &c2), EFFNET_OK, NULL, "stale: context 2");
    expect(effnet_norm_plan_create(c1, &nd, &b), EFFNET_INVALID_ARGUMENT, "destroyed",
           "stale: destroyed context rejected while another is live");
    expect(effnet_norm_plan_shape((effnet_norm_plan *)(void *)c1, &s), EFFNET_INVALID_ARGUMENT,
           "destroyed effnet_context", "stale: a destroyed context passed as a plan is named");
    expect(effnet_context_destroy(c2), EFFNET_OK, NULL, "stale: destroy context 2");
    effnet_model *m1 = NULL, *m2 = NULL;
    effnet_model_info_t info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    expect(effnet_model_create(ctx, "tiny_g16_lnpn", NULL, &m1), EFFNET_OK, NULL, "stale: model 1");
    expect(effnet_model_destroy(m1), EFFNET_OK, NULL, "stale: destroy model 1");
    expect(effnet_model_create(ctx, "tiny_g16_lnpn", NULL, &m2), EFFNET_OK, NULL, "stale: model 2");
    expect(effnet_model_info(m1, &info), EFFNET_INVALID_ARGUMENT, "destroyed",
           "stale: destroyed model rejected while another is live");
    expect(effnet_model_info(m2, &info), EFFNET_OK, NULL, "stale: model 2 works");
    expect(effnet_model_destroy(m2), EFFNET_OK, NULL, "stale: destroy model 2");
    /* Values effnet never handed out. */
    expect(effnet_norm_plan_shape((effnet_norm_plan *)(uintptr_t)0x1234, &s),
           EFFNET_INVALID_ARGUMENT, "not a handle made by effnet", "garbage: small integer");
    expect(effnet_norm_plan_shape((effnet_norm_plan *)(void *)&s, &s), EFFNET_INVALID_ARGUMENT,
           "not a handle made by effnet", "garbage: a stack address");
    expect(effnet_context_destroy((effnet_context *)(uintptr_t)UINTPTR_MAX),
           EFFNET_INVALID_ARGUMENT, "not a handle made by effnet", "garbage: UINTPTR_MAX");
}

/* The smaller findings: workspace messages in bytes, activation values named,
 * effnet_abi_version clearing the last error. */
static void messages(effnet_context *ctx) {
    effnet_norm_desc nd = layer_norm(8);
    effnet_norm_plan *p = NULL;
    expect(effnet_norm_plan_create(ctx, &nd, &p), EFFNET_OK, NULL, "messages: plan");
    float x[8] = {0}, aff[16] = {0}, y[8], saved[3];
    expect(effnet_norm_forward_ws(ctx, p, x, 8, aff, 16, y, 8, saved, 3, NULL, 3),
           EFFNET_INVALID_ARGUMENT, "`workspace_bytes` is 3",
           "messages: NULL workspace of 3 bytes is named in bytes");
    expect(effnet_norm_forward_ws(ctx, p, x, 8, aff, 16, y, 8, saved, 3, NULL, 4096),
           EFFNET_INVALID_ARGUMENT, "`workspace_bytes` is 4096",
           "messages: NULL workspace of 4096 bytes is named in bytes");
    expect(effnet_norm_plan_destroy(p), EFFNET_OK, NULL, "messages: plan destroy");
    expect(effnet_activation_forward(ctx, 99, x, y, 8), EFFNET_INVALID_ARGUMENT,
           "EFFNET_ACT_SWISH", "messages: unknown activation lists the valid values");
    const char *msg = effnet_last_error();
    check(strstr(msg, "argument.") == NULL, "messages: no `argument.activation`", msg);
    nd.activation = 99;
    expect(effnet_norm_plan_create(ctx, &nd, &p), EFFNET_INVALID_ARGUMENT,
           "effnet_norm_desc.activation = 99", "messages: descriptor activation is named");
    float pooled[2];
    effnet_nhwc shape;
    memset(&shape, 0, sizeof shape);
    shape.struct_size = sizeof shape;
    shape.batch = 1; shape.height = 2; shape.width = 2; shape.channels = 2;
    expect(effnet_global_avg_pool_forward(ctx, &shape, x, 7, pooled, 2), EFFNET_INVALID_ARGUMENT,
           "the call needs 8", "messages: pool counts do not mention a plan");
    check(strstr(effnet_last_error(), "plan") == NULL, "messages: pool error has no `plan`",
          effnet_last_error());
    float loss;
    int64_t label = 0;
    expect(effnet_cross_entropy(ctx, 1, 4, 0, x, 3, &label, 1, NULL, 0, NULL, 0, &loss),
           EFFNET_INVALID_ARGUMENT, "the call needs 4", "messages: loss counts");
    check(strstr(effnet_last_error(), "plan") == NULL, "messages: loss error has no `plan`",
          effnet_last_error());
    /* effnet_abi_version clears the last error like every other function. */
    expect(effnet_norm_plan_create(NULL, &nd, &p), EFFNET_INVALID_ARGUMENT, NULL,
           "messages: a failing call");
    check(effnet_abi_version() == EFFNET_ABI_VERSION, "abi version", NULL);
    check(effnet_last_error()[0] == '\0', "abi version clears the last error",
          effnet_last_error());
    /* Proxy backward needs dparams: a NULL one is rejected by name. */
    effnet_proxy_norm_desc pd = proxy(8, 16);
    effnet_proxy_norm_plan *pp = NULL;
    expect(effnet_proxy_norm_plan_create(ctx, NULL, &pd, &pp), EFFNET_OK, NULL,
           "messages: proxy plan");
    float params[32] = {1, 1, 1, 1, 1, 1, 1, 1}, psaved[24] = {0}, dx[8];
    expect(effnet_proxy_norm_backward(ctx, pp, x, 8, x, 8, NULL, 0, params, 32, psaved, 24,
                                      dx, 8, NULL, 0, 0),
           EFFNET_INVALID_ARGUMENT, "`dparams` is NULL", "messages: proxy backward needs dparams");
    expect(effnet_proxy_norm_plan_destroy(pp), EFFNET_OK, NULL, "messages: proxy destroy");
}

static int finish(void) {
    printf("effnet C ABI limits test: %d passed, %d failed\n", g_passed, g_failed);
    fflush(stdout);
    return g_failed == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "bogus-simd") == 0) {
        /* Run with EFFNET_SIMD=bogus: every context creation fails, naming it. */
        effnet_context *ctx = SENTINEL;
        expect(effnet_context_create(1, &ctx), EFFNET_INVALID_ARGUMENT, "EFFNET_SIMD",
               "bogus EFFNET_SIMD: context create is rejected");
        check(strstr(effnet_last_error(), "bogus") != NULL, "bogus EFFNET_SIMD: value named",
              effnet_last_error());
        check(ctx == SENTINEL, "bogus EFFNET_SIMD: out untouched", NULL);
        expect(effnet_context_create(0, &ctx), EFFNET_INVALID_ARGUMENT, "EFFNET_SIMD",
               "bogus EFFNET_SIMD: and again on the next call");
        check(effnet_abi_version() == EFFNET_ABI_VERSION, "bogus EFFNET_SIMD: abi version", NULL);
        return finish();
    }
    effnet_context *ctx = NULL;
    expect(effnet_context_create(2, &ctx), EFFNET_OK, NULL, "context create");
    proxy_k(ctx);
    huge_channels(ctx);
    standalone_proxy(ctx);
    huge_classes(ctx);
    stale_handles(ctx);
    messages(ctx);
    expect(effnet_context_destroy(ctx), EFFNET_OK, NULL, "context destroy");
    return finish();
}
