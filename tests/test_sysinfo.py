"""What ``npfcn info`` and the benchmark headers say the numbers ran on."""
import numpy as np

from npfcn import sysinfo
from npfcn.cli import main

GENERIC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw

processor\t: 1
model name\t: something else
"""
NAMED = """vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 106
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_a_generic_cpu_name_gets_family_model_and_core(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(GENERIC)
    cpu = sysinfo.cpu_info(str(path))
    assert (cpu["family"], cpu["model"], cpu["vectors"]) == (25, 17, "AVX-512")
    assert sysinfo.describe_cpu(cpu) == "AMD EPYC (family 25 model 17, Zen 4), AVX-512"


def test_a_model_name_with_a_number_is_left_alone(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(NAMED)
    assert sysinfo.describe_cpu(sysinfo.cpu_info(str(path))) == \
        "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz, AVX2"


def test_no_cpuinfo_still_names_something(tmp_path):
    cpu = sysinfo.cpu_info(str(tmp_path / "missing"))
    assert isinstance(sysinfo.describe_cpu(cpu), str)


def test_info_names_the_cpu_and_the_blas_kernel(capsys):
    details = sysinfo.info()
    assert details["CPU"] == sysinfo.describe_cpu()
    core = details["BLAS kernel"]
    if "openblas" in np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"].lower():
        assert core and core.isprintable() and " " not in core      # e.g. SkylakeX, Haswell, Zen
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert "CPU " in printed and "BLAS kernel" in printed and "BLAS threads" in printed
    from npfcn.kernels import backend, channel
    if backend.c_available():       # which convolution loops the figures ran on
        assert details["channel conv loop"].startswith("on" if channel.available() else "off")
