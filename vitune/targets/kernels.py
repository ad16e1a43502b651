"""Compiled kernels reused from build to build in this process (CPU targets run here).

A study builds hundreds of candidates whose kernels are mostly the same: the same shapes and
the same tuned schedules, block after block and trial after trial. ``relax.build`` generates
LLVM code for every kernel of every build and the CPU's JIT turns it into machine code again
when the build is first run: on the default model about 4.5 s of code generation and 2.5 s of
JIT per trial, most of a trial's build.

:class:`KernelLibrary` compiles each distinct kernel once. A build's kernels are named by their
content (``vk_<structural hash>``, confirmed by structural equality, so a hash collision builds
anew rather than reusing the wrong code); the model's entry function calls them by name through
the module it imports them from, and only kernels the library has not seen are generated, together,
in one LLVM module. The machine code of a reused kernel is the same code: the one difference
from :func:`relax.build`'s single library is how the VM's entry function reaches a kernel (a
packed-function lookup made once per call site, then an indirect call, instead of a direct call
into the same library). ``bench/kernel_reuse.py`` times both builds of the same candidates side by
side.

Such an executable runs only in this process (the kernels live in other in-memory modules), so
it is not what ships: :meth:`KernelBuild.shipped` links the same post-pipeline module the way
:func:`relax.build` does (one library, direct calls), and ``vitune.targets.compile.export_library``
does that on its own for a build made here. The library is per process and keyed by the
kernel's TIR and the target; TVM's version cannot change inside a process.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

PREFIX = "vk_"


def reusable(profile) -> bool:
    """Whether builds for ``profile`` may reuse kernels: a CPU (``llvm``) target with no device
    code, run in this process (a remote runner needs a library it can upload)."""
    return profile.runner == "local" and profile.tvm_target.get("kind") == "llvm" and profile.device_kind == "cpu"


@dataclass
class KernelBuild:
    """What :meth:`KernelLibrary.build` made: the executable (runs in this process) and what
    links it as :func:`relax.build` would, for a library that ships."""

    executable: Any  # tvm.relax.VMExecutable whose kernels are imported modules
    lowered: Any  # the module after Relax's default pipeline, kernels under their own names
    target: Any
    reused: int  # kernels taken from the library
    compiled: int  # kernels compiled for this build

    def shipped(self):
        """The same module linked into one library (what ``relax.build`` returns)."""
        from tvm import relax

        return relax.build(self.lowered, target=self.target, relax_pipeline=None, exec_mode="compiled")  # the pipeline already ran


class KernelLibrary:
    """Kernels compiled in this process, by target and content; least recently used dropped past
    ``capacity`` (a dropped kernel's module lives on in the executables that import it)."""

    def __init__(self, capacity: int = 4000):
        self.capacity = capacity
        self._kernels: OrderedDict[tuple[str, str], tuple[Any, Any]] = OrderedDict()  # (target, name) -> (PrimFunc, runtime module)
        self.reused = 0
        self.compiled = 0

    def __len__(self) -> int:
        return len(self._kernels)

    def build(self, mod, target, exec_mode: str = "compiled") -> KernelBuild | None:
        """``mod`` (a Relax module as :func:`relax.build` takes it) built with its kernels from
        the library; None where it can't be (external modules or constants the pipeline
        attached, a kernel referenced other than by a call): build it with ``relax.build``.
        ``exec_mode`` as :func:`relax.build`'s: ``"compiled"`` generates the VM's entry
        functions as code, ``"bytecode"`` has the VM interpret them (no code generated for them:
        what a function run once wants, such as a build's weight-layout transform)."""
        import tvm
        from tvm import relax, tirx
        from tvm.relax import vm_build

        with target:
            lowered = relax.get_pipeline("default")(mod)
        attrs = dict(lowered.attrs) if lowered.attrs else {}
        if attrs.get("external_mods") or attrs.get("const_name_to_constant"):
            return None
        names: dict[Any, str] = {}
        funcs: dict[str, Any] = {}
        for gv, func in lowered.functions.items():
            if isinstance(func, tirx.PrimFunc):
                name = _content_name(func)
                if name in funcs and not _same(funcs[name], func):
                    return None  # a hash collision inside one build: build it plainly
                names[gv] = name
                funcs.setdefault(name, func)
        by_name = _calls_by_name(lowered, names)
        entry = {gv: by_name.visit_expr(func) for gv, func in lowered.functions.items() if isinstance(func, relax.Function)}
        called = tvm.IRModule(entry, attrs=lowered.attrs, global_infos=lowered.global_infos)
        if _references_kernels(called, names):
            return None
        modules, missing = [], {}
        reused = 0
        where = str(target)  # a kernel compiled for one target is never another's (a study may time several CPUs' builds)
        for name, func in funcs.items():
            hit = self._kernels.get((where, name))
            if hit is not None and _same(hit[0], func):
                self._kernels.move_to_end((where, name))
                modules.append(hit[1])
                reused += 1
            else:
                missing[name] = func
        if missing:
            lib = tvm.tirx.build(tvm.IRModule({tvm.ir.GlobalVar(n): f.with_attr("global_symbol", n) for n, f in missing.items()}), target=target)
            for name, func in missing.items():
                self._kernels[(where, name)] = (func, lib)
            modules.append(lib)
            while len(self._kernels) > self.capacity:
                self._kernels.popitem(last=False)
        builder = relax.ExecBuilder()
        left = vm_build._vmcodegen(builder, called, exec_mode)
        if exec_mode == "compiled":
            main = tvm.tirx.build(vm_build._filter_tir(left), target=target)
            for module in _distinct(modules):
                main.import_module(module)
            linked = vm_build._ffi_api.VMLink(builder, target, main, [], {})
        else:
            # bytecode: the VM finds each kernel by name in the modules imported into an empty
            # host library (with none, VMLink makes a C source module, and running the executable
            # compiles and links it with the system compiler: a second per build)
            host = tvm.tirx.build(tvm.IRModule({}), target=target)
            linked = vm_build._ffi_api.VMLink(builder, target, host, _distinct(modules), {})
        executable = vm_build.VMExecutable(linked)
        self.reused += reused
        self.compiled += len(missing)
        return KernelBuild(executable, lowered, target, reused, len(missing))


def _content_name(func) -> str:
    import tvm_ffi

    return f"{PREFIX}{tvm_ffi.structural_hash(func.without_attr('global_symbol')) & 0xFFFFFFFFFFFFFFFF:016x}"


def _same(a, b) -> bool:
    import tvm_ffi

    return bool(tvm_ffi.structural_equal(a.without_attr("global_symbol"), b.without_attr("global_symbol")))


def _distinct(modules: list) -> list:
    seen, out = set(), []
    for m in modules:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def _calls_by_name(mod, names: dict):
    """A Relax mutator turning calls of the kernels in ``names`` (GlobalVar → name) into calls
    of the external function of that name."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class CallsByName(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.GlobalVar) and call.op in names:
                return relax.Call(relax.ExternFunc(names[call.op]), call.args, call.attrs, call.ty_args)
            return call

    return CallsByName(mod)


def _references_kernels(mod, names: dict) -> bool:
    """Whether a Relax function of ``mod`` still refers to a kernel of ``names`` (other than
    by a call, which :func:`_calls_by_name` rewrote)."""
    import tvm
    from tvm import relax

    found = []

    def visit(expr) -> None:
        if isinstance(expr, tvm.ir.GlobalVar) and expr in names:
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


LIBRARY = KernelLibrary()  # this process's (compile_model(..., reuse_kernels=True))
