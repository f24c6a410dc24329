// Row-major float32 GEMM through OpenBLAS's cblas_sgemm (the scipy-openblas32
// wheel's build, symbols prefixed scipy_), as an XLA FFI custom call on CPU:
// an attempt of issue 31 to give XLA's CPU dots the BLAS kernel eager
// PyTorch calls. Built and timed by run.py; nothing in research/ uses it.
//
// c = op(a) @ op(b), op transposing the last two axes when trans_a/trans_b.
// Leading axes are batch axes (jax.ffi's vmap_method="expand_dims" adds
// them): equal on both operands, or 1 on one of them (broadcast).
#include <cstdint>
#include "xla/ffi/api/ffi.h"
#include "cblas.h"

namespace ffi = xla::ffi;

static ffi::Error Sgemm(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                        ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b) {
  auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  size_t ra = da.size(), rb = db.size();
  if (ra < 2 || ra != rb || dc.size() != ra)
    return ffi::Error::InvalidArgument("research sgemm: operands must have the same rank >= 2");
  int64_t batch_a = 1, batch_b = 1;
  for (size_t i = 0; i + 2 < ra; ++i) { batch_a *= da[i]; batch_b *= db[i]; }
  int64_t batch = batch_a > batch_b ? batch_a : batch_b;
  if ((batch_a != batch && batch_a != 1) || (batch_b != batch && batch_b != 1))
    return ffi::Error::InvalidArgument("research sgemm: batch dimensions do not broadcast");
  int64_t a0 = da[ra - 2], a1 = da[ra - 1], b0 = db[rb - 2], b1 = db[rb - 1];
  int64_t m = trans_a ? a1 : a0, k = trans_a ? a0 : a1;
  int64_t kb = trans_b ? b1 : b0, n = trans_b ? b0 : b1;
  if (k != kb || dc[ra - 2] != m || dc[ra - 1] != n)
    return ffi::Error::InvalidArgument("research sgemm: shapes do not match");
  const float* pa = a.typed_data();
  const float* pb = b.typed_data();
  float* pc = c->typed_data();
  auto ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  if (batch_b == 1 && !trans_a && batch > 1) {  // x (batch, m, k) @ w: one gemm over batch*m rows.
    scipy_cblas_sgemm(CblasRowMajor, ta, tb, batch * m, n, k, 1.0f, pa, a1, pb, b1, 0.0f, pc, n);
    return ffi::Error::Success();
  }
  for (int64_t i = 0; i < batch; ++i) {
    scipy_cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f,
                      pa + (batch_a == 1 ? 0 : i * a0 * a1), a1,
                      pb + (batch_b == 1 ? 0 : i * b0 * b1), b1, 0.0f, pc + i * m * n, n);
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResearchSgemm, Sgemm,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
