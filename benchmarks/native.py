"""Build or locate llama.cpp's native `llama-server`, `llama-bench` and `llama-quantize`: the reference.

The reference must be built from exactly the llama.cpp source that our pinned llama-cpp-python vendors, so
it is taken from the llama-cpp-python sdist (`vendor/llama.cpp`), never from a llama.cpp checkout.
Idempotent: a finished build is reused; `python -m benchmarks.native` prints the tool paths.

Lookup order for the tools: `$STORYBENCH_NATIVE_BIN` (a folder holding both, e.g. the CUDA bundle's `bin/`),
then `llama-server` on PATH when it sits beside a `llama-bench`, then `.bench/llama.cpp-build/bin` (built on
demand).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
SRC_DIR = BENCH_DIR / "llama.cpp-src"
BUILD_DIR = BENCH_DIR / "llama.cpp-build"
TARGETS = ("llama-server", "llama-bench", "llama-quantize")
# Release, CPU only, no tests/examples; no web UI download and no HTTPS (these machines are offline).
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_CUDA=OFF",
    # The sdist carries no git history: name the vendored commit (ggml-org/llama.cpp@0c1e57098 for
    # llama-cpp-python 0.3.36, as ../shared/device/README.md records) so `--version` reports it.
    "-DLLAMA_BUILD_COMMIT=0c1e57098",
)


@dataclass(frozen=True)
class NativeTools:
    server: Path
    bench: Path
    source: str  # where the tools came from, for the report

    @property
    def quantize(self) -> Path:
        return self.server.with_name("llama-quantize")

    @property
    def lib_dir(self) -> Path | None:
        """The folder of the libllama these tools use (beside them, or ../lib in the CUDA bundle)."""
        for d in (self.server.parent, self.server.parent.parent / "lib"):
            if (d / "libllama.so").exists():
                return d
        return None

    def version(self) -> str:
        """`llama-server --version` first line(s), e.g. 'version: 1 (0c1e570)'."""
        try:
            out = subprocess.run([str(self.server), "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        text = (out.stdout + out.stderr).strip().splitlines()
        lines = [ln for ln in text if ln.startswith("version") or "built with" in ln]
        return "; ".join(lines) or "unknown"


def llama_cpp_python_version() -> str:
    """From the installed distribution, else from the package source (the GPU bundle ships
    llama_cpp without metadata); never imports llama_cpp (that would load libllama)."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        for line in Path(spec.origin).read_text(encoding="utf-8").splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def _sdist_candidates(version: str) -> list[Path]:
    name = f"llama_cpp_python-{version}.tar.gz"
    return [BENCH_DIR / name, Path("/tmp/lcp") / name]


def _fetch_sdist(version: str) -> Path:
    for cand in _sdist_candidates(version):
        if cand.is_file():
            return cand
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"llama-cpp-python=={version}",
        "-d",
        str(BENCH_DIR),
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return _sdist_candidates(version)[0]


def ensure_source(version: str | None = None) -> Path:
    """Unpack `vendor/llama.cpp` of the llama-cpp-python sdist into `.bench/llama.cpp-src`."""
    if (SRC_DIR / "CMakeLists.txt").is_file():
        return SRC_DIR
    version = version or llama_cpp_python_version()
    sdist = _fetch_sdist(version)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    tmp = BENCH_DIR / "src-unpack"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(tmp, members=members, filter="data")
    (tmp / prefix).rename(SRC_DIR)
    shutil.rmtree(tmp, ignore_errors=True)
    return SRC_DIR


# /proc/cpuinfo flag(s) -> ggml's x86 feature option, for builds that cannot use -march=native.
_X86_FEATURES = (
    (("sse4_2",), "GGML_SSE42"), (("f16c",), "GGML_F16C"), (("fma",), "GGML_FMA"), (("bmi2",), "GGML_BMI2"),
    (("avx",), "GGML_AVX"), (("avx2",), "GGML_AVX2"), (("avx_vnni",), "GGML_AVX_VNNI"),
    (("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"), "GGML_AVX512"),
    (("avx512vbmi",), "GGML_AVX512_VBMI"), (("avx512_vnni",), "GGML_AVX512_VNNI"),
    (("avx512_bf16",), "GGML_AVX512_BF16"),
)  # fmt: skip


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def arch_flags() -> list[str]:
    """-march=native, except where the CPU advertises AMX: these VMs (Firecracker) report amx_tile but
    fault on tile instructions (SIGILL in ggml's AMX matmul for Q4_0/Q4_1/Q8_0, seen 2026-11-28), so
    there every other feature this CPU reports is named explicitly and AMX is left out."""
    flags = cpu_flags()
    if "amx_tile" not in flags:
        return []
    opts = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    for needed, option in _X86_FEATURES:
        opts.append(f"-D{option}={'ON' if all(f in flags for f in needed) else 'OFF'}")
    return opts


def build_commands(jobs: int | None = None) -> list[list[str]]:
    jobs = jobs or os.cpu_count() or 2
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(SRC_DIR), "-B", str(BUILD_DIR), *gen, *CMAKE_FLAGS, *arch_flags()]
    build = ["cmake", "--build", str(BUILD_DIR), "-j", str(jobs), "--target", *TARGETS]
    return [configure, build]


def _built() -> NativeTools | None:
    server, bench = BUILD_DIR / "bin" / "llama-server", BUILD_DIR / "bin" / "llama-bench"
    if all((BUILD_DIR / "bin" / t).is_file() for t in TARGETS):
        return NativeTools(server, bench, f"built from llama-cpp-python {llama_cpp_python_version()} sdist")
    return None


def locate() -> NativeTools | None:
    """The native tools if they are already available; never builds."""
    env = os.environ.get("STORYBENCH_NATIVE_BIN")
    if env:
        server, bench = Path(env) / "llama-server", Path(env) / "llama-bench"
        if server.is_file() and bench.is_file():
            return NativeTools(server, bench, f"$STORYBENCH_NATIVE_BIN={env}")
    built = _built()
    if built:
        return built
    on_path = shutil.which("llama-server")
    if on_path:
        bench = Path(on_path).with_name("llama-bench")
        if bench.is_file():
            return NativeTools(Path(on_path), bench, "PATH")
    return None


def ensure(jobs: int | None = None, log: Path | None = None) -> NativeTools:
    """Locate the native tools, building them from the vendored source if needed (several minutes)."""
    found = locate()
    if found:
        return found
    ensure_source()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    out = open(log, "a") if log else None  # noqa: SIM115 - closed below
    try:
        for cmd in build_commands(jobs):
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT if out else None)
    finally:
        if out:
            out.close()
    built = _built()
    if not built:
        raise RuntimeError(f"build finished but {BUILD_DIR}/bin lacks {TARGETS}")
    return built


# llama.cpp's RPC backend from the same source (`make rpc`): `ggml-rpc-server` for the machines that
# lend their devices, and `libggml-rpc.so`, a backend module our server loads into the
# llama-cpp-python it runs (STORYBENCH_GGML_RPC_LIB; server/rpc.py), so the package itself need not
# be rebuilt with -DGGML_RPC=ON. Backends as modules (GGML_BACKEND_DL) make that module loadable.
RPC_BUILD_DIR = BENCH_DIR / "llama.cpp-rpc"
RPC_TARGETS = ("ggml-rpc-server", "ggml-rpc", "ggml-cpu")


@dataclass(frozen=True)
class RPCTools:
    server: Path  # ggml-rpc-server: `--host ADDRESS --port PORT`; no authentication
    module: Path  # libggml-rpc.so, for STORYBENCH_GGML_RPC_LIB


def _rpc_built() -> RPCTools | None:
    tools = RPCTools(RPC_BUILD_DIR / "bin" / "ggml-rpc-server", RPC_BUILD_DIR / "bin" / "libggml-rpc.so")
    return tools if tools.server.is_file() and tools.module.is_file() else None


def ensure_rpc(jobs: int | None = None, log: Path | None = None) -> RPCTools:
    """The RPC server and backend module, built from the vendored source if needed (minutes)."""
    built = _rpc_built()
    if built:
        return built
    ensure_source()
    flags = [f for f in CMAKE_FLAGS if not f.startswith("-DGGML_CUDA")]
    flags += ["-DGGML_RPC=ON", "-DGGML_BACKEND_DL=ON", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_BUILD_SERVER=OFF"]
    # Backends as modules cannot use -march=native; name this CPU's features (AMX left out).
    features = cpu_flags()
    flags += ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    flags += [
        f"-D{option}={'ON' if all(f in features for f in needed) else 'OFF'}"
        for needed, option in _X86_FEATURES
    ]
    here = str(Path(sys.executable).parent)
    gen = (
        ["-G", "Ninja"]
        if shutil.which("ninja", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")
        else []
    )
    commands = [
        ["cmake", "-S", str(SRC_DIR), "-B", str(RPC_BUILD_DIR), *gen, *flags],
        [
            "cmake",
            "--build",
            str(RPC_BUILD_DIR),
            "-j",
            str(jobs or os.cpu_count() or 2),
            "--target",
            *RPC_TARGETS,
        ],
    ]
    # cmake and ninja from the test extras live beside this interpreter, maybe not on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = open(log, "a") if log else None  # noqa: SIM115 - closed below
    try:
        for cmd in commands:
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT if out else None, env=env)
    finally:
        if out:
            out.close()
    built = _rpc_built()
    if not built:
        raise RuntimeError(f"build finished but {RPC_BUILD_DIR}/bin lacks {RPC_TARGETS}")
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", "-j", type=int, default=None)
    ap.add_argument("--locate", action="store_true", help="only report; never build")
    ap.add_argument("--log", type=Path, default=None, help="send the compiler output here")
    ap.add_argument("--rpc", action="store_true", help="the RPC server and backend module instead (make rpc)")
    args = ap.parse_args(argv)
    if args.rpc:
        rpc = _rpc_built() if args.locate else ensure_rpc(args.jobs, args.log)
        if not rpc:
            print("the RPC tools are not built (run without --locate, or make rpc)", file=sys.stderr)
            return 1
        print(f"rpc-server: {rpc.server}   (on a private network only: it has no authentication)")
        print(f"export STORYBENCH_GGML_RPC_LIB={rpc.module}")
        return 0
    tools = locate() if args.locate else ensure(args.jobs, args.log)
    if not tools:
        print("native llama.cpp tools not found (run without --locate to build them)", file=sys.stderr)
        return 1
    print(f"llama-server: {tools.server}\nllama-bench:  {tools.bench}\nsource: {tools.source}")
    print(tools.version())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
