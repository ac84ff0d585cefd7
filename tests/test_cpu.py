"""Reading /proc/cpuinfo (llama_np.kernels.cpu): the first CPU's fields, and nothing where the file is absent."""
import platform

from llama_np.kernels.cpu import cpu_flags, cpu_model, widest_simd

CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R45\n"
           "flags\t\t: fpu sse2 avx2 avx512f\n\n"
           "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")


def test_the_first_cpu_is_read(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    assert cpu_flags(str(info)) == {"fpu", "sse2", "avx2", "avx512f"}
    assert cpu_model(str(info)) == "AMD EPYC 9R45"


def test_no_file_means_no_flags_and_the_platform_name(tmp_path):
    missing = str(tmp_path / "missing")
    assert cpu_flags(missing) == set()
    assert cpu_model(missing) == (platform.processor() or platform.machine())


def test_widest_simd():
    assert widest_simd({"avx2", "avx512f"}) == "AVX-512"
    assert widest_simd({"sse2", "avx2"}) == "AVX2"
    assert widest_simd({"sse2"}) == "no AVX2"
