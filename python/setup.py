"""The build step of ``pip install ./python``: compiles effnet's C library with cargo
(``cargo build --release -p effnet-ffi`` in the repository that holds this folder)
and ships it inside the package, where ``effnet._lib`` loads it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LIB = {"darwin": "libeffnet.dylib", "win32": "effnet.dll"}.get(sys.platform,
                                                              "libeffnet.so")


class BuildWithCargo(build_py):
    """``build_py`` plus the cargo build of the C ABI crate."""

    def run(self):
        super().run()
        if not (ROOT / "ffi" / "Cargo.toml").exists():
            raise RuntimeError(f"{ROOT} is not the effnet repository (no ffi/Cargo.toml):"
                               " install from a clone with `pip install ./python`")
        cargo = os.environ.get("CARGO", "cargo")
        cmd = [cargo, "build", "--release", "-p", "effnet-ffi"]
        print("effnet: running", " ".join(cmd), "in", ROOT, flush=True)
        try:
            subprocess.check_call(cmd, cwd=ROOT)
        except FileNotFoundError:
            raise RuntimeError("cargo was not found: install Rust (rustup) or set "
                               "CARGO to the cargo binary") from None
        target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
        if not target.is_absolute():
            target = ROOT / target
        built = target / "release" / LIB
        dest = Path(self.build_lib) / "effnet" / "_native"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, dest / LIB)


class NativeDistribution(Distribution):
    """Marks the wheel as platform-specific (it carries a shared library)."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithCargo}, distclass=NativeDistribution)
