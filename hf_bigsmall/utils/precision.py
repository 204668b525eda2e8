"""Whether this machine computes in bfloat16 natively, which is when bf16 autocast makes training faster.

On a CPU without bf16 instructions, autocast emulates bf16 through float32 and trains slower than
float32 (about 15 against 44 GFLOP/s, measured on an AVX-512 Xeon without them); with AMX tiles a
bf16 matmul ran at 3.5 to 8 times the float32 rate of the same 2-core Xeon (BENCHMARKS.md, "Healing on up
to 1 M tokens"). So bf16 is a default only where the hardware has it.
"""

from __future__ import annotations

# CPU capabilities (names as `torch.cpu.get_capabilities()` gives them) that run bf16 matmuls natively, and
# how a user would call them; AMX first, the one measured here
_NATIVE_BF16_CPU = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


def native_bf16() -> str | None:
    """What runs bf16 natively on this machine, in words (`"CUDA GPU with bf16"`, `"CPU with AMX-BF16"`), or None.

    A CUDA device counts when torch says it supports bf16 natively (Ampere and newer, or ROCm), not by emulation
    (a T4 or V100 has no bf16 tensor cores); training then runs there, so
    the CPU is not asked. Without CUDA, the CPU counts when it has AMX-BF16 or AVX512-BF16 instructions, as
    torch's own CPU capability probe reports them (`torch.cpu.get_capabilities()`, torch 2.9+; older releases
    answer through `torch.cpu._is_amx_tile_supported` and `_is_avx512_bf16_supported`). Arm CPUs are not
    counted: no bf16 training was measured on one.

    Example:
    ```python
    >>> from hf_bigsmall.utils.precision import native_bf16
    >>> native_bf16()
    'CPU with AMX-BF16'
    ```
    """
    import torch

    if torch.cuda.is_available():
        try:  # by default torch also says True for a GPU that only emulates bf16 (T4, V100): not native
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # an older torch takes no argument and answers for native support alone
            native = torch.cuda.is_bf16_supported()
        return "CUDA GPU with bf16" if native else None
    probe = getattr(torch.cpu, "get_capabilities", None)
    if probe is not None:
        capabilities = probe()
        supported = {flag: bool(capabilities.get(flag, False)) for flag, _ in _NATIVE_BF16_CPU}
    else:
        supported = {"amx_bf16": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
                     "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())}
    for flag, name in _NATIVE_BF16_CPU:
        if supported[flag]:
            return f"CPU with {name}"
    return None
