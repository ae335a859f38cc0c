"""A model larger than one machine: llama.cpp's own RPC backend (`rpc_servers` in a model entry).

llama.cpp's `rpc-server`, run on other machines, serves their CPU or GPU as a ggml device over
TCP; registered here before the model loads, those devices take layers as any GPU would
(`n_gpu_layers`, `tensor_split`). Nothing of the split is ours: llama.cpp schedules the graph
across devices. What this module does is what llama.cpp's own `--rpc` option does
(common/arg.cpp `add_rpc_devices`), through ggml's C API, which llama-cpp-python does not wrap:

- find the RPC backend: compiled into this llama-cpp-python (`CMAKE_ARGS="-DGGML_RPC=ON"`), or a
  `libggml-rpc.so` module built from the same llama.cpp source, named by `STORYBENCH_GGML_RPC_LIB`
  (`make rpc` builds it with `rpc-server`; the tests use it so the package need not be rebuilt);
- check that each endpoint accepts a TCP connection first (llama.cpp aborts the process when it
  cannot reach one), then register its devices and report them (name, endpoint, memory).

Security: rpc-server has no authentication and no encryption, and a client can make it allocate
memory and run graphs: bind it to a private network only (docs/local_models.md, docs/scale.md).
"""

from __future__ import annotations

import ctypes
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

RPC_LIB_ENV = "STORYBENCH_GGML_RPC_LIB"
CONNECT_TIMEOUT_S = 5.0


class RPCError(Exception):
    """The RPC backend is missing, or an rpc-server cannot be reached."""


@dataclass(frozen=True)
class RemoteDevice:
    name: str  # llama.cpp's device name, e.g. "RPC0"
    endpoint: str  # host:port of its rpc-server
    description: str
    free_bytes: int
    total_bytes: int


def _ggml() -> ctypes.CDLL:
    """libggml as libllama loaded it: devices registered anywhere else are not the ones llama.cpp's
    model loader sees. A wheel cannot hold symbolic links, so llama-cpp-python ships
    `libggml.so` and `libggml.so.0` as two files; libllama links the second by its soname, which
    is what dlopen finds already loaded here (RTLD_NOLOAD: never a third copy)."""
    try:
        ggml = ctypes.CDLL("libggml.so.0", mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
    except OSError:  # a libllama that links libggml by another name: load what it ships beside it
        override = os.environ.get("LLAMA_CPP_LIB_PATH")
        folder = Path(override) if override else Path(llama_cpp.__file__).parent / "lib"
        ggml = ctypes.CDLL(str(folder / "libggml.so"), mode=ctypes.RTLD_GLOBAL)
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    for name, res, args in (
        ("ggml_backend_reg_by_name", vp, [cp]),
        ("ggml_backend_load", vp, [cp]),
        ("ggml_backend_reg_get_proc_address", vp, [vp, cp]),
        ("ggml_backend_register", None, [vp]),
        ("ggml_backend_reg_dev_count", ctypes.c_size_t, [vp]),
        ("ggml_backend_reg_dev_get", vp, [vp, ctypes.c_size_t]),
        ("ggml_backend_dev_name", cp, [vp]),
        ("ggml_backend_dev_description", cp, [vp]),
        (
            "ggml_backend_dev_memory",
            None,
            [vp, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
        ),
    ):
        fn = getattr(ggml, name)
        fn.restype, fn.argtypes = res, args
    return ggml


def _rpc_reg(ggml: ctypes.CDLL) -> int:
    reg = ggml.ggml_backend_reg_by_name(b"RPC")
    if reg:
        return int(reg)
    module = os.environ.get(RPC_LIB_ENV)
    if module:
        if not Path(module).is_file():
            raise RPCError(f"${RPC_LIB_ENV} names {module}, which does not exist (`make rpc` builds it)")
        reg = ggml.ggml_backend_load(module.encode())
        if reg:
            return int(reg)
        raise RPCError(f"{module} (${RPC_LIB_ENV}) is not a ggml backend module of this llama.cpp")
    raise RPCError(
        "this llama-cpp-python has no RPC backend: rebuild it with "
        'CMAKE_ARGS="-DGGML_RPC=ON" (pip install --no-cache-dir --force-reinstall llama-cpp-python), '
        f"or set ${RPC_LIB_ENV} to a libggml-rpc.so built from the same llama.cpp (`make rpc`)"
    )


def _reachable(endpoint: str) -> None:
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise RPCError(
            f"rpc-server {endpoint} cannot be reached ({exc}); start it on that machine "
            f"(rpc-server --host ADDRESS --port {port}) or fix rpc_servers"
        ) from None


def attach(endpoints: list[str]) -> list[RemoteDevice]:
    """Register the devices of these rpc-servers for the next model loads; their description.
    Registering an endpoint twice is harmless (llama.cpp keeps one registry per endpoint)."""
    if not endpoints:
        return []
    ggml = _ggml()
    reg = _rpc_reg(ggml)
    add_fn = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
    if not add_fn:
        raise RPCError("the RPC backend has no ggml_backend_rpc_add_server: not the pinned llama.cpp")
    add = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(add_fn)
    devices: list[RemoteDevice] = []
    for endpoint in endpoints:
        _reachable(endpoint)
        server_reg = add(endpoint.encode())
        if not server_reg:
            raise RPCError(f"rpc-server {endpoint} reports no devices")
        ggml.ggml_backend_register(server_reg)
        for i in range(ggml.ggml_backend_reg_dev_count(server_reg)):
            dev = ggml.ggml_backend_reg_dev_get(server_reg, i)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            devices.append(
                RemoteDevice(
                    name=(ggml.ggml_backend_dev_name(dev) or b"").decode(),
                    endpoint=endpoint,
                    description=(ggml.ggml_backend_dev_description(dev) or b"").decode(),
                    free_bytes=free.value,
                    total_bytes=total.value,
                )
            )
    return devices
