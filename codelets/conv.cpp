// Convolution codelets in Poplar's vertex form.
//
// AMP family (pointwise, 16-channel groups, the dense stem): on an IPU these feed the
// accumulating matrix product unit; here the same arithmetic is written plainly.
// Vertical-MAC family (depthwise): channel-vector multiply-adds on the worker's
// vector unit, with per-worker partial weight gradients reduced afterwards.
#include "common.hpp"

using namespace poplar;
using namespace effnet_codelets;

// out = conv(in, weights) on this tile's block; workers split the output rows.
class ConvPartialAmp : public MultiVertex {
public:
  Input<Vector<float>> in;
  Input<Vector<float>> weights;
  Output<Vector<float>> out;
  EFFNET_CONV_GEOM_FIELDS

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(nb * outHN, workerId, numWorkers(), b, e);
    convForwardRows(geom(), &in[0], &weights[0], &out[0], b, e);
    return true;
  }
};

// dx = convᵀ(dy, weights) on this tile's input window; workers split the rows of dx.
class ConvPartialAmpBwdData : public MultiVertex {
public:
  Input<Vector<float>> dy;
  Input<Vector<float>> weights;
  Output<Vector<float>> dx;
  EFFNET_CONV_GEOM_FIELDS

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(nb * inHN, workerId, numWorkers(), b, e);
    convBackwardDataRows(geom(), &dy[0], &weights[0], &dx[0], b, e);
    return true;
  }
};

// dw = Σ x ⊗ dy over this tile's block; workers split the weight rows (kh·kw·cinG).
class ConvWeightGradAmp : public MultiVertex {
public:
  Input<Vector<float>> x;
  Input<Vector<float>> dy;
  Output<Vector<float>> dw;
  EFFNET_CONV_GEOM_FIELDS

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(kh * kw * cinG, workerId, numWorkers(), b, e);
    convWeightGrad(geom(), &x[0], &dy[0], &dw[0], b, e, 0, nb * outHN, false);
    return true;
  }
};

// Depthwise forward (cinG = coutG = 1): channel-vector MACs; workers split rows.
class DepthwiseVMac : public MultiVertex {
public:
  Input<Vector<float>> in;
  Input<Vector<float>> weights;
  Output<Vector<float>> out;
  EFFNET_CONV_GEOM_FIELDS

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(nb * outHN, workerId, numWorkers(), b, e);
    convForwardRows(geom(), &in[0], &weights[0], &out[0], b, e);
    return true;
  }
};

// Depthwise backward-data; workers split the rows of dx.
class DepthwiseVMacBwdData : public MultiVertex {
public:
  Input<Vector<float>> dy;
  Input<Vector<float>> weights;
  Output<Vector<float>> dx;
  EFFNET_CONV_GEOM_FIELDS

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(nb * inHN, workerId, numWorkers(), b, e);
    convBackwardDataRows(geom(), &dy[0], &weights[0], &dx[0], b, e);
    return true;
  }
};

// Depthwise weight gradient, vertical-MAC style: worker w sums its share of the output
// rows into its own partial `partials[w]` ([kh][kw][C]); a ReducePartials vertex sums
// the workers' partials afterwards.
class DepthwiseVMacWeightGrad : public MultiVertex {
public:
  Input<Vector<float>> x;
  Input<Vector<float>> dy;
  Output<Vector<float>> partials;
  EFFNET_CONV_GEOM_FIELDS

  bool compute(unsigned workerId) {
    unsigned b, e;
    workerRange(nb * outHN, workerId, numWorkers(), b, e);
    std::size_t len = std::size_t(kh) * kw * groups;
    float *mine = &partials[0] + workerId * len;
    for (std::size_t i = 0; i < len; ++i)
      mine[i] = 0.0f;
    convWeightGrad(geom(), &x[0], &dy[0], mine, 0, kh * kw, b, e, true);
    return true;
  }
};

// out (+)= Σ_p in[p·len + i]: reduces `np` partials (per-worker, per-tile or
// input-channel partial sums); workers split the elements.
class ReducePartials : public MultiVertex {
public:
  Input<Vector<float>> in;
  InOut<Vector<float>> out;
  unsigned np;
  unsigned accumulate;

  bool compute(unsigned workerId) {
    unsigned len = out.size(), b, e;
    workerRange(len, workerId, numWorkers(), b, e);
    for (unsigned i = b; i < e; ++i) {
      float acc = accumulate ? out[i] : 0.0f;
      for (unsigned p = 0; p < np; ++p)
        acc += in[std::size_t(p) * len + i];
      out[i] = acc;
    }
    return true;
  }
};
