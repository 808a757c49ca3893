/*
 * Normalization, fused Proxy Norm, pooling, gate, loss, activation and the model
 * through the C ABI. Included by conv_test.c (one translation unit, sharing its
 * check/expect helpers and random numbers).
 *
 * Oracles: a plain double-precision reference of GroupNorm/LayerNorm (+ affine,
 * activation) and of the fused Proxy Norm written here; backward passes against
 * directional derivatives of that double reference (central differences, which are
 * accurate in double). The model's logits and loss are printed ("model ...:" lines)
 * and compared with the Rust model by the harness (ffi/tests/c_abi.rs).
 */

static double act_f(int act, double u) {
    switch (act) {
    case EFFNET_ACT_RELU: return u > 0 ? u : 0;
    case EFFNET_ACT_SIGMOID: return 1.0 / (1.0 + exp(-u));
    case EFFNET_ACT_SWISH: return u / (1.0 + exp(-u));
    default: return u;
    }
}

static double erfinv_d(double t) {
    double y = 0;
    for (int i = 0; i < 100; i++) {
        double f = erf(y) - t;
        y -= f / (1.1283791670955126 * exp(-y * y)); /* 2/sqrt(pi) */
    }
    return y;
}

/* GroupNorm (LayerNorm: groups = 1) of NHWC x over [n][hw][c], contiguous groups:
 * xhat, then u = gamma*xhat + beta (NULL: 1, 0). */
static void norm_ref(long n, long hw, long c, long groups, const double *x, double eps,
                     const double *gamma, const double *beta, double *u) {
    long cg = c / groups;
    for (long b = 0; b < n; b++)
        for (long g = 0; g < groups; g++) {
            double s = 0, s2 = 0, m = (double)hw * cg;
            for (long p = 0; p < hw; p++)
                for (long k = g * cg; k < (g + 1) * cg; k++) s += x[(b * hw + p) * c + k];
            double mu = s / m;
            for (long p = 0; p < hw; p++)
                for (long k = g * cg; k < (g + 1) * cg; k++) {
                    double d = x[(b * hw + p) * c + k] - mu;
                    s2 += d * d;
                }
            double r = 1.0 / sqrt(s2 / m + eps);
            for (long p = 0; p < hw; p++)
                for (long k = g * cg; k < (g + 1) * cg; k++) {
                    long i = (b * hw + p) * c + k;
                    u[i] = (x[i] - mu) * r * (gamma ? gamma[k] : 1) + (beta ? beta[k] : 0);
                }
        }
}

/* The fused norm + Proxy Norm in double: z (and the proxy scale s[c]). */
static void pn_ref(long n, long hw, long c, long groups, const double *x, double eps,
                   const double *params, long K, double eps_pn, int variant, int act,
                   double *z, double *s_out) {
    const double *gm = params, *bt = params + c, *bp = params + 2 * c, *gp = params + 3 * c;
    norm_ref(n, hw, c, groups, x, eps, gm, bt, z);
    for (long k = 0; k < c; k++) {
        double m = 0, v = 0;
        for (long q = 0; q < K; q++) {
            double qq = sqrt(2.0) * erfinv_d(2.0 * (q + 0.5) / K - 1.0);
            m += act_f(act, gm[k] * (bp[k] + (1 + gp[k]) * qq) + bt[k]);
        }
        m /= K;
        for (long q = 0; q < K; q++) {
            double qq = sqrt(2.0) * erfinv_d(2.0 * (q + 0.5) / K - 1.0);
            double r = act_f(act, gm[k] * (bp[k] + (1 + gp[k]) * qq) + bt[k]) - m;
            v += r * r;
        }
        double s = 1.0 / sqrt(v / K + eps_pn);
        if (s_out) s_out[k] = s;
        for (long i = k; i < n * hw * c; i += c) {
            double a = act_f(act, z[i]) - m;
            z[i] = variant == EFFNET_PROXY_FULL_SCALE ? a * s : a;
        }
    }
}

static double *to_double(const float *p, size_t n) {
    double *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = p[i];
    return d;
}

/* sum(dz * z) + sum(ds * s) of the double reference at (x + h*vx, params + h*vp). */
static double pn_loss(long n, long hw, long c, long groups, const float *x, const float *p,
                      const float *vx, const float *vp, double h, const float *dz,
                      const float *ds, int variant, int act) {
    size_t len = (size_t)(n * hw * c);
    double *xd = to_double(x, len), *pd = to_double(p, 4 * c);
    double *z = malloc(len * sizeof *z), *s = malloc(c * sizeof *s);
    for (size_t i = 0; i < len; i++) xd[i] += h * vx[i];
    for (long i = 0; i < 4 * c; i++) pd[i] += h * vp[i];
    pn_ref(n, hw, c, groups, xd, 1e-3, pd, 16, 0.03, variant, act, z, s);
    double l = 0;
    for (size_t i = 0; i < len; i++) l += dz[i] * z[i];
    if (ds)
        for (long k = 0; k < c; k++) l += ds[k] * s[k];
    free(xd); free(pd); free(z); free(s);
    return l;
}

static void expect_near(double got, double want, double tol, const char *what) {
    char detail[160];
    double e = fabs(got - want) / (fabs(want) > 1e-3 ? fabs(want) : 1e-3);
    snprintf(detail, sizeof detail, "got %.9g, want %.9g (relative error %.3g > %.1g)", got,
             want, e, tol);
    check(e <= tol, what, detail);
}

static void proxy_norm_case(effnet_context *ctx, int variant, const char *name) {
    char what[160];
    const long n = 2, h = 3, w = 5, c = 24, groups = 1;
    const size_t len = n * h * w * c;
    effnet_norm_desc nd;
    memset(&nd, 0, sizeof nd);
    nd.struct_size = sizeof nd;
    nd.batch = n; nd.h = h; nd.w = w; nd.channels = c;
    nd.kind = EFFNET_NORM_LAYER; nd.affine = 1;
    effnet_proxy_norm_desc pd;
    memset(&pd, 0, sizeof pd);
    pd.struct_size = sizeof pd;
    pd.channels = c; pd.k = 16; pd.variant = (uint32_t)variant; pd.activation = EFFNET_ACT_SWISH;
    effnet_proxy_norm_plan *plan = NULL;
    snprintf(what, sizeof what, "%s: plan", name);
    expect(effnet_proxy_norm_plan_create(ctx, &nd, &pd, &plan), EFFNET_OK, NULL, what);
    effnet_proxy_norm_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_proxy_norm_plan_shape(plan, &s), EFFNET_OK, NULL, "proxy norm shape");
    check(s.x_len == len && s.params_len == 4 * (size_t)c && s.saved_len == 3 * (size_t)n + 3 * c,
          "proxy norm shape: counts", NULL);

    float *x = random_floats(len), *p = random_floats(4 * c), *dz = random_floats(len);
    float *ds = random_floats(c), *vx = random_floats(len), *vp = random_floats(4 * c);
    for (long k = 0; k < 4 * c; k++) p[k] = k < c ? 1.0f + 0.3f * p[k] : 0.3f * p[k];
    float *z = filled(len, 0), *saved = filled(s.saved_len, 0);
    float *dx = filled(len, 0), *dp = filled(4 * c, 0);
    int delayed = variant == EFFNET_PROXY_DELAYED_SCALE;

    snprintf(what, sizeof what, "%s: forward", name);
    expect(effnet_proxy_norm_forward(ctx, plan, x, len, p, 4 * c, z, len, saved, s.saved_len),
           EFFNET_OK, NULL, what);
    double *xd = to_double(x, len), *pdd = to_double(p, 4 * c);
    double *zr = malloc(len * sizeof *zr), *sr = malloc(c * sizeof *sr);
    pn_ref(n, h * w, c, groups, xd, 1e-3, pdd, 16, 0.03, variant, EFFNET_ACT_SWISH, zr, sr);
    snprintf(what, sizeof what, "%s: forward matches the reference", name);
    expect_close(z, zr, NULL, len, 1.0, what);
    snprintf(what, sizeof what, "%s: saved scale matches the reference", name);
    expect_close(saved + s.scale_offset, sr, NULL, c, 1.0, what);

    snprintf(what, sizeof what, "%s: backward", name);
    expect(effnet_proxy_norm_backward(ctx, plan, x, len, dz, len, delayed ? ds : NULL,
                                      delayed ? (size_t)c : 0, p, 4 * c, saved, s.saved_len,
                                      dx, len, dp, 4 * c, 0),
           EFFNET_OK, NULL, what);
    /* Directional derivatives: in x alone, then in the parameters alone. */
    float *zero_x = filled(len, 0), *zero_p = filled(4 * c, 0);
    const double hh = 1e-4;
    double fd_x = (pn_loss(n, h * w, c, groups, x, p, vx, zero_p, hh, dz, delayed ? ds : NULL,
                           variant, EFFNET_ACT_SWISH) -
                   pn_loss(n, h * w, c, groups, x, p, vx, zero_p, -hh, dz, delayed ? ds : NULL,
                           variant, EFFNET_ACT_SWISH)) / (2 * hh);
    double fd_p = (pn_loss(n, h * w, c, groups, x, p, zero_x, vp, hh, dz, delayed ? ds : NULL,
                           variant, EFFNET_ACT_SWISH) -
                   pn_loss(n, h * w, c, groups, x, p, zero_x, vp, -hh, dz, delayed ? ds : NULL,
                           variant, EFFNET_ACT_SWISH)) / (2 * hh);
    double an_x = 0, an_p = 0;
    for (size_t i = 0; i < len; i++) an_x += (double)dx[i] * vx[i];
    for (long i = 0; i < 4 * c; i++) an_p += (double)dp[i] * vp[i];
    snprintf(what, sizeof what, "%s: backward dx matches the reference's derivative", name);
    expect_near(an_x, fd_x, 1e-3, what);
    snprintf(what, sizeof what, "%s: backward dparams match the reference's derivative", name);
    expect_near(an_p, fd_p, 1e-3, what);

    if (variant == EFFNET_PROXY_FULL_SCALE) {
        /* Misuse: ds for a non-delayed plan, wrong counts, NULLs, overlap, accumulate. */
        expect(effnet_proxy_norm_backward(ctx, plan, x, len, dz, len, ds, c, p, 4 * c, saved,
                                          s.saved_len, dx, len, dp, 4 * c, 0),
               EFFNET_INVALID_ARGUMENT, "delayed-scale", "proxy norm backward: ds refused");
        expect(effnet_proxy_norm_forward(ctx, plan, x, len - 1, p, 4 * c, z, len, saved,
                                         s.saved_len),
               EFFNET_INVALID_ARGUMENT, "`x` has", "proxy norm forward: short x");
        expect(effnet_proxy_norm_forward(ctx, plan, x, len, NULL, 4 * c, z, len, saved,
                                         s.saved_len),
               EFFNET_INVALID_ARGUMENT, "`params` is NULL", "proxy norm forward: NULL params");
        expect(effnet_proxy_norm_forward(ctx, plan, x, len, p, 4 * c, z, len, z + 1,
                                         s.saved_len),
               EFFNET_INVALID_ARGUMENT, "overlap", "proxy norm forward: saved overlaps z");
        expect(effnet_proxy_norm_forward(ctx, plan, x, len, p, 4 * c, z, len, saved, 0),
               EFFNET_INVALID_ARGUMENT, "`saved` has 0", "proxy norm forward: zero count");
        expect(effnet_proxy_norm_forward(ctx, plan, x, SIZE_MAX / 2, p, 4 * c, z, len, saved,
                                         s.saved_len),
               EFFNET_INVALID_ARGUMENT, "`x` has", "proxy norm forward: huge count");
        expect(effnet_proxy_norm_backward(ctx, plan, x, len, dz, len, NULL, 0, p, 4 * c, saved,
                                          s.saved_len, dx, len, dp, 4 * c, 2),
               EFFNET_INVALID_ARGUMENT, "accumulate = 2", "proxy norm backward: accumulate 2");
        expect(effnet_proxy_norm_forward(NULL, plan, x, len, p, 4 * c, z, len, saved,
                                         s.saved_len),
               EFFNET_INVALID_ARGUMENT, "`ctx` is NULL", "proxy norm forward: NULL ctx");
        expect(effnet_proxy_norm_forward(ctx, (effnet_proxy_norm_plan *)ctx, x, len, p, 4 * c,
                                         z, len, saved, s.saved_len),
               EFFNET_INVALID_ARGUMENT, "not an effnet_proxy_norm_plan",
               "proxy norm forward: context as plan");
        /* BatchNorm cannot be fused; channel mismatch; bad enum; struct_size. */
        effnet_proxy_norm_plan *bad = NULL;
        effnet_norm_desc bn = nd;
        bn.kind = EFFNET_NORM_BATCH;
        expect(effnet_proxy_norm_plan_create(ctx, &bn, &pd, &bad), EFFNET_INVALID_ARGUMENT,
               "not BatchNorm", "proxy norm plan: BatchNorm refused");
        effnet_proxy_norm_desc pc = pd;
        pc.channels = c + 1;
        expect(effnet_proxy_norm_plan_create(ctx, &nd, &pc, &bad), EFFNET_INVALID_ARGUMENT,
               "channels", "proxy norm plan: channel mismatch");
        pc = pd;
        pc.variant = 7;
        expect(effnet_proxy_norm_plan_create(ctx, &nd, &pc, &bad), EFFNET_INVALID_ARGUMENT,
               "variant = 7", "proxy norm plan: unknown variant");
        pc = pd;
        pc.struct_size = 4;
        expect(effnet_proxy_norm_plan_create(ctx, &nd, &pc, &bad), EFFNET_INVALID_ARGUMENT,
               "struct_size", "proxy norm plan: small struct_size");
        expect(effnet_proxy_norm_plan_create(ctx, &nd, NULL, &bad), EFFNET_INVALID_ARGUMENT,
               "`proxy_desc` is NULL", "proxy norm plan: NULL descriptor");
        expect(effnet_proxy_norm_plan_create(ctx, &nd, &pd, NULL), EFFNET_INVALID_ARGUMENT,
               "`out_plan` is NULL", "proxy norm plan: NULL out");
        check(bad == NULL, "proxy norm plan: out untouched on failure", NULL);
        /* Standalone plan: any multiple of channels rows. */
        expect(effnet_proxy_norm_plan_create(ctx, NULL, &pd, &bad), EFFNET_OK, NULL,
               "standalone proxy norm plan");
        expect(effnet_proxy_norm_forward(ctx, bad, x, 7, p, 4 * c, z, 7, saved, 3 * c),
               EFFNET_INVALID_ARGUMENT, "multiple of", "standalone proxy norm: ragged rows");
        expect(effnet_proxy_norm_forward(ctx, bad, x, 5 * c, p, 4 * c, z, 5 * c, saved, 3 * c),
               EFFNET_OK, NULL, "standalone proxy norm: forward on 5 rows");
        expect(effnet_proxy_norm_plan_destroy(bad), EFFNET_OK, NULL, "standalone plan destroy");
    }
    expect(effnet_proxy_norm_plan_destroy(plan), EFFNET_OK, NULL, "proxy norm plan destroy");
    if (variant == EFFNET_PROXY_FULL_SCALE) {
        expect(effnet_proxy_norm_forward(ctx, plan, x, len, p, 4 * c, z, len, saved,
                                         s.saved_len),
               EFFNET_INVALID_ARGUMENT, "not a live", "proxy norm forward: destroyed plan");
        expect(effnet_proxy_norm_plan_destroy(plan), EFFNET_INVALID_ARGUMENT, "not a live",
               "proxy norm plan destroy: twice");
    }
    free(x); free(p); free(dz); free(ds); free(vx); free(vp); free(z); free(saved);
    free(dx); free(dp); free(xd); free(pdd); free(zr); free(sr); free(zero_x); free(zero_p);
}

/* sum(dy * act(norm(x + h*v))) in double (GroupNorm with affine). */
static double norm_loss(long n, long hw, long c, long g, const float *x, const float *a,
                        const float *v, double h, const float *dy, int act) {
    size_t len = (size_t)(n * hw * c);
    double *xd = to_double(x, len), *ad = to_double(a, 2 * c), *u = malloc(len * sizeof *u);
    for (size_t i = 0; i < len; i++) xd[i] += h * v[i];
    norm_ref(n, hw, c, g, xd, 1e-3, ad, ad + c, u);
    double l = 0;
    for (size_t i = 0; i < len; i++) l += dy[i] * act_f(act, u[i]);
    free(xd); free(ad); free(u);
    return l;
}

static void norm_tests(effnet_context *ctx) {
    const long n = 3, h = 4, w = 3, c = 16, g = 4;
    const size_t len = n * h * w * c;
    effnet_norm_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.batch = n; d.h = h; d.w = w; d.channels = c; d.groups = g;
    d.kind = EFFNET_NORM_GROUP; d.affine = 1; d.activation = EFFNET_ACT_SWISH;
    effnet_norm_plan *plan = NULL;
    expect(effnet_norm_plan_create(ctx, &d, &plan), EFFNET_OK, NULL, "GroupNorm plan");
    effnet_norm_shape s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    expect(effnet_norm_plan_shape(plan, &s), EFFNET_OK, NULL, "GroupNorm shape");
    check(s.x_len == len && s.sets == (size_t)(n * g) && s.saved_len == 3 * s.sets &&
              s.affine_len == 2 * (size_t)c && s.running_len == 0,
          "GroupNorm shape: counts", NULL);
    float *x = random_floats(len), *a = random_floats(2 * c), *dy = random_floats(len);
    float *v = random_floats(len), *y = filled(len, 0), *saved = filled(s.saved_len, 0);
    float *dx = filled(len, 0), *da = filled(2 * c, 0);
    expect(effnet_norm_forward(ctx, plan, x, len, a, 2 * c, y, len, saved, s.saved_len),
           EFFNET_OK, NULL, "GroupNorm forward");
    double *xd = to_double(x, len), *ad = to_double(a, 2 * c), *u = malloc(len * sizeof *u);
    norm_ref(n, h * w, c, g, xd, 1e-3, ad, ad + c, u);
    for (size_t i = 0; i < len; i++) u[i] = act_f(EFFNET_ACT_SWISH, u[i]);
    expect_close(y, u, NULL, len, 1.0, "GroupNorm + swish: forward matches the reference");
    expect(effnet_norm_backward(ctx, plan, x, len, dy, len, a, 2 * c, saved, s.saved_len, dx,
                                len, da, 2 * c, 0),
           EFFNET_OK, NULL, "GroupNorm backward");
    const double hh = 1e-4;
    double fd = (norm_loss(n, h * w, c, g, x, a, v, hh, dy, EFFNET_ACT_SWISH) -
                 norm_loss(n, h * w, c, g, x, a, v, -hh, dy, EFFNET_ACT_SWISH)) / (2 * hh);
    double an = 0;
    for (size_t i = 0; i < len; i++) an += (double)dx[i] * v[i];
    expect_near(an, fd, 1e-3, "GroupNorm + swish: backward dx matches the reference's derivative");
    /* dbeta = sum over the batch and pixels of dy * act'(u): check via accumulate = 1,
     * which must double it. */
    float *da2 = filled(2 * c, 0);
    memcpy(da2, da, 2 * c * sizeof *da2);
    expect(effnet_norm_backward(ctx, plan, x, len, dy, len, a, 2 * c, saved, s.saved_len, dx,
                                len, da2, 2 * c, 1),
           EFFNET_OK, NULL, "GroupNorm backward, accumulate");
    double e = 0;
    for (long k = 0; k < 2 * c; k++) e = fmax(e, fabs(da2[k] - 2 * da[k]));
    check(e < 1e-5, "GroupNorm backward: accumulated daffine is twice the first", NULL);

    /* Misuse. */
    expect(effnet_norm_forward(ctx, plan, x, len, NULL, 0, y, len, saved, s.saved_len),
           EFFNET_INVALID_ARGUMENT, "`affine` is NULL", "norm forward: affine plan, NULL affine");
    expect(effnet_norm_forward(ctx, plan, x, len, a, 2 * c, y, len, saved, s.saved_len - 1),
           EFFNET_INVALID_ARGUMENT, "`saved` has", "norm forward: short saved");
    expect(effnet_norm_forward(ctx, plan, x, len, a, 2 * c, x, len, saved, s.saved_len),
           EFFNET_INVALID_ARGUMENT, "overlap", "norm forward: in place refused");
    expect(effnet_norm_forward_infer(ctx, plan, x, len, a, 2 * c, a, 2 * c, y, len),
           EFFNET_INVALID_ARGUMENT, "no running", "norm inference: GroupNorm with running stats");
    expect(effnet_norm_update_running(ctx, plan, saved, s.saved_len, a, 2 * c, 0.1f),
           EFFNET_INVALID_ARGUMENT, "only BatchNorm", "norm update_running: GroupNorm");
    expect(effnet_norm_backward(ctx, plan, x, len, dy, len, a, 2 * c, saved, s.saved_len, dx,
                                len, da, 2 * c, -1),
           EFFNET_INVALID_ARGUMENT, "accumulate = -1", "norm backward: accumulate -1");
    expect(effnet_norm_plan_shape(plan, NULL), EFFNET_INVALID_ARGUMENT, "`out_shape` is NULL",
           "norm shape: NULL out");
    effnet_norm_plan *bad = NULL;
    effnet_norm_desc b = d;
    b.groups = 5;
    expect(effnet_norm_plan_create(ctx, &b, &bad), EFFNET_INVALID_ARGUMENT, "divisible",
           "norm plan: groups do not divide channels");
    b = d;
    b.channels = 0;
    expect(effnet_norm_plan_create(ctx, &b, &bad), EFFNET_INVALID_ARGUMENT, "channels = 0",
           "norm plan: zero channels");
    b = d;
    b.batch = INT64_MAX;
    b.h = INT64_MAX;
    expect(effnet_norm_plan_create(ctx, &b, &bad), EFFNET_INVALID_ARGUMENT, NULL,
           "norm plan: overflowing size");
    b = d;
    b.eps = -1.0f;
    expect(effnet_norm_plan_create(ctx, &b, &bad), EFFNET_INVALID_ARGUMENT, "eps",
           "norm plan: negative eps");
    expect(effnet_norm_plan_create(NULL, &d, &bad), EFFNET_INVALID_ARGUMENT, "`ctx` is NULL",
           "norm plan: NULL ctx");
    check(bad == NULL, "norm plan: out untouched on failure", NULL);
    expect(effnet_norm_plan_destroy(NULL), EFFNET_OK, NULL, "norm plan destroy: NULL");
    expect(effnet_norm_plan_destroy(plan), EFFNET_OK, NULL, "norm plan destroy");
    expect(effnet_norm_forward(ctx, plan, x, len, a, 2 * c, y, len, saved, s.saved_len),
           EFFNET_INVALID_ARGUMENT, "not a live", "norm forward: destroyed plan");

    /* BatchNorm: training forward, running update, inference with the running stats. */
    effnet_norm_desc bd = d;
    bd.kind = EFFNET_NORM_BATCH; bd.groups = 0; bd.affine = 0; bd.activation = 0;
    expect(effnet_norm_plan_create(ctx, &bd, &plan), EFFNET_OK, NULL, "BatchNorm plan");
    float *run = filled(2 * c, 0), *sv = filled(3 * c, 0);
    for (long k = c; k < 2 * c; k++) run[k] = 1.0f;
    expect(effnet_norm_forward(ctx, plan, x, len, NULL, 0, y, len, sv, 3 * c), EFFNET_OK, NULL,
           "BatchNorm forward");
    expect(effnet_norm_update_running(ctx, plan, sv, 3 * c, run, 2 * c, 1.0f), EFFNET_OK, NULL,
           "BatchNorm running update (momentum 1)");
    double m0 = 0;
    for (size_t i = 0; i < len; i += c) m0 += x[i];
    m0 /= (double)(len / c);
    expect_near(run[0], m0, 1e-5, "BatchNorm running mean is the batch mean");
    float *yi = filled(len, 0);
    expect(effnet_norm_forward_infer(ctx, plan, x, len, NULL, 0, run, 2 * c, yi, len),
           EFFNET_OK, NULL, "BatchNorm inference");
    expect(effnet_norm_forward_infer(ctx, plan, x, len, NULL, 0, NULL, 0, yi, len),
           EFFNET_INVALID_ARGUMENT, "`running` is NULL", "BatchNorm inference: NULL running");
    expect(effnet_norm_forward(ctx, plan, x, len, a, 2 * c, y, len, sv, 3 * c),
           EFFNET_INVALID_ARGUMENT, "no affine", "BatchNorm forward: affine without affine");
    expect(effnet_norm_update_running(ctx, plan, sv, 3 * c, run, 2 * c, 2.0f),
           EFFNET_INVALID_ARGUMENT, "momentum", "BatchNorm running update: momentum 2");
    expect(effnet_norm_plan_destroy(plan), EFFNET_OK, NULL, "BatchNorm plan destroy");

    free(x); free(a); free(dy); free(v); free(y); free(saved); free(dx); free(da); free(da2);
    free(xd); free(ad); free(u); free(run); free(sv); free(yi);
}

static void small_ops_tests(effnet_context *ctx) {
    effnet_nhwc sh = {sizeof(effnet_nhwc), 2, 3, 4, 5};
    const size_t len = 2 * 3 * 4 * 5, pl = 2 * 5;
    float *x = random_floats(len), *y = filled(pl, 0), *dx = filled(len, 0);
    float *gate = random_floats(pl), *gy = filled(len, 0), *dg = filled(pl, 0);
    expect(effnet_global_avg_pool_forward(ctx, &sh, x, len, y, pl), EFFNET_OK, NULL,
           "global average pool");
    double err = 0;
    for (long n = 0; n < 2; n++)
        for (long c = 0; c < 5; c++) {
            double s = 0;
            for (long p = 0; p < 12; p++) s += x[(n * 12 + p) * 5 + c];
            err = fmax(err, fabs(y[n * 5 + c] - s / 12));
        }
    check(err < 1e-6, "global average pool matches the reference", NULL);
    expect(effnet_global_avg_pool_backward(ctx, &sh, y, pl, dx, len, 0), EFFNET_OK, NULL,
           "global average pool backward");
    check(fabs(dx[7 * 5 + 3] - y[3] / 12.0) < 1e-7, "pool backward broadcasts dy/(H*W)", NULL);
    expect(effnet_gate_forward(ctx, &sh, x, len, gate, pl, gy, len), EFFNET_OK, NULL,
           "gate forward");
    check(gy[len - 1] == x[len - 1] * gate[pl - 1], "gate forward scales each channel", NULL);
    expect(effnet_gate_backward(ctx, &sh, x, len, x, len, gate, pl, dx, len, dg, pl), EFFNET_OK,
           NULL, "gate backward");
    double s = 0;
    for (long p = 0; p < 12; p++) s += (double)x[p * 5 + 2] * x[p * 5 + 2];
    expect_near(dg[2], s, 1e-5, "gate backward: dgate is sum dy*x");
    effnet_nhwc bad = sh;
    bad.channels = 0;
    expect(effnet_global_avg_pool_forward(ctx, &bad, x, len, y, pl), EFFNET_INVALID_ARGUMENT,
           "channels = 0", "pool: zero channels");
    bad = sh;
    bad.struct_size = 0;
    expect(effnet_gate_forward(ctx, &bad, x, len, gate, pl, gy, len), EFFNET_INVALID_ARGUMENT,
           "struct_size", "gate: zero struct_size");
    expect(effnet_gate_forward(ctx, NULL, x, len, gate, pl, gy, len), EFFNET_INVALID_ARGUMENT,
           "`shape` is NULL", "gate: NULL shape");
    expect(effnet_gate_backward(ctx, &sh, x, len, x, len, gate, pl, dx, len, dx, pl),
           EFFNET_INVALID_ARGUMENT, "overlap", "gate backward: outputs overlap");
    expect(effnet_global_avg_pool_backward(ctx, &sh, y, pl, dx, len, 3), EFFNET_INVALID_ARGUMENT,
           "accumulate = 3", "pool backward: accumulate 3");

    /* Loss: labels and soft targets; the gradient rows sum to zero. */
    float logits[6] = {2.0f, 0.5f, -1.0f, 0.0f, 0.25f, 0.0f}, dl[6], loss = -1;
    int64_t labels[2] = {0, 2};
    expect(effnet_cross_entropy(ctx, 2, 3, 0.0f, logits, 6, labels, 2, NULL, 0, dl, 6, &loss),
           EFFNET_OK, NULL, "cross entropy with labels");
    double want = 0;
    for (int n = 0; n < 2; n++) {
        double lse = 0;
        for (int k = 0; k < 3; k++) lse += exp(logits[n * 3 + k]);
        want += log(lse) - logits[n * 3 + labels[n]];
    }
    expect_near(loss, want / 2, 1e-6, "cross entropy matches the reference");
    check(fabs(dl[0] + dl[1] + dl[2]) < 1e-6, "cross entropy gradient rows sum to 0", NULL);
    float soft[6] = {1, 0, 0, 0, 0, 1}, loss2 = -1;
    expect(effnet_cross_entropy(ctx, 2, 3, 0.0f, logits, 6, NULL, 0, soft, 6, NULL, 0, &loss2),
           EFFNET_OK, NULL, "cross entropy with soft targets");
    check(loss2 == loss, "one-hot soft targets give the labels' loss", NULL);
    int64_t badl[2] = {0, 3};
    expect(effnet_cross_entropy(ctx, 2, 3, 0.0f, logits, 6, badl, 2, NULL, 0, dl, 6, &loss),
           EFFNET_INVALID_ARGUMENT, "out of range", "cross entropy: label out of range");
    expect(effnet_cross_entropy(ctx, 2, 3, 0.0f, logits, 6, labels, 2, soft, 6, dl, 6, &loss),
           EFFNET_INVALID_ARGUMENT, "exactly one", "cross entropy: both targets");
    expect(effnet_cross_entropy(ctx, 0, 3, 0.0f, logits, 6, labels, 2, NULL, 0, dl, 6, &loss),
           EFFNET_INVALID_ARGUMENT, "batch (0)", "cross entropy: zero batch");
    expect(effnet_cross_entropy(ctx, 2, 3, 1.5f, logits, 6, labels, 2, NULL, 0, dl, 6, &loss),
           EFFNET_INVALID_ARGUMENT, "smoothing", "cross entropy: smoothing 1.5");
    expect(effnet_cross_entropy(ctx, 2, 3, 0.0f, logits, 6, labels, 2, NULL, 0, dl, 6, NULL),
           EFFNET_INVALID_ARGUMENT, "`out_loss` is NULL", "cross entropy: NULL out_loss");
    expect(effnet_cross_entropy(ctx, 2, 3, 0.0f, logits, 6, (const int64_t *)(logits + 1), 2,
                                NULL, 0, dl, 6, &loss),
           EFFNET_INVALID_ARGUMENT, "aligned", "cross entropy: misaligned labels");

    /* Activations. */
    float u[4] = {-2.0f, -0.5f, 0.0f, 3.0f}, a[4], da[4], ones[4] = {1, 1, 1, 1};
    expect(effnet_activation_forward(ctx, EFFNET_ACT_SWISH, u, a, 4), EFFNET_OK, NULL,
           "swish forward");
    check(fabs(a[3] - act_f(EFFNET_ACT_SWISH, 3.0)) < 1e-6, "swish forward matches", NULL);
    expect(effnet_activation_backward(ctx, EFFNET_ACT_RELU, u, ones, da, 4), EFFNET_OK, NULL,
           "relu backward");
    check(da[0] == 0 && da[2] == 0 && da[3] == 1, "relu backward: derivative 0 at 0", NULL);
    expect(effnet_activation_forward(ctx, 9, u, a, 4), EFFNET_INVALID_ARGUMENT,
           "= 9 is not an effnet_activation; pass 0", "activation: unknown");
    expect(effnet_activation_forward(ctx, EFFNET_ACT_SWISH, u, a, 0), EFFNET_INVALID_ARGUMENT,
           "`len` is 0", "activation: zero length");
    expect(effnet_activation_forward(ctx, EFFNET_ACT_SWISH, u, u, 4), EFFNET_INVALID_ARGUMENT,
           "overlap", "activation: in place refused");
    free(x); free(y); free(dx); free(gate); free(gy); free(dg);
}

static void print_floats(const char *tag, const float *v, size_t n) {
    printf("%s:", tag);
    for (size_t i = 0; i < n; i++) printf(" %.9g", v[i]);
    printf("\n");
}

/* The model: printed results are compared with the Rust model by the harness. */
static void model_tests(effnet_context *ctx) {
    const size_t batch = 2, res = 32, classes = 5, len = batch * res * res * 3;
    effnet_model_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.classes = classes;
    d.seed = 7;
    d.optimizer = EFFNET_OPTIMIZER_SGD;
    effnet_model *m = NULL;
    expect(effnet_model_create(ctx, "tiny_g16_lnpn", &d, &m), EFFNET_OK, NULL, "model create");
    if (m == NULL) return;
    effnet_model_info_t info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    expect(effnet_model_info(m, &info), EFFNET_OK, NULL, "model info");
    check(info.classes == classes && info.in_channels == 3 && info.trainable_elems > 0,
          "model info: classes, channels, parameters", NULL);
    const char *weights = getenv("EFFNET_TEST_WEIGHTS");
    if (weights) {
        expect(effnet_model_load_weights(m, weights), EFFNET_OK, NULL, "model load weights");
    }
    float *x = malloc(len * sizeof *x), logits[2 * 5], loss = -1;
    for (size_t i = 0; i < len; i++) x[i] = (float)((long)((i * 7919) % 201) - 100) / 100.0f;
    int64_t labels[2] = {1, 3};
    expect(effnet_model_forward(ctx, m, batch, res, x, len, logits, batch * classes), EFFNET_OK,
           NULL, "model forward");
    print_floats("model logits", logits, batch * classes);
    expect(effnet_model_train_step(ctx, m, batch, res, x, len, labels, 2, 0.05f, 3, &loss),
           EFFNET_OK, NULL, "model train step");
    printf("model loss: %.9g\n", loss);
    expect(effnet_model_forward(ctx, m, batch, res, x, len, logits, batch * classes), EFFNET_OK,
           NULL, "model forward after the step");
    print_floats("model logits after step", logits, batch * classes);

    /* Misuse. */
    effnet_model *bad = NULL;
    expect(effnet_model_create(ctx, "efficientnet_b99", &d, &bad), EFFNET_INVALID_ARGUMENT,
           "b99", "model create: unknown architecture");
    expect(effnet_model_create(ctx, NULL, &d, &bad), EFFNET_INVALID_ARGUMENT, "`arch` is NULL",
           "model create: NULL name");
    effnet_model_desc bd = d;
    bd.optimizer = 5;
    expect(effnet_model_create(ctx, "tiny_g16_lnpn", &bd, &bad), EFFNET_INVALID_ARGUMENT,
           "optimizer = 5", "model create: unknown optimizer");
    check(bad == NULL, "model create: out untouched on failure", NULL);
    expect(effnet_model_load_weights(m, "/nonexistent/effnet.safetensors"), EFFNET_IO_ERROR,
           "nonexistent", "model load weights: missing file");
    expect(effnet_model_load_weights(m, NULL), EFFNET_INVALID_ARGUMENT, "`path` is NULL",
           "model load weights: NULL path");
    expect(effnet_model_forward(ctx, m, batch, res, x, len - 1, logits, batch * classes),
           EFFNET_INVALID_ARGUMENT, "`x` has", "model forward: short input");
    expect(effnet_model_forward(ctx, m, 0, res, x, len, logits, batch * classes),
           EFFNET_INVALID_ARGUMENT, "batch = 0", "model forward: zero batch");
    expect(effnet_model_forward(ctx, m, SIZE_MAX, SIZE_MAX, x, len, logits, batch * classes),
           EFFNET_INVALID_ARGUMENT, NULL, "model forward: huge sizes");
    expect(effnet_model_forward(ctx, m, batch, res, x, len, NULL, batch * classes),
           EFFNET_INVALID_ARGUMENT, "`logits` is NULL", "model forward: NULL logits");
    int64_t badl[2] = {1, 5};
    expect(effnet_model_train_step(ctx, m, batch, res, x, len, badl, 2, 0.05f, 3, &loss),
           EFFNET_INVALID_ARGUMENT, "out of range", "model train step: label out of range");
    expect(effnet_model_train_step(ctx, m, batch, res, x, len, labels, 2, NAN, 3, &loss),
           EFFNET_INVALID_ARGUMENT, "lr", "model train step: NaN learning rate");
    expect(effnet_model_destroy(m), EFFNET_OK, NULL, "model destroy");
    expect(effnet_model_forward(ctx, m, batch, res, x, len, logits, batch * classes),
           EFFNET_INVALID_ARGUMENT, "not a live", "model forward: destroyed model");
    expect(effnet_model_destroy(NULL), EFFNET_OK, NULL, "model destroy: NULL");
    free(x);
}

/* Caller-owned workspaces of the norm, Proxy Norm, pool, gate and loss passes: with a
 * workspace of exactly the queried size full of stale bytes (NaN patterns, starting off
 * its natural 64-byte alignment), each _ws pass gives the allocating pass's bits; one
 * float short is EFFNET_INVALID_ARGUMENT naming the workspace. */
static float *stale_ws(size_t bytes) {
    unsigned char *p = malloc(bytes + 68);
    memset(p, 0xFF, bytes + 68);
    return (float *)(p + 4);
}

static void free_ws(float *ws) { free((unsigned char *)ws - 4); }

static void same_bits(const float *a, const float *b, size_t n, const char *what) {
    check(memcmp(a, b, n * sizeof *a) == 0, what, "the bits differ");
}

/* `bytes` is read after the query ran (arguments are evaluated in any order). */
static void ws_size_ok(effnet_status st, const size_t *bytes, const char *what) {
    expect(st, EFFNET_OK, NULL, what);
    check(*bytes > 0 && *bytes % sizeof(float) == 0, what,
          "not a positive whole number of floats");
}

static void norm_workspace_tests(effnet_context *ctx) {
    const long n = 3, h = 9, w = 8, c = 16, g = 4;
    const size_t len = n * h * w * c;
    effnet_norm_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.batch = n; d.h = h; d.w = w; d.channels = c; d.groups = g;
    d.kind = EFFNET_NORM_GROUP; d.affine = 1; d.activation = EFFNET_ACT_SWISH;
    effnet_norm_plan *plan = NULL;
    expect(effnet_norm_plan_create(ctx, &d, &plan), EFFNET_OK, NULL, "ws: GroupNorm plan");
    const size_t sl = 3 * n * g;
    float *x = random_floats(len), *a = random_floats(2 * c), *dy = random_floats(len);
    float *y0 = filled(len, 0), *y1 = filled(len, 0), *s0 = filled(sl, 0), *s1 = filled(sl, 0);
    float *dx0 = filled(len, 0), *dx1 = filled(len, 0), *da0 = filled(2 * c, 0);
    float *da1 = filled(2 * c, 0);
    size_t fb = 0, ib = 0, bb = 0, junk = 0;
    ws_size_ok(effnet_norm_workspace_size(ctx, plan, EFFNET_NORM_PASS_FORWARD, &fb), &fb,
               "ws: norm forward size");
    ws_size_ok(effnet_norm_workspace_size(ctx, plan, EFFNET_NORM_PASS_FORWARD_INFER, &ib), &ib,
               "ws: norm forward_infer size");
    ws_size_ok(effnet_norm_workspace_size(ctx, plan, EFFNET_NORM_PASS_BACKWARD, &bb), &bb,
               "ws: norm backward size");
    float *ws = stale_ws(fb > bb ? (fb > ib ? fb : ib) : (bb > ib ? bb : ib));
    expect(effnet_norm_forward(ctx, plan, x, len, a, 2 * c, y0, len, s0, sl), EFFNET_OK, NULL,
           "ws: norm forward (allocating)");
    expect(effnet_norm_forward_ws(ctx, plan, x, len, a, 2 * c, y1, len, s1, sl, ws, fb),
           EFFNET_OK, NULL, "ws: norm forward_ws");
    same_bits(y1, y0, len, "ws: norm forward_ws gives the allocating y");
    same_bits(s1, s0, sl, "ws: norm forward_ws gives the allocating saved statistics");
    expect(effnet_norm_forward_ws(ctx, plan, x, len, a, 2 * c, y1, len, s1, sl, ws, fb - 4),
           EFFNET_INVALID_ARGUMENT, "workspace", "ws: norm forward_ws one float short");
    expect(effnet_norm_forward_infer(ctx, plan, x, len, a, 2 * c, NULL, 0, y0, len), EFFNET_OK,
           NULL, "ws: norm forward_infer (allocating)");
    expect(effnet_norm_forward_infer_ws(ctx, plan, x, len, a, 2 * c, NULL, 0, y1, len, ws, ib),
           EFFNET_OK, NULL, "ws: norm forward_infer_ws");
    same_bits(y1, y0, len, "ws: norm forward_infer_ws gives the allocating y");
    expect(effnet_norm_forward_infer_ws(ctx, plan, x, len, a, 2 * c, NULL, 0, y1, len, ws,
                                        ib - 4),
           EFFNET_INVALID_ARGUMENT, "workspace", "ws: norm forward_infer_ws one float short");
    expect(effnet_norm_backward(ctx, plan, x, len, dy, len, a, 2 * c, s0, sl, dx0, len, da0,
                                2 * c, 0),
           EFFNET_OK, NULL, "ws: norm backward (allocating)");
    expect(effnet_norm_backward_ws(ctx, plan, x, len, dy, len, a, 2 * c, s0, sl, dx1, len, da1,
                                   2 * c, 0, ws, bb),
           EFFNET_OK, NULL, "ws: norm backward_ws");
    same_bits(dx1, dx0, len, "ws: norm backward_ws gives the allocating dx");
    same_bits(da1, da0, 2 * c, "ws: norm backward_ws gives the allocating daffine");
    expect(effnet_norm_backward_ws(ctx, plan, x, len, dy, len, a, 2 * c, s0, sl, dx1, len, da1,
                                   2 * c, 0, ws, bb - 4),
           EFFNET_INVALID_ARGUMENT, "workspace", "ws: norm backward_ws one float short");
    /* Misuse of the workspace arguments. */
    expect(effnet_norm_workspace_size(ctx, plan, 9, &junk), EFFNET_INVALID_ARGUMENT,
           "effnet_norm_pass", "ws: norm size, unknown pass");
    expect(effnet_norm_workspace_size(ctx, plan, EFFNET_NORM_PASS_FORWARD, NULL),
           EFFNET_INVALID_ARGUMENT, "out_bytes", "ws: norm size, NULL out pointer");
    expect(effnet_norm_workspace_size(ctx, NULL, EFFNET_NORM_PASS_FORWARD, &junk),
           EFFNET_INVALID_ARGUMENT, "plan", "ws: norm size, NULL plan");
    expect(effnet_norm_forward_ws(ctx, plan, x, len, a, 2 * c, y1, len, s1, sl, NULL, fb),
           EFFNET_INVALID_ARGUMENT, "workspace", "ws: norm forward_ws, NULL with a size");
    expect(effnet_norm_forward_ws(ctx, plan, x, len, a, 2 * c, y1, len, s1, sl, NULL, 0),
           EFFNET_INVALID_ARGUMENT, "workspace", "ws: norm forward_ws, NULL with 0 bytes");
    expect(effnet_norm_forward_ws(ctx, plan, x, len, a, 2 * c, y1, len, s1, sl, y1, fb),
           EFFNET_INVALID_ARGUMENT, "overlap", "ws: norm forward_ws, workspace overlaps y");
    expect(effnet_norm_forward_ws(ctx, plan, x, len, a, 2 * c, y1, len, s1, sl,
                                  (char *)ws + 1, fb),
           EFFNET_INVALID_ARGUMENT, "aligned", "ws: norm forward_ws, misaligned workspace");
    free_ws(ws);
    expect(effnet_norm_plan_destroy(plan), EFFNET_OK, NULL, "ws: GroupNorm plan destroy");

    /* Fused and standalone Proxy Norm, every variant. */
    for (int variant = 0; variant < 3; variant++) {
        int delayed = variant == EFFNET_PROXY_DELAYED_SCALE;
        effnet_norm_desc nd = d;
        nd.activation = EFFNET_ACT_IDENTITY;
        effnet_proxy_norm_desc pd;
        memset(&pd, 0, sizeof pd);
        pd.struct_size = sizeof pd;
        pd.channels = c; pd.k = 20; pd.variant = (uint32_t)variant;
        pd.activation = EFFNET_ACT_SWISH;
        for (int fused = 0; fused < 2; fused++) {
            char what[160];
            const char *kind = fused ? "fused" : "standalone";
            effnet_proxy_norm_plan *pp = NULL;
            expect(effnet_proxy_norm_plan_create(ctx, fused ? &nd : NULL, &pd, &pp), EFFNET_OK,
                   NULL, "ws: Proxy Norm plan");
            effnet_proxy_norm_shape s;
            memset(&s, 0, sizeof s);
            s.struct_size = sizeof s;
            expect(effnet_proxy_norm_plan_shape(pp, &s), EFFNET_OK, NULL, "ws: Proxy Norm shape");
            float *p = random_floats(4 * c), *ds = delayed ? random_floats(c) : NULL;
            for (long k = 0; k < c; k++) p[k] += 1.0f;
            float *sv0 = filled(s.saved_len, 0), *sv1 = filled(s.saved_len, 0);
            float *dp0 = filled(4 * c, 0), *dp1 = filled(4 * c, 0);
            size_t fwb = 0, bwb = 0;
            snprintf(what, sizeof what, "ws: %s Proxy Norm %d sizes", kind, variant);
            ws_size_ok(effnet_proxy_norm_workspace_size(ctx, pp, EFFNET_PROXY_NORM_PASS_FORWARD,
                                                        len, &fwb), &fwb, what);
            ws_size_ok(effnet_proxy_norm_workspace_size(ctx, pp, EFFNET_PROXY_NORM_PASS_BACKWARD,
                                                        len, &bwb), &bwb, what);
            float *pws = stale_ws(fwb > bwb ? fwb : bwb);
            expect(effnet_proxy_norm_forward(ctx, pp, x, len, p, 4 * c, y0, len, sv0,
                                             s.saved_len),
                   EFFNET_OK, NULL, "ws: Proxy Norm forward (allocating)");
            expect(effnet_proxy_norm_forward_ws(ctx, pp, x, len, p, 4 * c, y1, len, sv1,
                                                s.saved_len, pws, fwb),
                   EFFNET_OK, NULL, "ws: Proxy Norm forward_ws");
            snprintf(what, sizeof what, "ws: %s Proxy Norm %d forward_ws bits", kind, variant);
            same_bits(y1, y0, len, what);
            same_bits(sv1, sv0, s.saved_len, what);
            expect(effnet_proxy_norm_forward_ws(ctx, pp, x, len, p, 4 * c, y1, len, sv1,
                                                s.saved_len, pws, fwb - 4),
                   EFFNET_INVALID_ARGUMENT, "workspace", "ws: Proxy Norm forward_ws short");
            expect(effnet_proxy_norm_backward(ctx, pp, x, len, dy, len, ds, delayed ? c : 0, p,
                                              4 * c, sv0, s.saved_len, dx0, len, dp0, 4 * c, 0),
                   EFFNET_OK, NULL, "ws: Proxy Norm backward (allocating)");
            expect(effnet_proxy_norm_backward_ws(ctx, pp, x, len, dy, len, ds, delayed ? c : 0,
                                                 p, 4 * c, sv0, s.saved_len, dx1, len, dp1,
                                                 4 * c, 0, pws, bwb),
                   EFFNET_OK, NULL, "ws: Proxy Norm backward_ws");
            snprintf(what, sizeof what, "ws: %s Proxy Norm %d backward_ws bits", kind, variant);
            same_bits(dx1, dx0, len, what);
            same_bits(dp1, dp0, 4 * c, what);
            expect(effnet_proxy_norm_backward_ws(ctx, pp, x, len, dy, len, ds, delayed ? c : 0,
                                                 p, 4 * c, sv0, s.saved_len, dx1, len, dp1,
                                                 4 * c, 0, pws, bwb - 4),
                   EFFNET_INVALID_ARGUMENT, "workspace", "ws: Proxy Norm backward_ws short");
            if (!fused)
                expect(effnet_proxy_norm_workspace_size(ctx, pp, EFFNET_PROXY_NORM_PASS_BACKWARD,
                                                        7, &junk),
                       EFFNET_INVALID_ARGUMENT, "x_len", "ws: standalone size, bad x_len");
            expect(effnet_proxy_norm_workspace_size(ctx, pp, 5, len, &junk),
                   EFFNET_INVALID_ARGUMENT, "effnet_proxy_norm_pass",
                   "ws: Proxy Norm size, unknown pass");
            free_ws(pws);
            free(p); free(ds); free(sv0); free(sv1); free(dp0); free(dp1);
            expect(effnet_proxy_norm_plan_destroy(pp), EFFNET_OK, NULL, "ws: Proxy Norm destroy");
        }
    }

    /* Pooling, gate, loss. */
    effnet_nhwc sh = {sizeof(effnet_nhwc), n, h * 7, w * 5, c};
    const size_t pl_len = n * h * 7 * w * 5 * c, pooled = n * c;
    float *px = random_floats(pl_len), *pdy = random_floats(pl_len), *gate = random_floats(pooled);
    float *p0 = filled(pooled, 0), *p1 = filled(pooled, 0);
    float *pdx0 = filled(pl_len, 0), *pdx1 = filled(pl_len, 0);
    size_t pfb = 0, pbb = 0, gbb = 0, lb = 0;
    ws_size_ok(effnet_global_avg_pool_workspace_size(ctx, &sh, EFFNET_POOL_PASS_FORWARD, &pfb),
               &pfb, "ws: pool forward size");
    ws_size_ok(effnet_global_avg_pool_workspace_size(ctx, &sh, EFFNET_POOL_PASS_BACKWARD, &pbb),
               &pbb, "ws: pool backward size");
    ws_size_ok(effnet_gate_backward_workspace_size(ctx, &sh, &gbb), &gbb, "ws: gate size");
    ws_size_ok(effnet_cross_entropy_workspace_size(ctx, 4, 3, &lb), &lb, "ws: loss size");
    size_t most = pfb > pbb ? pfb : pbb;
    most = most > gbb ? most : gbb;
    ws = stale_ws(most);
    expect(effnet_global_avg_pool_forward(ctx, &sh, px, pl_len, p0, pooled), EFFNET_OK, NULL,
           "ws: pool forward (allocating)");
    expect(effnet_global_avg_pool_forward_ws(ctx, &sh, px, pl_len, p1, pooled, ws, pfb),
           EFFNET_OK, NULL, "ws: pool forward_ws");
    same_bits(p1, p0, pooled, "ws: pool forward_ws gives the allocating bits");
    expect(effnet_global_avg_pool_forward_ws(ctx, &sh, px, pl_len, p1, pooled, ws, pfb - 4),
           EFFNET_INVALID_ARGUMENT, "workspace", "ws: pool forward_ws one float short");
    expect(effnet_global_avg_pool_backward(ctx, &sh, gate, pooled, pdx0, pl_len, 0), EFFNET_OK,
           NULL, "ws: pool backward (allocating)");
    expect(effnet_global_avg_pool_backward_ws(ctx, &sh, gate, pooled, pdx1, pl_len, 0, ws, pbb),
           EFFNET_OK, NULL, "ws: pool backward_ws");
    same_bits(pdx1, pdx0, pl_len, "ws: pool backward_ws gives the allocating bits");
    expect(effnet_global_avg_pool_backward_ws(ctx, &sh, gate, pooled, pdx1, pl_len, 0, ws,
                                              pbb - 4),
           EFFNET_INVALID_ARGUMENT, "workspace", "ws: pool backward_ws one float short");
    expect(effnet_global_avg_pool_workspace_size(ctx, &sh, 2, &junk), EFFNET_INVALID_ARGUMENT,
           "effnet_pool_pass", "ws: pool size, unknown pass");
    expect(effnet_gate_backward(ctx, &sh, pdy, pl_len, px, pl_len, gate, pooled, pdx0, pl_len,
                                p0, pooled),
           EFFNET_OK, NULL, "ws: gate backward (allocating)");
    expect(effnet_gate_backward_ws(ctx, &sh, pdy, pl_len, px, pl_len, gate, pooled, pdx1, pl_len,
                                   p1, pooled, ws, gbb),
           EFFNET_OK, NULL, "ws: gate backward_ws");
    same_bits(pdx1, pdx0, pl_len, "ws: gate backward_ws gives the allocating dx");
    same_bits(p1, p0, pooled, "ws: gate backward_ws gives the allocating dgate");
    expect(effnet_gate_backward_ws(ctx, &sh, pdy, pl_len, px, pl_len, gate, pooled, pdx1, pl_len,
                                   p1, pooled, ws, gbb - 4),
           EFFNET_INVALID_ARGUMENT, "workspace", "ws: gate backward_ws one float short");
    free_ws(ws);
    float *logits = random_floats(12), *dl0 = filled(12, 0), *dl1 = filled(12, 0);
    const int64_t labels[4] = {0, 2, 1, 2};
    float l0 = 0, l1 = 0;
    ws = stale_ws(lb);
    expect(effnet_cross_entropy(ctx, 4, 3, 0.1f, logits, 12, labels, 4, NULL, 0, dl0, 12, &l0),
           EFFNET_OK, NULL, "ws: cross entropy (allocating)");
    expect(effnet_cross_entropy_ws(ctx, 4, 3, 0.1f, logits, 12, labels, 4, NULL, 0, dl1, 12, &l1,
                                   ws, lb),
           EFFNET_OK, NULL, "ws: cross entropy_ws");
    same_bits(&l1, &l0, 1, "ws: cross entropy_ws gives the allocating loss");
    same_bits(dl1, dl0, 12, "ws: cross entropy_ws gives the allocating gradient");
    expect(effnet_cross_entropy_ws(ctx, 4, 3, 0.1f, logits, 12, labels, 4, NULL, 0, dl1, 12, &l1,
                                   ws, lb - 4),
           EFFNET_INVALID_ARGUMENT, "workspace", "ws: cross entropy_ws one float short");
    expect(effnet_cross_entropy_workspace_size(ctx, 0, 3, &junk), EFFNET_INVALID_ARGUMENT, NULL,
           "ws: loss size, zero batch");
    free_ws(ws);
    free(logits); free(dl0); free(dl1);
    free(px); free(pdy); free(gate); free(p0); free(p1); free(pdx0); free(pdx1);
    free(x); free(a); free(dy); free(y0); free(y1); free(s0); free(s1);
    free(dx0); free(dx1); free(da0); free(da1);
}

static void ops_tests(effnet_context *ctx) {
    norm_tests(ctx);
    proxy_norm_case(ctx, EFFNET_PROXY_FULL_SCALE, "LN + Proxy Norm (full scale)");
    proxy_norm_case(ctx, EFFNET_PROXY_DELAYED_SCALE, "LN + Proxy Norm (delayed scale)");
    proxy_norm_case(ctx, EFFNET_PROXY_NO_SCALE, "LN + Proxy Norm (no scale)");
    small_ops_tests(ctx);
    norm_workspace_tests(ctx);
    model_tests(ctx);
}
