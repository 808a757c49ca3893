// Shared helpers of the effnet codelets (plain C++, no Poplar dependency beyond the
// vertex header).
#pragma once

#include <cmath>
#include <cstring>
#include <poplar/Vertex.hpp>

namespace effnet_codelets {

// Worker `w` of `workers` takes the items [begin, end) of `n`.
inline void workerRange(unsigned n, unsigned w, unsigned workers, unsigned &begin,
                        unsigned &end) {
  unsigned per = n / workers, extra = n % workers;
  begin = w * per + (w < extra ? w : extra);
  end = begin + per + (w < extra ? 1u : 0u);
}

inline float bitsToFloat(unsigned bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float sigmoidf(float u) { return 1.0f / (1.0f + std::exp(-u)); }

// act: 0 identity, 1 swish (u·σ(u)), 2 sigmoid.
inline float activate(unsigned act, float u) {
  if (act == 1)
    return u * sigmoidf(u);
  if (act == 2)
    return sigmoidf(u);
  return u;
}

// d act / du.
inline float activateGrad(unsigned act, float u) {
  if (act == 1) {
    float s = sigmoidf(u);
    return s * (1.0f + u * (1.0f - s));
  }
  if (act == 2) {
    float s = sigmoidf(u);
    return s * (1.0f - s);
  }
  return 1.0f;
}

// The geometry of a partial convolution on one tile, NHWC. Coordinates are global
// (image) coordinates; a tile holds an input window of rows [inH0, inH0+inHN) and
// columns [inW0, inW0+inWN) and an output block of rows [outH0, outH0+outHN) and
// columns [outW0, outW0+outWN). Taps outside the window read zero.
// Layouts: in [nb][inHN][inWN][groups·cinG]; out [nb][outHN][outWN][groups·coutG];
// weights [kh][kw][cinG][groups·coutG].
struct ConvGeom {
  unsigned nb, inH0, inHN, inW0, inWN, outH0, outHN, outW0, outWN, kh, kw, stride,
      padT, padL, groups, cinG, coutG;
};

// Declares the geometry as scalar vertex fields (Poplar vertices take scalars).
#define EFFNET_CONV_GEOM_FIELDS                                                    \
  unsigned nb, inH0, inHN, inW0, inWN, outH0, outHN, outW0, outWN, kh, kw, stride, \
      padT, padL, groups, cinG, coutG;                                             \
  ConvGeom geom() const {                                                          \
    ConvGeom g = {nb,    inH0,  inHN,  inW0, inWN, outH0, outHN, outW0, outWN,     \
                  kh,    kw,    stride, padT, padL, groups, cinG,  coutG};         \
    return g;                                                                      \
  }

// out rows [r0, r1) of nb·outHN (overwritten).
inline void convForwardRows(const ConvGeom &g, const float *in, const float *w,
                            float *out, unsigned r0, unsigned r1) {
  const unsigned ci = g.groups * g.cinG, co = g.groups * g.coutG;
  for (unsigned r = r0; r < r1; ++r) {
    unsigned n = r / g.outHN, oy = r % g.outHN;
    int oh = int(g.outH0 + oy);
    for (unsigned ox = 0; ox < g.outWN; ++ox) {
      int ow = int(g.outW0 + ox);
      float *o = out + (std::size_t(r) * g.outWN + ox) * co;
      for (unsigned c = 0; c < co; ++c)
        o[c] = 0.0f;
      for (unsigned ky = 0; ky < g.kh; ++ky) {
        int li = oh * int(g.stride) + int(ky) - int(g.padT) - int(g.inH0);
        if (li < 0 || li >= int(g.inHN))
          continue;
        for (unsigned kx = 0; kx < g.kw; ++kx) {
          int lj = ow * int(g.stride) + int(kx) - int(g.padL) - int(g.inW0);
          if (lj < 0 || lj >= int(g.inWN))
            continue;
          const float *ip = in + ((std::size_t(n) * g.inHN + li) * g.inWN + lj) * ci;
          const float *wp = w + std::size_t(ky * g.kw + kx) * g.cinG * co;
          for (unsigned gr = 0; gr < g.groups; ++gr) {
            float *og = o + gr * g.coutG;
            for (unsigned c = 0; c < g.cinG; ++c) {
              float xv = ip[gr * g.cinG + c];
              const float *wr = wp + std::size_t(c) * co + gr * g.coutG;
              for (unsigned k = 0; k < g.coutG; ++k)
                og[k] += xv * wr[k];
            }
          }
        }
      }
    }
  }
}

// dx rows [r0, r1) of nb·inHN (overwritten): the adjoint of convForwardRows in `in`,
// restricted to the window, gathering from the dy block.
inline void convBackwardDataRows(const ConvGeom &g, const float *dy, const float *w,
                                 float *dx, unsigned r0, unsigned r1) {
  const unsigned ci = g.groups * g.cinG, co = g.groups * g.coutG;
  for (unsigned r = r0; r < r1; ++r) {
    unsigned n = r / g.inHN, iy = r % g.inHN;
    int ih = int(g.inH0 + iy);
    for (unsigned ix = 0; ix < g.inWN; ++ix) {
      int iw = int(g.inW0 + ix);
      float *d = dx + (std::size_t(r) * g.inWN + ix) * ci;
      for (unsigned c = 0; c < ci; ++c)
        d[c] = 0.0f;
      for (unsigned ky = 0; ky < g.kh; ++ky) {
        int t = ih + int(g.padT) - int(ky);
        if (t < 0 || t % int(g.stride) != 0)
          continue;
        int ly = t / int(g.stride) - int(g.outH0);
        if (ly < 0 || ly >= int(g.outHN))
          continue;
        for (unsigned kx = 0; kx < g.kw; ++kx) {
          int u = iw + int(g.padL) - int(kx);
          if (u < 0 || u % int(g.stride) != 0)
            continue;
          int lx = u / int(g.stride) - int(g.outW0);
          if (lx < 0 || lx >= int(g.outWN))
            continue;
          const float *dp = dy + ((std::size_t(n) * g.outHN + ly) * g.outWN + lx) * co;
          const float *wp = w + std::size_t(ky * g.kw + kx) * g.cinG * co;
          for (unsigned gr = 0; gr < g.groups; ++gr) {
            const float *dg = dp + gr * g.coutG;
            for (unsigned c = 0; c < g.cinG; ++c) {
              const float *wr = wp + std::size_t(c) * co + gr * g.coutG;
              float acc = 0.0f;
              for (unsigned k = 0; k < g.coutG; ++k)
                acc += dg[k] * wr[k];
              d[gr * g.cinG + c] += acc;
            }
          }
        }
      }
    }
  }
}

// Weight-gradient rows [w0, w1) of kh·kw·cinG (each row groups·coutG wide), summed over
// dy rows [r0, r1) of nb·outHN; `accumulate` adds to dw instead of overwriting.
inline void convWeightGrad(const ConvGeom &g, const float *x, const float *dy,
                           float *dw, unsigned w0, unsigned w1, unsigned r0,
                           unsigned r1, bool accumulate) {
  const unsigned ci = g.groups * g.cinG, co = g.groups * g.coutG;
  for (unsigned row = w0; row < w1; ++row) {
    unsigned ky = row / (g.kw * g.cinG), kx = (row / g.cinG) % g.kw, c = row % g.cinG;
    float *dr = dw + std::size_t(row) * co;
    if (!accumulate)
      for (unsigned k = 0; k < co; ++k)
        dr[k] = 0.0f;
    for (unsigned r = r0; r < r1; ++r) {
      unsigned n = r / g.outHN, oy = r % g.outHN;
      int li = int(g.outH0 + oy) * int(g.stride) + int(ky) - int(g.padT) - int(g.inH0);
      if (li < 0 || li >= int(g.inHN))
        continue;
      for (unsigned ox = 0; ox < g.outWN; ++ox) {
        int lj = int(g.outW0 + ox) * int(g.stride) + int(kx) - int(g.padL) - int(g.inW0);
        if (lj < 0 || lj >= int(g.inWN))
          continue;
        const float *xp = x + ((std::size_t(n) * g.inHN + li) * g.inWN + lj) * ci;
        const float *dp = dy + (std::size_t(r) * g.outWN + ox) * co;
        for (unsigned gr = 0; gr < g.groups; ++gr) {
          float xv = xp[gr * g.cinG + c];
          for (unsigned k = 0; k < g.coutG; ++k)
            dr[gr * g.coutG + k] += xv * dp[gr * g.coutG + k];
        }
      }
    }
  }
}

} // namespace effnet_codelets
