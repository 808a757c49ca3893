// Element-wise and small codelets in Poplar's vertex form: bias + activation
// (swish / sigmoid) and its gradient, the squeeze-excitation gate and its gradient,
// channel sums (pooling, bias gradients), pooling gradient, addition (skip
// connections), softmax cross-entropy, and the scaled add of the weight update.
#include "common.hpp"

using namespace poplar;
using namespace effnet_codelets;

// y[r][c] = act(x[r][c] + bias[c]); act 0 none, 1 swish, 2 sigmoid. Workers split rows.
class BiasAct : public MultiVertex {
public:
  Input<Vector<float>> x;
  Input<Vector<float>> bias;
  Output<Vector<float>> y;
  unsigned rows, C, act;

  bool compute(unsigned workerId) {
    forEachRowElement(rows, C, workerId, numWorkers(), [&](unsigned, unsigned c, std::size_t i) {
      y[i] = activate(act, x[i] + bias[c]);
    });
    return true;
  }
};

// dx = dy·act'(x + bias) (the bias gradient is a ChannelSum of dx).
class BiasActGrad : public MultiVertex {
public:
  Input<Vector<float>> x;
  Input<Vector<float>> bias;
  Input<Vector<float>> dy;
  Output<Vector<float>> dx;
  unsigned rows, C, act;

  bool compute(unsigned workerId) {
    forEachRowElement(rows, C, workerId, numWorkers(), [&](unsigned, unsigned c, std::size_t i) {
      dx[i] = dy[i] * activateGrad(act, x[i] + bias[c]);
    });
    return true;
  }
};

// out[n][c] = scale · Σ_p x[n][p][c]; workers split the channels.
class ChannelSum : public MultiVertex {
public:
  Input<Vector<float>> x;
  Output<Vector<float>> out;
  unsigned nb, pix, C, scaleBits;

  bool compute(unsigned workerId) {
    float scale = bitsToFloat(scaleBits);
    unsigned b, e;
    workerRange(C, workerId, numWorkers(), b, e);
    for (unsigned n = 0; n < nb; ++n)
      for (unsigned c = b; c < e; ++c) {
        float s = 0.0f;
        for (unsigned p = 0; p < pix; ++p)
          s += x[(std::size_t(n) * pix + p) * C + c];
        out[std::size_t(n) * C + c] = s * scale;
      }
    return true;
  }
};

// dx[n][p][c] = scale · g[n][c] (the gradient of a mean pool); workers split rows.
class PoolGrad : public MultiVertex {
public:
  Input<Vector<float>> g;
  Output<Vector<float>> dx;
  unsigned nb, pix, C, scaleBits;

  bool compute(unsigned workerId) {
    float scale = bitsToFloat(scaleBits);
    forEachRowElement(nb * pix, C, workerId, numWorkers(), [&](unsigned r, unsigned c, std::size_t i) {
      dx[i] = scale * g[std::size_t(r / pix) * C + c];
    });
    return true;
  }
};

// y[n][p][c] = x[n][p][c] · gate[n][c]; workers split rows.
class SeGate : public MultiVertex {
public:
  Input<Vector<float>> x;
  Input<Vector<float>> gate;
  Output<Vector<float>> y;
  unsigned nb, pix, C;

  bool compute(unsigned workerId) {
    forEachRowElement(nb * pix, C, workerId, numWorkers(), [&](unsigned r, unsigned c, std::size_t i) {
      y[i] = x[i] * gate[std::size_t(r / pix) * C + c];
    });
    return true;
  }
};

// dx = dy·gate and dgate[n][c] = Σ_p dy·x; workers split the channels.
class SeGateGrad : public MultiVertex {
public:
  Input<Vector<float>> x;
  Input<Vector<float>> gate;
  Input<Vector<float>> dy;
  Output<Vector<float>> dx;
  Output<Vector<float>> dgate;
  unsigned nb, pix, C;

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(C, workerId, numWorkers(), b, e);
    for (unsigned n = 0; n < nb; ++n)
      for (unsigned c = b; c < e; ++c) {
        float g = gate[std::size_t(n) * C + c], s = 0.0f;
        for (unsigned p = 0; p < pix; ++p) {
          std::size_t i = (std::size_t(n) * pix + p) * C + c;
          dx[i] = dy[i] * g;
          s += dy[i] * x[i];
        }
        dgate[std::size_t(n) * C + c] = s;
      }
    return true;
  }
};

// y = a + b; workers split the elements.
class Add : public MultiVertex {
public:
  Input<Vector<float>> a;
  Input<Vector<float>> b;
  Output<Vector<float>> y;

  bool compute(unsigned workerId) {
    unsigned lo, hi;
    workerRange(y.size(), workerId, numWorkers(), lo, hi);
    for (unsigned i = lo; i < hi; ++i)
      y[i] = a[i] + b[i];
    return true;
  }
};

// Mean softmax cross-entropy over n rows of k logits against target probabilities;
// dlogits = (softmax − target) / n.
class SoftmaxXent : public Vertex {
public:
  Input<Vector<float>> logits;
  Input<Vector<float>> target;
  Output<Vector<float>> loss;
  Output<Vector<float>> dlogits;
  unsigned n, k, total;

  bool compute() {
    float sum = 0.0f;
    for (unsigned r = 0; r < n; ++r) {
      const float *l = &logits[0] + std::size_t(r) * k;
      float m = l[0];
      for (unsigned j = 1; j < k; ++j)
        m = l[j] > m ? l[j] : m;
      float s = 0.0f;
      for (unsigned j = 0; j < k; ++j)
        s += std::exp(l[j] - m);
      float lse = m + std::log(s);
      for (unsigned j = 0; j < k; ++j) {
        std::size_t i = std::size_t(r) * k + j;
        sum -= target[i] * (l[j] - lse);
        dlogits[i] = (std::exp(l[j] - lse) - target[i]) / float(total);
      }
    }
    loss[0] = sum / float(total);
    return true;
  }
};

// w += scale · dw (the SGD step of the modelled training loop).
class ScaledAdd : public MultiVertex {
public:
  InOut<Vector<float>> w;
  Input<Vector<float>> dw;
  unsigned scaleBits;

  bool compute(unsigned workerId) {
    float scale = bitsToFloat(scaleBits);
    unsigned lo, hi;
    workerRange(w.size(), workerId, numWorkers(), lo, hi);
    for (unsigned i = lo; i < hi; ++i)
      w[i] += scale * dw[i];
    return true;
  }
};

// One TensorFlow-RMSProp step on an fp32 master slice (ε inside the square root,
// L2 weight decay): g' = gradScale·g + wd·w ; ms = ρ·ms + (1−ρ)·g'² ;
// mom = μ·mom + lr·g'/√(ms + ε) ; w −= mom. `g` is the accumulated gradient of the
// global batch, `gradScale` its 1 / (micro-batches · replicas); the step consumes it
// (leaves zeros for the next accumulation). Workers split the elements.
class RmsPropTf : public MultiVertex {
public:
  InOut<Vector<float>> w;
  InOut<Vector<float>> g;
  InOut<Vector<float>> ms;
  InOut<Vector<float>> mom;
  unsigned lrBits, decayBits, momentumBits, epsBits, wdBits, gradScaleBits;

  bool compute(unsigned workerId) {
    float lr = bitsToFloat(lrBits), rho = bitsToFloat(decayBits);
    float mu = bitsToFloat(momentumBits), eps = bitsToFloat(epsBits);
    float wd = bitsToFloat(wdBits), gs = bitsToFloat(gradScaleBits);
    unsigned lo, hi;
    workerRange(w.size(), workerId, numWorkers(), lo, hi);
    for (unsigned i = lo; i < hi; ++i) {
      float gv = gs * g[i] + wd * w[i];
      g[i] = 0.0f;
      float m = rho * ms[i] + (1.0f - rho) * (gv * gv);
      ms[i] = m;
      float step = lr * gv / std::sqrt(m + eps);
      float v = mu * mom[i] + step;
      mom[i] = v;
      w[i] -= v;
    }
    return true;
  }
};
