//! The C ABI from C: compiles `ffi/tests/c/conv_test.c` (and `limits_test.c`, the
//! size limits, stale handles and environment) against `include/effnet.h`,
//! links it with the `libeffnet.so` and `libeffnet.a` cargo built next to this test,
//! runs both, and runs the shared build under valgrind's memcheck when `valgrind` is
//! on PATH (no invalid access, no leak). The C program checks the convolutions, the
//! norms and the fused Proxy Norm against its own double-precision reference and
//! exercises the misuse cases; its model results (logits before and after a training
//! step, the loss) are compared here with the Rust model's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use effnet_core::arch::ArchConfig;
use effnet_core::io::tensors;
use effnet_core::kernels::loss::Targets;
use effnet_core::model::optim::{Optimizer, OptimizerKind};
use effnet_core::model::{Network, Pass};

/// `target/<profile>` (or `target/<triple>/<profile>`): this test runs as
/// `…/<profile>/deps/c_abi-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .to_path_buf()
}

/// Builds `libeffnet.so` and `libeffnet.a` with the profile (and target) this test was
/// built with, and returns the directory they are in.
///
/// `cargo test` does not build a package's library for its integration tests when the
/// library is only a `cdylib`/`staticlib` (nothing links it), so this test runs
/// `cargo build -p effnet-ffi` itself (cargo no longer holds its build lock while the
/// tests run); with everything else fresh that compiles only the FFI crate, if at all.
fn lib_dir() -> PathBuf {
    let dir = profile_dir();
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(name) => name.to_owned(),
        None => panic!("unexpected test binary location {}", dir.display()),
    };
    let parent = dir.parent().expect("target dir");
    // `target/<profile>` normally; `target/<triple>/<profile>` with `--target`.
    let (target_dir, triple) = if parent.join("CACHEDIR.TAG").is_file() {
        (parent.to_path_buf(), None)
    } else {
        let root = parent.parent().expect("target dir").to_path_buf();
        (root, parent.file_name().map(|t| t.to_owned()))
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "effnet-ffi",
        "--lib",
        "--profile",
        &profile,
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Some(t) = triple {
        cmd.arg("--target").arg(t);
    }
    run(&mut cmd, "building libeffnet (cargo build -p effnet-ffi)");
    for lib in ["libeffnet.so", "libeffnet.a"] {
        assert!(
            dir.join(lib).is_file(),
            "{lib} not found in {} after cargo build",
            dir.display()
        );
    }
    dir
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_owned())
}

fn show(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run {cmd:?}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", show(&out));
    out
}

/// Compiles the C test program `ffi/tests/c/{source}`, linked with `lib` (a path to
/// the `.so` or `.a`).
fn build(lib_dir: &Path, lib: &str, source: &str, exe: &Path) {
    let ffi = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(cc());
    cmd.args([
        "-std=c11",
        "-O1",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
    ])
    .arg("-I")
    .arg(ffi.join("../include"))
    .arg(ffi.join("tests/c").join(source))
    .arg("-o")
    .arg(exe)
    .arg(lib_dir.join(lib));
    if lib.ends_with(".so") {
        cmd.arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    }
    // What a Rust staticlib needs from the system on Linux (rustc's
    // --print native-static-libs), harmless for the shared build.
    cmd.args([
        "-lpthread",
        "-ldl",
        "-lm",
        "-lrt",
        "-lutil",
        "-lgcc_s",
        "-lc",
    ]);
    run(
        &mut cmd,
        &format!("compiling the C test program against {lib}"),
    );
}

/// Checks the C program's report: its closing line and no failed check.
fn check_report(out: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("effnet C ABI test: ") && l.ends_with(" 0 failed")),
        "{what}: no clean closing line:\n{}",
        show(out)
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("FAIL")),
        "{what}: a check failed:\n{}",
        show(out)
    );
    check_model(&stdout, what);
    for must in [
        "ok   depthwise 3x3/2: forward with bias matches the reference",
        "ok   G16 3x3/2: backward-data matches the reference",
        "ok   pointwise 1x1: accumulated dw is twice the reference",
        "ok   forward: destroyed plan",
        "ok   descriptor: group size does not divide the input channels",
        "ok   LN + Proxy Norm (full scale): forward matches the reference",
        "ok   LN + Proxy Norm (delayed scale): backward dparams match the reference's derivative",
        "ok   GroupNorm + swish: backward dx matches the reference's derivative",
        "ok   proxy norm forward: destroyed plan",
        "ok   model train step",
        "ok   model load weights",
        "ok   depthwise 3x3/2 fused act 3 residual 1: = unfused bits",
        "ok   G16 3x3/2 fused act 2 residual 0: packed weights, caller workspace",
        "ok   stem 3x3/2 fused act 1 residual 1: = unfused bits",
        "ok   pointwise 1x1 fused act 3 residual 1: packed weights, caller workspace",
        "ok   fused: unknown activation",
        "ok   fused: plain forward on a residual plan",
    ] {
        assert!(
            stdout.lines().any(|l| l == must),
            "{what}: missing `{must}`:\n{}",
            show(out)
        );
    }
}

/// The floats of the C program's line `"{tag}: v v v ..."`.
fn floats(stdout: &str, tag: &str) -> Vec<f32> {
    let prefix = format!("{tag}:");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{tag}` line in the C program's output"));
    line[prefix.len()..]
        .split_whitespace()
        .map(|v| v.parse().expect("a float"))
        .collect()
}

/// The model the C program builds: `tiny_g16_lnpn`, 5 classes, seed 7, SGD (momentum
/// 0.9), weights then loaded from [`WEIGHTS_SEED`]'s network.
const WEIGHTS_SEED: u64 = 11;

fn tiny_config() -> ArchConfig {
    ArchConfig::from_name("tiny_g16_lnpn")
        .expect("tiny_g16_lnpn")
        .with_classes(5)
}

/// Writes the weights the C program loads (a timm state dict of a differently seeded
/// network, so loading changes the logits).
fn write_weights(path: &Path) {
    let net = Network::new(&tiny_config(), WEIGHTS_SEED).expect("network");
    tensors::save(path, &net.params().to_timm(false), None).expect("save weights");
}

/// Compares the C program's model lines with the Rust model on the same inputs.
fn check_model(stdout: &str, what: &str) {
    let (batch, res) = (2, 32);
    let x: Vec<f32> = (0..batch * res * res * 3)
        .map(|i| (((i * 7919) % 201) as f32 - 100.0) / 100.0)
        .collect();
    let cfg = tiny_config();
    let mut net = Network::new(&cfg, 7).expect("network");
    let w = Network::new(&cfg, WEIGHTS_SEED).expect("network");
    net.params_mut().values = w.params().values.clone();
    let mut opt = Optimizer::new(OptimizerKind::Sgd { momentum: 0.9 }, 0.0, net.params());
    let close = |got: &[f32], want: &[f32], tag: &str| {
        assert_eq!(got.len(), want.len(), "{what}: {tag}: length");
        for (g, w) in got.iter().zip(want) {
            // The C forward runs the prepared network (BatchNorm folded: rounds
            // differently); after the step it must see the new weights.
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{what}: {tag}: C {got:?} vs Rust {want:?}"
            );
        }
    };
    let before = net.predict(&x, batch, res).expect("predict");
    close(&floats(stdout, "model logits"), &before, "logits");
    let (loss, _) = net
        .loss_and_grad(
            &x,
            batch,
            res,
            Targets::Labels(&[1, 3]),
            0.0,
            &Pass::train(&cfg, 3),
        )
        .expect("loss_and_grad");
    opt.step(net.params_mut(), 0.05, |_| true).expect("step");
    close(&floats(stdout, "model loss"), &[loss], "loss");
    let after = net.predict(&x, batch, res).expect("predict");
    close(
        &floats(stdout, "model logits after step"),
        &after,
        "logits after the step",
    );
    assert_ne!(before, after, "the training step changed nothing");
}

#[test]
fn c_program_runs_against_the_shared_and_static_library() {
    let lib_dir = lib_dir();
    let work = lib_dir.join("c-abi-test");
    std::fs::create_dir_all(&work).expect("create the C test directory");
    let weights = work.join("tiny_g16_lnpn.safetensors");
    write_weights(&weights);

    let shared = work.join("conv_test_shared");
    build(&lib_dir, "libeffnet.so", "conv_test.c", &shared);
    let out = run(
        Command::new(&shared).env("EFFNET_TEST_WEIGHTS", &weights),
        "the C test program (shared library)",
    );
    check_report(&out, "shared library");
    check_quiet(&out, "shared library");

    let fixed = work.join("conv_test_static");
    build(&lib_dir, "libeffnet.a", "conv_test.c", &fixed);
    let out = run(
        Command::new(&fixed).env("EFFNET_TEST_WEIGHTS", &weights),
        "the C test program (static library)",
    );
    check_report(&out, "static library");
    check_quiet(&out, "static library");

    if !on_path("valgrind") {
        println!("note: valgrind is not on PATH; skipping the memcheck run");
        return;
    }
    let out = run(
        valgrind(&shared)
            .env("EFFNET_TEST_WEIGHTS", &weights)
            .env("EFFNET_SIMD", "avx2"),
        "the C test program under valgrind",
    );
    check_report(&out, "valgrind");
}

/// memcheck on `exe`: no invalid access, no leak (the crossbeam-epoch records in
/// `valgrind.supp` aside). Valgrind does not emulate AVX-512: callers cap the kernels
/// at AVX2 under it.
fn valgrind(exe: &Path) -> Command {
    let supp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/valgrind.supp");
    let mut cmd = Command::new("valgrind");
    cmd.arg(format!("--suppressions={}", supp.display()))
        .args([
            "--quiet",
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,possible",
            "--show-leak-kinds=definite,possible",
        ])
        .arg(exe);
    cmd
}

/// No effnet call may print: failures are reported through the status and
/// `effnet_last_error()` only (panics included).
fn check_quiet(out: &Output, what: &str) {
    assert!(
        out.stderr.is_empty(),
        "{what}: the C program wrote to stderr:\n{}",
        show(out)
    );
}

/// Checks the limits program's report: its closing line, no failed check, and the
/// cases that must be there.
fn check_limits_report(out: &Output, what: &str, must: &[&str]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("effnet C ABI limits test: ") && l.ends_with(" 0 failed")),
        "{what}: no clean closing line:\n{}",
        show(out)
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("FAIL")),
        "{what}: a check failed:\n{}",
        show(out)
    );
    for m in must {
        assert!(
            stdout.lines().any(|l| l == *m),
            "{what}: missing `{m}`:\n{}",
            show(out)
        );
    }
}

/// `ffi/tests/c/limits_test.c`: huge Proxy Norm `k`, channels, classes and wrapping
/// sizes, stale handles after their memory is reused, garbage handles and a bogus
/// `EFFNET_SIMD`: each call returns its documented status with a message, the process
/// survives, and nothing reaches stderr; with both libraries and under valgrind.
#[test]
fn c_limits_program_gets_statuses_not_aborts() {
    let lib_dir = lib_dir();
    let work = lib_dir.join("c-abi-test");
    std::fs::create_dir_all(&work).expect("create the C test directory");
    let must = [
        "ok   proxy plan: k = 2^40",
        "ok   proxy plan: k = 2^62",
        "ok   LayerNorm plan: channels = 2^45",
        "ok   GroupNorm plan: channels = groups = 2^45",
        "ok   fused Proxy Norm plan: channels = 2^45",
        "ok   standalone proxy plan: channels = 2^62",
        "ok   standalone proxy: exact sizes for 2^40 channels (no wrap)",
        "ok   model create: classes = 2^40",
        "ok   model create: classes = 2^62",
        "ok   stale: A is reported destroyed after B reused its memory",
        "ok   stale: 200 create/destroy rounds, no stale handle is live",
        "ok   abi version clears the last error",
    ];
    let bogus = [
        "ok   bogus EFFNET_SIMD: context create is rejected",
        "ok   bogus EFFNET_SIMD: value named",
    ];
    let mut exes = Vec::new();
    for lib in ["libeffnet.so", "libeffnet.a"] {
        let exe = work.join(format!("limits_test_{}", &lib[10..]));
        build(&lib_dir, lib, "limits_test.c", &exe);
        let out = run(&mut Command::new(&exe), "the C limits program");
        check_limits_report(&out, lib, &must);
        check_quiet(&out, lib);
        let out = run(
            Command::new(&exe)
                .arg("bogus-simd")
                .env("EFFNET_SIMD", "bogus"),
            "the C limits program with EFFNET_SIMD=bogus",
        );
        check_limits_report(&out, lib, &bogus);
        check_quiet(&out, lib);
        exes.push(exe);
    }
    if !on_path("valgrind") {
        println!("note: valgrind is not on PATH; skipping the memcheck run");
        return;
    }
    let out = run(
        valgrind(&exes[0]).env("EFFNET_SIMD", "avx2"),
        "the C limits program under valgrind",
    );
    check_limits_report(&out, "valgrind", &must);
    let out = run(
        valgrind(&exes[0])
            .arg("bogus-simd")
            .env("EFFNET_SIMD", "bogus"),
        "the C limits program under valgrind with EFFNET_SIMD=bogus",
    );
    check_limits_report(&out, "valgrind", &bogus);
}

#[test]
fn header_compiles_as_cplusplus() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    if !on_path(&cxx) && !Path::new(&cxx).is_file() {
        println!("note: no C++ compiler ({cxx}) on PATH; skipping");
        return;
    }
    let ffi = Path::new(env!("CARGO_MANIFEST_DIR"));
    run(
        Command::new(&cxx)
            .args([
                "-std=c++11",
                "-fsyntax-only",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-x",
                "c++",
            ])
            .arg(ffi.join("../include/effnet.h")),
        "compiling include/effnet.h as C++",
    );
}
