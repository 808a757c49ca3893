//! Running a codelet on the host: its C trampoline into `codelets/*.cpp` (compiled
//! against the Poplar shim) and the checked entry points.

use super::*;

type Trampoline = unsafe extern "C" fn(*const *mut f32, *const usize, *const u32) -> i32;

macro_rules! trampolines {
    ($($name:ident),* $(,)?) => {
        mod ffi {
            unsafe extern "C" {
                $(pub fn $name(f: *const *mut f32, n: *const usize, p: *const u32) -> i32;)*
            }
        }
    };
}
trampolines!(
    effnet_ipu_ConvPartialAmp,
    effnet_ipu_ConvPartialAmpBwdData,
    effnet_ipu_ConvWeightGradAmp,
    effnet_ipu_DepthwiseVMac,
    effnet_ipu_DepthwiseVMacBwdData,
    effnet_ipu_DepthwiseVMacWeightGrad,
    effnet_ipu_ReducePartials,
    effnet_ipu_NormStats,
    effnet_ipu_NormFinalize,
    effnet_ipu_NormAct,
    effnet_ipu_NormActGradPartials,
    effnet_ipu_NormGradFinalize,
    effnet_ipu_NormActGradApply,
    effnet_ipu_ProxyNormStats,
    effnet_ipu_ProxyNormFinalize,
    effnet_ipu_ProxyNormParamGrad,
    effnet_ipu_ProxyNormGradFinalize,
    effnet_ipu_BiasAct,
    effnet_ipu_BiasActGrad,
    effnet_ipu_ChannelSum,
    effnet_ipu_PoolGrad,
    effnet_ipu_SeGate,
    effnet_ipu_SeGateGrad,
    effnet_ipu_Add,
    effnet_ipu_SoftmaxXent,
    effnet_ipu_ScaledAdd,
    effnet_ipu_RmsPropTf,
);

impl Codelet {
    fn trampoline(&self) -> Trampoline {
        use ffi::*;
        match self.kind {
            Kind::ConvPartialAmp => effnet_ipu_ConvPartialAmp,
            Kind::ConvPartialAmpBwdData => effnet_ipu_ConvPartialAmpBwdData,
            Kind::ConvWeightGradAmp => effnet_ipu_ConvWeightGradAmp,
            Kind::DepthwiseVMac => effnet_ipu_DepthwiseVMac,
            Kind::DepthwiseVMacBwdData => effnet_ipu_DepthwiseVMacBwdData,
            Kind::DepthwiseVMacWeightGrad => effnet_ipu_DepthwiseVMacWeightGrad,
            Kind::ReducePartials => effnet_ipu_ReducePartials,
            Kind::NormStats => effnet_ipu_NormStats,
            Kind::NormFinalize => effnet_ipu_NormFinalize,
            Kind::NormAct => effnet_ipu_NormAct,
            Kind::NormActGradPartials => effnet_ipu_NormActGradPartials,
            Kind::NormGradFinalize => effnet_ipu_NormGradFinalize,
            Kind::NormActGradApply => effnet_ipu_NormActGradApply,
            Kind::ProxyNormStats => effnet_ipu_ProxyNormStats,
            Kind::ProxyNormFinalize => effnet_ipu_ProxyNormFinalize,
            Kind::ProxyNormParamGrad => effnet_ipu_ProxyNormParamGrad,
            Kind::ProxyNormGradFinalize => effnet_ipu_ProxyNormGradFinalize,
            Kind::BiasAct => effnet_ipu_BiasAct,
            Kind::BiasActGrad => effnet_ipu_BiasActGrad,
            Kind::ChannelSum => effnet_ipu_ChannelSum,
            Kind::PoolGrad => effnet_ipu_PoolGrad,
            Kind::SeGate => effnet_ipu_SeGate,
            Kind::SeGateGrad => effnet_ipu_SeGateGrad,
            Kind::Add => effnet_ipu_Add,
            Kind::SoftmaxXent => effnet_ipu_SoftmaxXent,
            Kind::ScaledAdd => effnet_ipu_ScaledAdd,
            Kind::RmsPropTf => effnet_ipu_RmsPropTf,
        }
    }

    /// Runs the codelet on host buffers through its C trampoline.
    ///
    /// # Safety
    /// `fields` must hold one `(pointer, len)` per field of [`Codelet::fields`], each
    /// valid for `len` reads (and writes, for `Out`/`InOut` fields), with written
    /// regions not aliasing any other field, except a pair of
    /// [`Codelet::in_place`] given exactly the same region.
    pub unsafe fn run(&self, fields: &[(*mut f32, usize)]) -> Result<()> {
        let spec = self.fields()?;
        if spec.len() != fields.len() || spec.iter().zip(fields).any(|(s, f)| s.2 != f.1) {
            return Err(Error::InvalidArgument(format!(
                "{}: fields do not match",
                self.name()
            )));
        }
        let ptrs: Vec<*mut f32> = fields.iter().map(|f| f.0).collect();
        let lens: Vec<usize> = fields.iter().map(|f| f.1).collect();
        // SAFETY: the caller guarantees the pointers and lengths (checked above against
        // the declaration); the trampoline reads `params.len()` scalars, which
        // `fields()` checked, and touches each field only within its length.
        let ok = unsafe { (self.trampoline())(ptrs.as_ptr(), lens.as_ptr(), self.params.as_ptr()) };
        if ok == 1 {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "{}: compute() returned false",
                self.name()
            )))
        }
    }

    /// Runs the codelet on owned host buffers (one per field, in order, each of the
    /// declared length): the safe entry point for tests and single-vertex use.
    pub fn run_on(&self, buffers: &mut [Vec<f32>]) -> Result<()> {
        let spec = self.fields()?;
        if spec.len() != buffers.len() {
            return Err(Error::InvalidArgument(format!(
                "{} takes {} buffers, got {}",
                self.name(),
                spec.len(),
                buffers.len()
            )));
        }
        for ((name, _, len), b) in spec.iter().zip(buffers.iter()) {
            if b.len() != *len {
                return Err(Error::InvalidArgument(format!(
                    "{}.{name}: {} elements, needs {len}",
                    self.name(),
                    b.len()
                )));
            }
        }
        let f: Vec<(*mut f32, usize)> = buffers
            .iter_mut()
            .map(|b| (b.as_mut_ptr(), b.len()))
            .collect();
        // SAFETY: each pointer comes from a distinct Vec of exactly the declared length.
        unsafe { self.run(&f) }
    }
}
