// A minimal host-side stand-in for the parts of Poplar's vertex API that the effnet
// codelets use: `poplar::Vertex`, `poplar::MultiVertex`, the `Input`/`Output`/`InOut`
// field templates and `Vector`/`VectorList`. Each field is a thin, non-owning view
// over a host pointer and a size, filled in by the C trampolines in
// `codelets/trampolines.cpp`. On a real IPU these types come from Poplar's own header
// and the codelet sources compile unchanged.
//
// Written for effnet from the public shape of the API (class names, field templates,
// `compute()` / `compute(unsigned workerId)`), not from Poplar's sources.
#pragma once

#include <cstddef>

namespace poplar {

// A tile-local array of `T` (a view: pointer and length).
template <typename T> class Vector {
public:
  Vector() : data_(nullptr), size_(0) {}
  Vector(T *data, std::size_t size) : data_(data), size_(size) {}
  std::size_t size() const { return size_; }
  T *data() const { return data_; }
  T &operator[](std::size_t i) const { return data_[i]; }
  T *begin() const { return data_; }
  T *end() const { return data_ + size_; }

private:
  T *data_;
  std::size_t size_;
};

// A list of vectors of `T` (here: views over consecutive regions of host memory).
template <typename T> class VectorList {
public:
  VectorList() : lists_(nullptr), size_(0) {}
  VectorList(Vector<T> *lists, std::size_t size) : lists_(lists), size_(size) {}
  std::size_t size() const { return size_; }
  const Vector<T> &operator[](std::size_t i) const { return lists_[i]; }

private:
  Vector<T> *lists_;
  std::size_t size_;
};

namespace detail {
template <typename V> struct Elem;
template <typename T> struct Elem<Vector<T>> { typedef T type; };
template <typename T> struct Elem<VectorList<T>> { typedef T type; };
} // namespace detail

// Field wrappers: `Input` is read-only, `Output` write-only, `InOut` both. They
// forward to the wrapped view.
template <typename V> class Input : public V {
public:
  Input() {}
  Input &operator=(const V &v) {
    V::operator=(v);
    return *this;
  }
};
template <typename V> class Output : public V {
public:
  Output() {}
  Output &operator=(const V &v) {
    V::operator=(v);
    return *this;
  }
};
template <typename V> class InOut : public V {
public:
  InOut() {}
  InOut &operator=(const V &v) {
    V::operator=(v);
    return *this;
  }
};

// A vertex run by one worker context: `bool compute()`.
class Vertex {
public:
  Vertex() {}
};

// A vertex run by every worker context of its tile at once:
// `bool compute(unsigned workerId)`, `workerId` in `[0, numWorkers())`.
class MultiVertex {
public:
  MultiVertex() {}
  static unsigned numWorkers() { return 6; }
};

} // namespace poplar
