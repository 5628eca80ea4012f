"""Backend selection and the import without the compiled extension."""
import subprocess
import sys
from pathlib import Path

import pytest

from ugr_kernels import backends

ROOT = Path(__file__).resolve().parents[1]


def test_import_without_extension_warns_once_and_falls_back_to_torch():
    code = ("import sys, warnings; sys.modules['ugr_kernels._C'] = None\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import ugr_kernels, torch\n"
            "print(len(w), str(w[0].message))\n"
            "print(ugr_kernels.backends.resolve('auto', 'cpu'))\n"
            "e = torch.randn(2, 2, 50, requires_grad=True)\n"
            "ugr_kernels.weighted_sisdr(e, torch.randn(2, 2, 50)).loss.backward()\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0].startswith("1 ") and "pip install --no-build-isolation" in out[0]
    assert out[1] == "torch" and out[2] == "ok"


def test_auto_prefers_cpp_on_cpu_when_built():
    want = "cpp" if backends.is_available("cpp", "cpu") else "torch"
    assert backends.resolve("auto", "cpu") == want


def test_cpu_never_resolves_to_gpu_backends():
    assert not backends.is_available("cuda", "cpu")
    with pytest.raises(ValueError, match="not available"):
        backends.resolve("cuda", "cpu")
