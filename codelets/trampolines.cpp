// C entry points for the host model: one per vertex. Each builds the vertex's fields
// from host pointers and sizes (`f[i]`, `n[i]`, in the field order documented on the
// Rust side, `src/ipu/codelets.rs`), sets its scalar fields from `p`, and runs
// `compute()` (for a MultiVertex: `compute(w)` for every worker, in order).
#include "conv.cpp"
#include "elementwise.cpp"
#include "norm.cpp"

#include <cstddef>

#define F(name, i) v.name = poplar::Vector<float>(f[i], n[i]);
#define RUN_MULTI                                                                  \
  int ok = 1;                                                                      \
  for (unsigned w = 0; w < poplar::MultiVertex::numWorkers(); ++w)                 \
    ok &= v.compute(w) ? 1 : 0;                                                    \
  return ok;
#define RUN_SINGLE return v.compute() ? 1 : 0;
#define GEOM                                                                       \
  v.nb = p[0];                                                                     \
  v.inH0 = p[1];                                                                   \
  v.inHN = p[2];                                                                   \
  v.inW0 = p[3];                                                                   \
  v.inWN = p[4];                                                                   \
  v.outH0 = p[5];                                                                  \
  v.outHN = p[6];                                                                  \
  v.outW0 = p[7];                                                                  \
  v.outWN = p[8];                                                                  \
  v.kh = p[9];                                                                     \
  v.kw = p[10];                                                                    \
  v.stride = p[11];                                                                \
  v.padT = p[12];                                                                  \
  v.padL = p[13];                                                                  \
  v.groups = p[14];                                                                \
  v.cinG = p[15];                                                                  \
  v.coutG = p[16];
// The (nb, pix, C) scalars of the block vertices, from p[0..3].
#define NB_PIX_C                                                                   \
  v.nb = p[0];                                                                     \
  v.pix = p[1];                                                                    \
  v.C = p[2];
// The (rows, C, cg, count) scalars of the finalize vertices.
#define ROWS_C_CG_COUNT                                                            \
  v.rows = p[0];                                                                   \
  v.C = p[1];                                                                      \
  v.cg = p[2];                                                                     \
  v.count = p[3];
// The (rows, C, act) scalars of the bias + activation vertices.
#define ROWS_C_ACT                                                                 \
  v.rows = p[0];                                                                   \
  v.C = p[1];                                                                      \
  v.act = p[2];
#define NORM_FIELDS                                                                \
  F(x, 0) F(stats, 1) F(gamma, 2) F(beta, 3) F(mu, 4) F(scale, 5) NB_PIX_C         \
  v.c0 = p[3];                                                                     \
  v.groups = p[4];                                                                 \
  v.cg = p[5];                                                                     \
  v.perSample = p[6];                                                              \
  v.act = p[7];

#define TRAMPOLINE(name)                                                           \
  extern "C" int effnet_ipu_##name(float *const *f, const std::size_t *n,          \
                                   const unsigned *p)

// A convolution vertex: three fields and the geometry.
#define CONV_TRAMPOLINE(name, a, b, c)                                             \
  TRAMPOLINE(name) {                                                               \
    name v;                                                                        \
    F(a, 0) F(b, 1) F(c, 2) GEOM RUN_MULTI                                         \
  }
CONV_TRAMPOLINE(ConvPartialAmp, in, weights, out)
CONV_TRAMPOLINE(ConvPartialAmpBwdData, dy, weights, dx)
CONV_TRAMPOLINE(ConvWeightGradAmp, x, dy, dw)
CONV_TRAMPOLINE(DepthwiseVMac, in, weights, out)
CONV_TRAMPOLINE(DepthwiseVMacBwdData, dy, weights, dx)
CONV_TRAMPOLINE(DepthwiseVMacWeightGrad, x, dy, partials)
TRAMPOLINE(ReducePartials) {
  ReducePartials v;
  F(in, 0) F(out, 1) v.np = p[0];
  v.accumulate = p[1];
  RUN_MULTI
}
TRAMPOLINE(NormStats) {
  NormStats v;
  F(x, 0) F(out, 1) NB_PIX_C RUN_MULTI
}
TRAMPOLINE(NormFinalize) {
  NormFinalize v;
  F(sums, 0) F(stats, 1) ROWS_C_CG_COUNT v.epsBits = p[4];
  RUN_SINGLE
}
TRAMPOLINE(NormAct) {
  NormAct v;
  NORM_FIELDS F(z, 6) RUN_MULTI
}
TRAMPOLINE(NormActGradPartials) {
  NormActGradPartials v;
  NORM_FIELDS F(dz, 6) F(perImage, 7) F(perChannel, 8) RUN_MULTI
}
TRAMPOLINE(NormGradFinalize) {
  NormGradFinalize v;
  F(sums, 0) F(means, 1) ROWS_C_CG_COUNT RUN_SINGLE
}
TRAMPOLINE(NormActGradApply) {
  NormActGradApply v;
  NORM_FIELDS F(dz, 6) F(gradMeans, 7) F(dx, 8) RUN_MULTI
}
TRAMPOLINE(ProxyNormStats) {
  ProxyNormStats v;
  F(gamma, 0) F(beta, 1) F(beta2, 2) F(gamma2, 3) F(q, 4) F(partials, 5)
  v.act = p[0];
  RUN_MULTI
}
TRAMPOLINE(ProxyNormFinalize) {
  ProxyNormFinalize v;
  F(sums, 0) F(mu, 1) F(scale, 2) v.K = p[0];
  v.epsBits = p[1];
  RUN_SINGLE
}
TRAMPOLINE(ProxyNormParamGrad) {
  ProxyNormParamGrad v;
  F(sums, 0) F(gamma, 1) F(beta, 2) F(beta2, 3) F(gamma2, 4) F(q, 5) F(mu, 6)
  F(scale, 7) F(partials, 8) v.act = p[0];
  v.K = p[1];
  v.scaleMode = p[4];
  RUN_MULTI
}
TRAMPOLINE(ProxyNormGradFinalize) {
  ProxyNormGradFinalize v;
  F(sums, 0) F(gamma, 1) F(terms, 2) F(grads, 3) v.proxy = p[0];
  RUN_SINGLE
}
TRAMPOLINE(BiasAct) {
  BiasAct v;
  F(x, 0) F(bias, 1) F(y, 2) ROWS_C_ACT RUN_MULTI
}
TRAMPOLINE(BiasActGrad) {
  BiasActGrad v;
  F(x, 0) F(bias, 1) F(dy, 2) F(dx, 3) ROWS_C_ACT RUN_MULTI
}
TRAMPOLINE(ChannelSum) {
  ChannelSum v;
  F(x, 0) F(out, 1) NB_PIX_C v.scaleBits = p[3];
  RUN_MULTI
}
TRAMPOLINE(PoolGrad) {
  PoolGrad v;
  F(g, 0) F(dx, 1) NB_PIX_C v.scaleBits = p[3];
  RUN_MULTI
}
TRAMPOLINE(SeGate) {
  SeGate v;
  F(x, 0) F(gate, 1) F(y, 2) NB_PIX_C RUN_MULTI
}
TRAMPOLINE(SeGateGrad) {
  SeGateGrad v;
  F(x, 0) F(gate, 1) F(dy, 2) F(dx, 3) F(dgate, 4) NB_PIX_C RUN_MULTI
}
TRAMPOLINE(Add) {
  (void)p;
  Add v;
  F(a, 0) F(b, 1) F(y, 2) RUN_MULTI
}
TRAMPOLINE(SoftmaxXent) {
  SoftmaxXent v;
  F(logits, 0) F(target, 1) F(loss, 2) F(dlogits, 3) v.n = p[0];
  v.k = p[1];
  v.total = p[2];
  RUN_SINGLE
}
TRAMPOLINE(ScaledAdd) {
  ScaledAdd v;
  F(w, 0) F(dw, 1) v.scaleBits = p[0];
  RUN_MULTI
}
TRAMPOLINE(RmsPropTf) {
  RmsPropTf v;
  F(w, 0) F(g, 1) F(ms, 2) F(mom, 3) v.lrBits = p[0];
  v.decayBits = p[1];
  v.momentumBits = p[2];
  v.epsBits = p[3];
  v.wdBits = p[4];
  v.gradScaleBits = p[5];
  RUN_MULTI
}
