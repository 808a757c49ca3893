//! The bodies of the fuzz targets (`ffi/fuzz`, run with `cargo fuzz`; see ffi/fuzz/FUZZING.md)
//! and, in this crate's tests, the replay of their saved corpora and crash
//! regressions, so that `cargo test` checks every input any fuzzer run kept.
//!
//! Each body takes arbitrary bytes, must never panic, abort or hang, and panics only
//! when it finds a broken promise (an `EFFNET_INTERNAL` status, a failure without a
//! message, a success with inconsistent sizes): that is what a fuzzer reports.
//!
//! Compiled for tests and for fuzzing builds (`--cfg fuzzing`, set by `cargo fuzz`)
//! only; not part of the C library.

use std::ffi::CStr;
use std::sync::OnceLock;

use effnet_core::data::folder::decode_image;
use effnet_core::data::transform::{Augment, transform};
use effnet_core::io::npy::{self, NpyData};
use effnet_core::model::{Network, Weights};

use crate::context::effnet_context;
use crate::conv::{
    effnet_conv_desc, effnet_conv_plan_create, effnet_conv_plan_destroy, effnet_conv_plan_shape,
    effnet_conv_shape, effnet_conv_workspace_size,
};
use crate::conv_packed::effnet_conv_packed_weights_size;
use crate::norm::{
    effnet_norm_desc, effnet_norm_plan_create, effnet_norm_plan_destroy, effnet_norm_plan_shape,
    effnet_norm_shape, effnet_norm_workspace_size,
};
use crate::ops::{
    effnet_cross_entropy_workspace_size, effnet_gate_backward_workspace_size,
    effnet_global_avg_pool_workspace_size, effnet_nhwc,
};
use crate::proxy_norm::{
    effnet_proxy_norm_desc, effnet_proxy_norm_plan_create, effnet_proxy_norm_plan_destroy,
    effnet_proxy_norm_plan_shape, effnet_proxy_norm_shape, effnet_proxy_norm_workspace_size,
};
use crate::sized::EFFNET_MAX_STRUCT_SIZE;
use crate::status::{effnet_last_error, effnet_status};

/// The safetensors weights loader: decode (effnet checkpoint or timm state dict), then
/// load into a small network (the tensors are matched by name and shape; a mismatch
/// must be an error that leaves the network unchanged).
pub fn safetensors(data: &[u8]) {
    thread_local! {
        static NET: std::cell::RefCell<Network> = std::cell::RefCell::new(small_network());
    }
    let Ok(w) = Weights::decode(data, "fuzz") else {
        return;
    };
    for t in w.tensors.values() {
        let n: usize = t.shape.iter().product();
        assert_eq!(
            n,
            t.data.len(),
            "a decoded tensor's shape and data disagree"
        );
    }
    let _ = w.classes();
    NET.with(|net| {
        let mut net = net.borrow_mut();
        let before = net.params().values.clone();
        if net.load_weights(&w).is_err() {
            assert!(
                net.params().values == before,
                "a failed load changed the network"
            );
        }
    });
}

fn small_network() -> Network {
    let cfg = effnet_core::arch::ArchConfig::from_name("tiny_g16_lnpn")
        .expect("tiny_g16_lnpn")
        .with_classes(3);
    Network::new(&cfg, 1).expect("the fuzzers' network")
}

/// The `.npy` reader: a parsed array's element count matches its shape.
pub fn npy(data: &[u8]) {
    if let Ok(a) = npy::parse(data, "fuzz") {
        let n = match &a.data {
            NpyData::F32(v) => v.len(),
            NpyData::I64(v) => v.len(),
        };
        assert_eq!(
            a.shape.iter().try_fold(1usize, |p, &d| p.checked_mul(d)),
            Some(n),
            "shape {:?} with {n} elements",
            a.shape
        );
    }
}

/// The image-folder decoder path: what `ImageFolder::load` and `batch` do with a
/// file's bytes (decode PNG/JPEG to RGB8, then the evaluation and the training
/// transforms at a small resolution).
pub fn image(data: &[u8]) {
    let Ok(img) = decode_image(data, "fuzz") else {
        return;
    };
    assert!(
        img.width() >= 1 && img.height() >= 1,
        "an empty image decoded"
    );
    let res = 1 + (data.len() % 12);
    let mut out = vec![0.0f32; res * res * 3];
    for augment in [Augment::Eval, Augment::Train { seed: 7, epoch: 1 }] {
        transform(&img, res, augment, data.len() as u64, &mut out).expect("transform");
        assert!(out.iter().all(|v| v.is_finite()), "non-finite pixel");
    }
}

/// A context made once and shared by every descriptor run (one worker thread).
fn context() -> *const effnet_context {
    static CTX: OnceLock<usize> = OnceLock::new();
    let addr = *CTX.get_or_init(|| {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let s = unsafe { crate::context::effnet_context_create(1, &mut ctx) };
        assert_eq!(s, effnet_status::EFFNET_OK, "context");
        ctx.addr()
    });
    std::ptr::without_provenance(addr)
}

fn last_error() -> String {
    // SAFETY: effnet_last_error always returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(effnet_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// The promises every call makes: a documented status, never `EFFNET_INTERNAL`; a
/// message exactly when it fails. Returns whether it succeeded.
fn checked(what: &str, s: effnet_status) -> bool {
    let m = last_error();
    assert_ne!(
        s,
        effnet_status::EFFNET_INTERNAL,
        "{what}: internal error: {m}"
    );
    if s == effnet_status::EFFNET_OK {
        assert!(m.is_empty(), "{what}: OK with a message: {m}");
        true
    } else {
        assert!(!m.is_empty(), "{what}: {s:?} without a message");
        false
    }
}

/// 8-byte aligned storage for one descriptor as the caller would pass it:
/// `EFFNET_MAX_STRUCT_SIZE` bytes, so any `struct_size` effnet accepts is readable.
#[repr(C, align(8))]
struct Raw([u8; EFFNET_MAX_STRUCT_SIZE]);

impl Raw {
    /// `bytes` at the start, zeros after; `struct_size` is taken from the bytes when
    /// `keep_size`, else set to `size` (most inputs should get past the size check).
    fn new(bytes: &[u8], keep_size: bool, size: usize) -> Box<Raw> {
        let mut r = Box::new(Raw([0; EFFNET_MAX_STRUCT_SIZE]));
        let n = bytes.len().min(EFFNET_MAX_STRUCT_SIZE);
        r.0[..n].copy_from_slice(&bytes[..n]);
        if !keep_size {
            r.0[..8].copy_from_slice(&size.to_ne_bytes());
        }
        r
    }
    fn ptr<T>(&self) -> *const T {
        self.0.as_ptr().cast()
    }
}

/// A `size_t` out of the input (for counts such as a standalone Proxy Norm's `x_len`).
fn word(bytes: &[u8], at: usize) -> usize {
    let mut w = [0u8; 8];
    for (i, b) in bytes.iter().skip(at).take(8).enumerate() {
        w[i] = *b;
    }
    usize::from_le_bytes(w)
}

/// C descriptor validation: the first byte picks a create function (or size query)
/// and whether the input's own `struct_size` is kept; the rest is the descriptor's
/// bytes as a caller would pass them. On success the plan's shape and workspace
/// queries run and must give consistent sizes; every failure needs a message.
pub fn descriptors(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let keep_size = sel & 0x80 != 0;
    let ctx = context();
    match sel & 0x7 {
        0 => conv(ctx, rest, keep_size),
        1 => norm(ctx, rest, keep_size),
        2 | 3 => proxy(ctx, rest, keep_size, sel & 0x7 == 3),
        4 => nhwc(ctx, rest, keep_size),
        _ => loss(ctx, rest),
    }
}

fn conv(ctx: *const effnet_context, bytes: &[u8], keep: bool) {
    let d = Raw::new(bytes, keep, size_of::<effnet_conv_desc>());
    let mut plan = std::ptr::null_mut();
    // SAFETY: `d` holds EFFNET_MAX_STRUCT_SIZE readable bytes; valid out-pointer.
    let s = unsafe { effnet_conv_plan_create(ctx, d.ptr(), &mut plan) };
    if !checked("conv plan create", s) {
        assert!(plan.is_null(), "out written on failure");
        return;
    }
    let mut sh = effnet_conv_shape {
        struct_size: size_of::<effnet_conv_shape>(),
        ..Default::default()
    };
    // SAFETY: live plan, valid out-struct.
    assert!(checked("conv shape", unsafe {
        effnet_conv_plan_shape(plan, &mut sh)
    }));
    // SAFETY: the descriptor was accepted, so it is readable as one.
    let desc = unsafe { d.ptr::<effnet_conv_desc>().read() };
    let x_len = [desc.batch, desc.in_h, desc.in_w, desc.in_channels]
        .iter()
        .try_fold(1usize, |p, &v| p.checked_mul(v as usize));
    assert_eq!(Some(sh.x_len), x_len, "conv x_len");
    for pass in 0..3 {
        let mut bytes = 0;
        // SAFETY: live handles, valid out-pointer.
        let s = unsafe { effnet_conv_workspace_size(ctx, plan, pass, &mut bytes) };
        checked("conv workspace size", s);
    }
    let mut bytes = 0;
    // SAFETY: as above.
    checked("conv packed size", unsafe {
        effnet_conv_packed_weights_size(plan, &mut bytes)
    });
    // SAFETY: live, unused elsewhere.
    assert!(checked("conv destroy", unsafe {
        effnet_conv_plan_destroy(plan)
    }));
}

fn norm(ctx: *const effnet_context, bytes: &[u8], keep: bool) {
    let d = Raw::new(bytes, keep, size_of::<effnet_norm_desc>());
    let mut plan = std::ptr::null_mut();
    // SAFETY: as in `conv`.
    let s = unsafe { effnet_norm_plan_create(ctx, d.ptr(), &mut plan) };
    if !checked("norm plan create", s) {
        assert!(plan.is_null(), "out written on failure");
        return;
    }
    let mut sh = effnet_norm_shape {
        struct_size: size_of::<effnet_norm_shape>(),
        ..Default::default()
    };
    // SAFETY: live plan, valid out-struct.
    assert!(checked("norm shape", unsafe {
        effnet_norm_plan_shape(plan, &mut sh)
    }));
    assert_eq!(Some(sh.saved_len), sh.sets.checked_mul(3), "norm saved_len");
    for pass in 0..3 {
        let mut bytes = 0;
        // SAFETY: live handles, valid out-pointer.
        let s = unsafe { effnet_norm_workspace_size(ctx, plan, pass, &mut bytes) };
        checked("norm workspace size", s);
    }
    // SAFETY: live, unused elsewhere.
    assert!(checked("norm destroy", unsafe {
        effnet_norm_plan_destroy(plan)
    }));
}

fn proxy(ctx: *const effnet_context, bytes: &[u8], keep: bool, fused: bool) {
    // Fused: the norm descriptor's bytes, then the proxy's from byte 128 on; the
    // standalone workspace query takes its `x_len` from the first 8 bytes.
    let (nb, pb) = if fused {
        bytes.split_at(bytes.len().min(128))
    } else {
        (&[][..], bytes.get(8..).unwrap_or_default())
    };
    let nd = Raw::new(nb, keep, size_of::<effnet_norm_desc>());
    let pd = Raw::new(pb, keep, size_of::<effnet_proxy_norm_desc>());
    let mut plan = std::ptr::null_mut();
    let norm_ptr = if fused { nd.ptr() } else { std::ptr::null() };
    // SAFETY: as in `conv`; NULL selects the standalone activation.
    let s = unsafe { effnet_proxy_norm_plan_create(ctx, norm_ptr, pd.ptr(), &mut plan) };
    if !checked("proxy plan create", s) {
        assert!(plan.is_null(), "out written on failure");
        return;
    }
    let mut sh = effnet_proxy_norm_shape {
        struct_size: size_of::<effnet_proxy_norm_shape>(),
        ..Default::default()
    };
    // SAFETY: live plan, valid out-struct.
    assert!(checked("proxy shape", unsafe {
        effnet_proxy_norm_plan_shape(plan, &mut sh)
    }));
    let c = sh.channels;
    let at = |k: usize, base: usize| c.checked_mul(k).and_then(|v| v.checked_add(base));
    assert_eq!(Some(sh.params_len), at(4, 0), "params_len wraps");
    assert_eq!(Some(sh.saved_len), at(3, sh.proxy_offset), "saved_len");
    assert_eq!(
        Some(sh.scale_offset),
        at(2, sh.proxy_offset),
        "scale_offset"
    );
    let x_len = if fused { sh.x_len } else { word(bytes, 0) };
    for pass in 0..2 {
        let mut small = 0;
        // SAFETY: live handles, valid out-pointer.
        let s = unsafe { effnet_proxy_norm_workspace_size(ctx, plan, pass, c, &mut small) };
        if !fused {
            assert!(checked("proxy workspace size (1 row)", s));
        }
        let mut bytes = 0;
        // SAFETY: as above.
        let s = unsafe { effnet_proxy_norm_workspace_size(ctx, plan, pass, x_len, &mut bytes) };
        if checked("proxy workspace size", s) && !fused && x_len >= c {
            assert!(
                bytes >= small,
                "more rows, smaller workspace: {bytes} < {small}"
            );
        }
    }
    // SAFETY: live, unused elsewhere.
    assert!(checked("proxy destroy", unsafe {
        effnet_proxy_norm_plan_destroy(plan)
    }));
}

fn nhwc(ctx: *const effnet_context, bytes: &[u8], keep: bool) {
    let d = Raw::new(bytes, keep, size_of::<effnet_nhwc>());
    for pass in 0..2 {
        let mut out = 0;
        // SAFETY: readable descriptor, valid out-pointer.
        let s = unsafe { effnet_global_avg_pool_workspace_size(ctx, d.ptr(), pass, &mut out) };
        checked("pool workspace size", s);
    }
    let mut out = 0;
    // SAFETY: as above.
    let s = unsafe { effnet_gate_backward_workspace_size(ctx, d.ptr(), &mut out) };
    checked("gate workspace size", s);
}

fn loss(ctx: *const effnet_context, bytes: &[u8]) {
    let mut out = 0;
    // SAFETY: valid out-pointer.
    let s = unsafe {
        effnet_cross_entropy_workspace_size(ctx, word(bytes, 0), word(bytes, 8), &mut out)
    };
    checked("loss workspace size", s);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file kept in `ffi/fuzz/corpus/{target}` (the minimized corpus of the
    /// fuzzer runs) and `ffi/fuzz/regressions/{target}` (inputs that once crashed),
    /// through the target's body.
    fn replay(target: &str, body: fn(&[u8])) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            let mut paths: Vec<_> = entries.map(|e| e.expect("entry").path()).collect();
            paths.sort();
            for p in paths {
                let data = std::fs::read(&p).expect("read a corpus file");
                let r = std::panic::catch_unwind(|| body(&data));
                assert!(r.is_ok(), "{target}: {} fails", p.display());
                n += 1;
            }
        }
        assert!(n > 0, "no corpus for {target} under {}", root.display());
    }

    #[test]
    fn safetensors_corpus_replays() {
        replay("safetensors", super::safetensors);
    }

    #[test]
    fn npy_corpus_replays() {
        replay("npy", super::npy);
    }

    #[test]
    fn image_corpus_replays() {
        replay("image", super::image);
    }

    #[test]
    fn descriptors_corpus_replays() {
        replay("descriptors", super::descriptors);
    }
}
