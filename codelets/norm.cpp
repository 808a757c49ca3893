// Normalization codelets in Poplar's vertex form: statistics, their finalization,
// the fused normalize → affine → activation → proxy-correction vertex (GroupNorm,
// LayerNorm = one group, BatchNorm = statistics over the batch, and Proxy Norm), and
// its backward.
//
// Layouts: activations [nb][pix][C] (a tile's block of NHWC: nb images, pix pixels,
// C channels starting at global channel c0). Statistics [rows][G][2] with rows = nb
// (per-sample norms) or 1 (BatchNorm), global group g = (c0 + c) / cg.
#include "common.hpp"

using namespace poplar;
using namespace effnet_codelets;

// Per (image, channel) sum and sum of squares over the block's pixels:
// out[n][c] = (Σ x, Σ x²). Workers split the channels.
class NormStats : public MultiVertex {
public:
  Input<Vector<float>> x;
  Output<Vector<float>> out;
  unsigned nb, pix, C;

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(C, workerId, numWorkers(), b, e);
    for (unsigned n = 0; n < nb; ++n)
      for (unsigned c = b; c < e; ++c) {
        float s = 0.0f, q = 0.0f;
        const float *p = &x[0] + std::size_t(n) * pix * C + c;
        for (unsigned i = 0; i < pix; ++i) {
          float v = p[std::size_t(i) * C];
          s += v;
          q += v * v;
        }
        out[(std::size_t(n) * C + c) * 2] = s;
        out[(std::size_t(n) * C + c) * 2 + 1] = q;
      }
    return true;
  }
};

// sums [rows][C][2] → stats [rows][C/cg][2] = (mean, 1/sqrt(var + eps)) over `count`
// elements per group.
class NormFinalize : public Vertex {
public:
  Input<Vector<float>> sums;
  Output<Vector<float>> stats;
  unsigned rows, C, cg, count, epsBits;

  bool compute() {
    float eps = bitsToFloat(epsBits);
    unsigned G = C / cg;
    for (unsigned r = 0; r < rows; ++r)
      for (unsigned g = 0; g < G; ++g) {
        float s = 0.0f, q = 0.0f;
        for (unsigned c = g * cg; c < (g + 1) * cg; ++c) {
          s += sums[(std::size_t(r) * C + c) * 2];
          q += sums[(std::size_t(r) * C + c) * 2 + 1];
        }
        float mean = s / float(count);
        float var = q / float(count) - mean * mean;
        if (var < 0.0f)
          var = 0.0f;
        stats[(std::size_t(r) * G + g) * 2] = mean;
        stats[(std::size_t(r) * G + g) * 2 + 1] = 1.0f / std::sqrt(var + eps);
      }
    return true;
  }
};

// Fields and helpers shared by the fused normalization vertices.
#define EFFNET_NORM_ACT_FIELDS                                                     \
  Input<Vector<float>> x;                                                          \
  Input<Vector<float>> stats;                                                      \
  Input<Vector<float>> gamma;                                                      \
  Input<Vector<float>> beta;                                                       \
  Input<Vector<float>> mu;                                                         \
  Input<Vector<float>> scale;                                                      \
  unsigned nb, pix, C, c0, groups, cg, perSample, act;                             \
  void meanRstd(unsigned n, unsigned c, float &m, float &r) const {                \
    unsigned row = perSample ? n : 0, g = (c0 + c) / cg;                           \
    m = stats[(std::size_t(row) * groups + g) * 2];                                \
    r = stats[(std::size_t(row) * groups + g) * 2 + 1];                            \
  }

// z = (act(γ·x̂ + β) − μ)·s with x̂ = (x − mean)·rstd; μ = 0, s = 1 for a plain
// norm + activation, the proxy statistics for Proxy Norm. Workers split the pixels.
class NormAct : public MultiVertex {
public:
  EFFNET_NORM_ACT_FIELDS
  Output<Vector<float>> z;

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(nb * pix, workerId, numWorkers(), b, e);
    for (unsigned r = b; r < e; ++r) {
      unsigned n = r / pix;
      for (unsigned c = 0; c < C; ++c) {
        float m, rs;
        meanRstd(n, c, m, rs);
        std::size_t i = std::size_t(r) * C + c;
        float u = gamma[c] * ((x[i] - m) * rs) + beta[c];
        z[i] = (activate(act, u) - mu[c]) * scale[c];
      }
    }
    return true;
  }
};

// Backward partial sums of the fused vertex, workers split the channels:
// perImage[n][c] = (Σ dx̂, Σ dx̂·x̂) and perChannel[c] = (Σ dz·(a−μ), Σ dz, Σ du·x̂,
// Σ du), with da = dz·s, du = da·act'(u), dx̂ = du·γ.
class NormActGradPartials : public MultiVertex {
public:
  EFFNET_NORM_ACT_FIELDS
  Input<Vector<float>> dz;
  Output<Vector<float>> perImage;
  Output<Vector<float>> perChannel;

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(C, workerId, numWorkers(), b, e);
    for (unsigned c = b; c < e; ++c) {
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
      for (unsigned n = 0; n < nb; ++n) {
        float m, rs;
        meanRstd(n, c, m, rs);
        float t0 = 0.0f, t1 = 0.0f;
        for (unsigned p = 0; p < pix; ++p) {
          std::size_t i = (std::size_t(n) * pix + p) * C + c;
          float xh = (x[i] - m) * rs;
          float u = gamma[c] * xh + beta[c];
          float a = activate(act, u);
          float d = dz[i];
          float du = d * scale[c] * activateGrad(act, u);
          float dxh = du * gamma[c];
          s0 += d * (a - mu[c]);
          s1 += d;
          s2 += du * xh;
          s3 += du;
          t0 += dxh;
          t1 += dxh * xh;
        }
        perImage[(std::size_t(n) * C + c) * 2] = t0;
        perImage[(std::size_t(n) * C + c) * 2 + 1] = t1;
      }
      perChannel[std::size_t(c) * 4] = s0;
      perChannel[std::size_t(c) * 4 + 1] = s1;
      perChannel[std::size_t(c) * 4 + 2] = s2;
      perChannel[std::size_t(c) * 4 + 3] = s3;
    }
    return true;
  }
};

// sums [rows][C][2] of (dx̂, dx̂·x̂) → [rows][C/cg][2] means over `count` elements.
class NormGradFinalize : public Vertex {
public:
  Input<Vector<float>> sums;
  Output<Vector<float>> means;
  unsigned rows, C, cg, count;

  bool compute() {
    unsigned G = C / cg;
    for (unsigned r = 0; r < rows; ++r)
      for (unsigned g = 0; g < G; ++g) {
        float s = 0.0f, q = 0.0f;
        for (unsigned c = g * cg; c < (g + 1) * cg; ++c) {
          s += sums[(std::size_t(r) * C + c) * 2];
          q += sums[(std::size_t(r) * C + c) * 2 + 1];
        }
        means[(std::size_t(r) * G + g) * 2] = s / float(count);
        means[(std::size_t(r) * G + g) * 2 + 1] = q / float(count);
      }
    return true;
  }
};

// dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)); workers split the pixels.
class NormActGradApply : public MultiVertex {
public:
  EFFNET_NORM_ACT_FIELDS
  Input<Vector<float>> dz;
  Input<Vector<float>> gradMeans;
  Output<Vector<float>> dx;

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(nb * pix, workerId, numWorkers(), b, e);
    for (unsigned r = b; r < e; ++r) {
      unsigned n = r / pix, row = perSample ? n : 0;
      for (unsigned c = 0; c < C; ++c) {
        float m, rs;
        meanRstd(n, c, m, rs);
        unsigned g = (c0 + c) / cg;
        float m1 = gradMeans[(std::size_t(row) * groups + g) * 2];
        float m2 = gradMeans[(std::size_t(row) * groups + g) * 2 + 1];
        std::size_t i = std::size_t(r) * C + c;
        float xh = (x[i] - m) * rs;
        float u = gamma[c] * xh + beta[c];
        float dxh = dz[i] * scale[c] * activateGrad(act, u) * gamma[c];
        dx[i] = rs * (dxh - m1 - xh * m2);
      }
    }
    return true;
  }
};

// Proxy Norm statistics, partial over a slice of the K fixed normal quantiles q:
// p_k = γ(β' + (1+γ')q_k) + β, r_k = act(p_k); worker w sums its share of the slice
// into partials[w][c] = (Σ r_k, Σ r_k²). Slices on several tiles and the workers'
// partials are summed by ReducePartials, then ProxyNormFinalize gives μ and s.
class ProxyNormStats : public MultiVertex {
public:
  Input<Vector<float>> gamma;
  Input<Vector<float>> beta;
  Input<Vector<float>> beta2;
  Input<Vector<float>> gamma2;
  Input<Vector<float>> q;
  Output<Vector<float>> partials;
  unsigned act;

  bool compute(unsigned workerId) {
    unsigned C = gamma.size(), b, e;
    workerRange(q.size(), workerId, numWorkers(), b, e);
    float *mine = &partials[0] + std::size_t(workerId) * C * 2;
    for (unsigned c = 0; c < C; ++c) {
      float s = 0.0f, s2 = 0.0f;
      for (unsigned k = b; k < e; ++k) {
        float r = activate(act, gamma[c] * (beta2[c] + (1.0f + gamma2[c]) * q[k]) + beta[c]);
        s += r;
        s2 += r * r;
      }
      mine[c * 2] = s;
      mine[c * 2 + 1] = s2;
    }
    return true;
  }
};

// μ_c = Σr / K, s_c = 1/sqrt(Σr²/K − μ² + eps) from the reduced sums [C][2].
class ProxyNormFinalize : public Vertex {
public:
  Input<Vector<float>> sums;
  Output<Vector<float>> mu;
  Output<Vector<float>> scale;
  unsigned K, epsBits;

  bool compute() {
    float eps = bitsToFloat(epsBits);
    for (unsigned c = 0; c < mu.size(); ++c) {
      float m = sums[c * 2] / float(K);
      float v = sums[c * 2 + 1] / float(K) - m * m;
      if (v < 0.0f)
        v = 0.0f;
      mu[c] = m;
      scale[c] = 1.0f / std::sqrt(v + eps);
    }
    return true;
  }
};

// The quantile terms of the Proxy Norm parameter gradients, partial over a slice of
// the quantiles. Where the scale s is applied (scaleMode) decides ds and dμ from the
// reduced per-channel sums [C][4]:
//   0 full    z = (a−μ)·s        ds = Σ dz·(a−μ)      dμ = −s·Σ dz
//   1 delayed z = a−μ, s later   ds = sums[0] (the caller puts the gradient of the
//             scale there, e.g. Σ dout·z·gate of the SE gate)   dμ = −Σ dz
//   2 none    z = a−μ            ds = 0               dμ = −Σ dz
// then h_k = (dμ − ds·s³·(r_k − μ))/K · act'(p_k), t_k = β' + (1+γ')q_k,
// worker w writes partials[w][c] = (Σ h_k·t_k, Σ h_k, Σ h_k·q_k) over its share.
class ProxyNormParamGrad : public MultiVertex {
public:
  Input<Vector<float>> sums;
  Input<Vector<float>> gamma;
  Input<Vector<float>> beta;
  Input<Vector<float>> beta2;
  Input<Vector<float>> gamma2;
  Input<Vector<float>> q;
  Input<Vector<float>> mu;
  Input<Vector<float>> scale;
  Output<Vector<float>> partials;
  unsigned act, K, scaleMode;

  bool compute(unsigned workerId) {
    unsigned C = gamma.size(), b, e;
    workerRange(q.size(), workerId, numWorkers(), b, e);
    float *mine = &partials[0] + std::size_t(workerId) * C * 3;
    for (unsigned c = 0; c < C; ++c) {
      float s = scale[c];
      float ds = scaleMode == 2 ? 0.0f : sums[c * 4];
      float dmu = (scaleMode == 0 ? -s : -1.0f) * sums[c * 4 + 1];
      float s3 = s * s * s, sht = 0.0f, sh = 0.0f, shq = 0.0f;
      for (unsigned k = b; k < e; ++k) {
        float t = beta2[c] + (1.0f + gamma2[c]) * q[k];
        float p = gamma[c] * t + beta[c];
        float h = (dmu - ds * s3 * (activate(act, p) - mu[c])) / float(K) * activateGrad(act, p);
        sht += h * t;
        sh += h;
        shq += h * q[k];
      }
      mine[c * 3] = sht;
      mine[c * 3 + 1] = sh;
      mine[c * 3 + 2] = shq;
    }
    return true;
  }
};

// grads[c] = (dγ, dβ, dβ', dγ') = (Σ du·x̂ + Σ h·t, Σ du + Σ h, γ·Σ h, γ·Σ h·q) from the
// per-channel sums [C][4] and the reduced quantile terms [C][3]; with proxy = 0 only
// the data terms (a plain norm's dγ, dβ).
class ProxyNormGradFinalize : public Vertex {
public:
  Input<Vector<float>> sums;
  Input<Vector<float>> gamma;
  Input<Vector<float>> terms;
  Output<Vector<float>> grads;
  unsigned proxy;

  bool compute() {
    for (unsigned c = 0; c < gamma.size(); ++c) {
      float sht = proxy ? terms[c * 3] : 0.0f, sh = proxy ? terms[c * 3 + 1] : 0.0f;
      float shq = proxy ? terms[c * 3 + 2] : 0.0f;
      grads[c * 4] = sums[c * 4 + 2] + sht;
      grads[c * 4 + 1] = sums[c * 4 + 3] + sh;
      grads[c * 4 + 2] = gamma[c] * sh;
      grads[c * 4 + 3] = gamma[c] * shq;
    }
    return true;
  }
};
