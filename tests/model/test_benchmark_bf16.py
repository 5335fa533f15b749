"""benchmarks/model.py reports bf16 rows only on CPUs with bf16 units (AMX / AVX512-BF16)."""

import pytest
from prerequisites import require_module
from test_matches_roberta_modules import load_benchmark_module

require_module("transformers", "a dev requirement: benchmarks/model.py assembles the reference from it")

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme sse2 avx512f {extra}

processor\t: 1
flags\t\t: fpu
"""


@pytest.fixture(scope="module")
def bench():
    return load_benchmark_module()


@pytest.mark.parametrize(
    "extra,machine,expected",
    [
        ("amx_bf16 amx_tile", "x86_64", True),
        ("avx512_bf16", "x86_64", True),
        ("avx512_vnni", "x86_64", False),
        ("amx_bf16", "aarch64", False),
    ],
)
def test_bf16_units_from_cpuinfo_flags(bench, tmp_path, extra, machine, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    flags = bench.cpu_flags(str(cpuinfo))
    assert "avx512f" in flags and "fpu" in flags  # the first processor's line
    assert bench.has_bf16_units(flags, machine) is expected
    assert bench.cpu_model(str(cpuinfo)) == "Intel(R) Xeon(R) Processor"


def test_no_cpuinfo_means_no_bf16_units(bench, tmp_path):
    assert bench.cpu_flags(str(tmp_path / "missing")) == set()
    assert not bench.has_bf16_units(set(), "x86_64")


def test_hf_reference_takes_its_own_attention_dropout(bench, tiny_config):
    hf = bench.HFReference(tiny_config, attention_dropout=0.1)
    assert hf.text.config.attention_probs_dropout_prob == 0.1
    assert hf.audio.config.attention_probs_dropout_prob == 0.1
    same = bench.HFReference(tiny_config)
    assert same.text.config.attention_probs_dropout_prob == tiny_config.attention_dropout
