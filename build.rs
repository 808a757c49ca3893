//! Compiles the IPU-model codelets (`codelets/*.cpp`, Poplar vertex form) for the host
//! against the shim in `codelets/shim/`, with the `cc` crate.

fn main() {
    for f in [
        "codelets/trampolines.cpp",
        "codelets/common.hpp",
        "codelets/conv.cpp",
        "codelets/norm.cpp",
        "codelets/elementwise.cpp",
        "codelets/shim/poplar/Vertex.hpp",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    cc::Build::new()
        .cpp(true)
        .file("codelets/trampolines.cpp")
        .include("codelets/shim")
        .include("codelets")
        .flag_if_supported("-std=c++14")
        .flag_if_supported("-fno-exceptions")
        .flag_if_supported("-ffp-contract=off")
        .opt_level(3)
        .warnings(true)
        .compile("effnet_codelets");
}
