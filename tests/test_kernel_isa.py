"""The instruction set the C++ kernels are built for (``$CONVMLP_KERNEL_ISA``) and the one oneDNN
reports (``src.platform.cpu.effective_onednn_isa``): what ``benchmarks/bench.py --isa avx2`` relies on
to measure an AVX2-only CPU on an AVX-512 machine."""
import platform

import pytest

from model.cpu_kernels import build

X86 = platform.machine().lower() in ("x86_64", "amd64")


def test_default_is_the_machines_own_target(monkeypatch):
    monkeypatch.delenv(build.KERNEL_ISA_ENV, raising=False)
    assert build.kernel_isa() == "native"
    if X86:
        assert build._arch_flags() == ["-march=native"]


@pytest.mark.skipif(not X86, reason="the named targets are x86-64 micro-architecture levels")
@pytest.mark.parametrize("value,flags", [("avx2", ["-march=x86-64-v3"]), ("AVX512", ["-march=x86-64-v4"]),
                                         (" native ", ["-march=native"])])
def test_named_targets_give_their_flags_and_their_own_cache_folder(monkeypatch, value, flags):
    monkeypatch.setenv(build.KERNEL_ISA_ENV, value)
    assert build._arch_flags() == flags
    keys = {build._cache_key("g++ 12", build._arch_flags(), None)}
    for other in ("native", "avx2", "avx512"):
        monkeypatch.setenv(build.KERNEL_ISA_ENV, other)
        keys.add(build._cache_key("g++ 12", build._arch_flags(), None))
    assert len(keys) == 3          # each target builds into a folder of its own


def test_an_unknown_target_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(build.KERNEL_ISA_ENV, "sse2")
    with pytest.raises(RuntimeError, match=r"CONVMLP_KERNEL_ISA='sse2' is not one of native, avx2, avx512"):
        build.kernel_isa()


@pytest.mark.skipif(not X86, reason="oneDNN's ISA names are x86 ones")
def test_onednn_reports_its_instruction_set_by_name():
    from src.platform.cpu import _DNNL_ISA_CODES, effective_onednn_isa
    isa = effective_onednn_isa()
    assert isa in _DNNL_ISA_CODES or isa.startswith("unknown ("), isa
