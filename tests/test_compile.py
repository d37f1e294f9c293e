"""The fused compiled kernel of a polynomial ReLU and its fallback to eager evaluation.

Compilation is an explicit option (``compiled=``); only compiler errors fall back to eager, with a
warning naming the error; any other error (out of memory included) propagates.
"""

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import pann.conversion.modules as modules
from pann.approximation.catalog import relu_for_precision
from pann.conversion.modules import PolyReLU

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_compiler_state(monkeypatch):
    """No compiler failure recorded in this process before the test, and none left after it."""
    monkeypatch.setattr(modules, "_compile_failure", None)


def test_compiled_path_really_compiles_and_matches_eager(fresh_compiler_state):
    relu = PolyReLU(relu_for_precision(7), 4.0)
    x = torch.linspace(-4, 4, 4097)
    torch._dynamo.utils.counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback would warn: fail instead of passing on the eager path
        got = relu(x)
    assert modules._compile_failure is None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # dynamo captured the kernel
    eager = PolyReLU(relu_for_precision(7), 4.0, compiled=False)(x)
    torch.testing.assert_close(got, eager, rtol=0, atol=1e-5)


def test_uncompiled_path_never_calls_the_compiler(fresh_compiler_state, monkeypatch):
    def refuse():
        raise AssertionError("compiled=False must not compile")

    monkeypatch.setattr(modules, "_compiled_kernel", refuse)
    x = torch.linspace(-4, 4, 101)
    y = PolyReLU(relu_for_precision(7), 4.0, compiled=False)(x)
    assert (y - x.relu()).abs().max() <= 4.0 * 2.0**-7 * (1 + 1e-6)


def test_a_compiler_error_falls_back_to_eager_with_a_warning_naming_it(fresh_compiler_state, monkeypatch):
    calls = []

    def broken(*args):
        calls.append(1)
        raise torch._dynamo.exc.TorchDynamoException("no C++ compiler found")

    monkeypatch.setattr(modules, "_compiled_kernel", lambda: broken)
    x = torch.linspace(-4, 4, 101)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(TorchDynamoException: no C\+\+ compiler found\)"):
        y = PolyReLU(relu_for_precision(7), 4.0)(x)
    torch.testing.assert_close(y, PolyReLU(relu_for_precision(7), 4.0, compiled=False)(x))
    # The failure is remembered: later layers go straight to eager, without a second attempt or warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PolyReLU(relu_for_precision(8), 4.0)(x)
    assert len(calls) == 1


def test_other_errors_propagate_instead_of_falling_back(fresh_compiler_state, monkeypatch):
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(modules, "_compiled_kernel", lambda: out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        PolyReLU(relu_for_precision(7), 4.0)(torch.linspace(-4, 4, 101))
    assert modules._compile_failure is None  # the next call tries the compiler again


def test_recompile_limit_is_raised_only_around_our_calls(fresh_compiler_state, monkeypatch):
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    during = []

    def kernel(*args):
        during.append(getattr(config, name))
        return modules.relu_polynomial(*args)

    monkeypatch.setattr(modules, "_compiled_kernel", lambda: kernel)
    PolyReLU(relu_for_precision(6), 4.0)(torch.linspace(-4, 4, 33))
    assert during == [max(before, modules._RECOMPILE_LIMIT)]
    assert getattr(config, name) == before  # the rest of the process keeps dynamo's own limit


@pytest.mark.slow
def test_a_real_compiler_failure_falls_back_in_a_fresh_process(tmp_path):
    """No mocks: Inductor pointed at a C++ compiler that does not exist (with an empty kernel cache)."""
    script = textwrap.dedent("""
        import warnings, torch
        torch._inductor.config.cpp.cxx = ("/nonexistent/c++",)
        from pann.approximation.catalog import relu_for_precision
        from pann.conversion.modules import PolyReLU
        x = torch.linspace(-4, 4, 101)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = PolyReLU(relu_for_precision(7), 4.0)(x)
        eager = PolyReLU(relu_for_precision(7), 4.0, compiled=False)(x)
        assert torch.equal(y, eager), (y - eager).abs().max()
        print("WARNINGS:", [str(w.message) for w in caught if w.category is RuntimeWarning])
    """)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.compile failed (" in result.stdout and "fall back to eager" in result.stdout, result.stdout
