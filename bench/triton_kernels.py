"""Static report of the sparse-conv Triton kernels: compiled for a GPU architecture without a GPU.

Triton compiles ahead of time for any target with the ptxas it ships, so on a CPU-only machine this
checks that every kernel variant the engine can launch compiles for sm_80 (A100) / sm_90 (H100), and reports
what decides its speed before it ever runs: registers per thread, spilled bytes (local memory), shared memory
and whether the matrix products became tensor-core instructions (wgmma on sm_90, mma on sm_80; an IEEE
float32 product is FMA code by design).

    python bench/triton_kernels.py                      # the fixed rule's configs for MinkUNet18A
    python bench/triton_kernels.py --candidates         # every autotuner candidate as well
    python bench/triton_kernels.py --check --max-spill 16   # exit 1 on a failed compile or a spill

It must run with TRITON_INTERPRET unset (an interpreted kernel cannot be compiled): the tests call it in a
subprocess.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get('TRITON_INTERPRET') == '1':
    sys.exit('bench/triton_kernels.py compiles kernels: run it with TRITON_INTERPRET unset')

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from models.disnet import DisNet  # noqa: E402
from models.sparse.modules import Convolution, ConvolutionTranspose  # noqa: E402
from models.sparse.triton import kernels, plan  # noqa: E402

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}  # bytes per block (opt-in max)
DTYPES = {'fp32': ('fp32', 'ieee'), 'tf32': ('fp32', 'native'), 'fp16': ('fp16', 'native'),
          'bf16': ('bf16', 'native')}


def layer_shapes(arch='MinkUNet18A'):
    """Distinct (kernel volume, C_in, C_out) of the network's convolutions with more than one offset."""
    model = DisNet(arch, 768)
    shapes = set()
    for m in model.modules():
        if isinstance(m, (Convolution, ConvolutionTranspose)) and m.kernel.dim() == 3:
            shapes.add(tuple(m.kernel.shape))
    return sorted(shapes)


def variants(shapes, candidates, candidate_c_in=96):
    """(kernel name, C_in, config) to compile: the fixed rule's choice for every layer shape in both
    directions (forward and feature gradient swap C_in and C_out), plus every candidate if asked (the implicit
    GEMM at ``candidate_c_in`` input channels, the width of the full-resolution layers)."""
    gemm, wgrad = set(), set()
    for _, c_in, c_out in shapes:
        gemm.update({(c_in, plan.gemm_config(c_in, c_out)), (c_out, plan.gemm_config(c_out, c_in))})
        wgrad.add((0, plan.weight_grad_config(c_in, c_out)))
    if candidates:
        gemm.update((candidate_c_in, c) for c in plan.GEMM_CANDIDATES)
        wgrad.update((0, c) for c in plan.WEIGHT_GRAD_CANDIDATES)
    return [('implicit_gemm',) + v for v in sorted(gemm)] + [('weight_grad',) + v for v in sorted(wgrad)]


def _signature(kernel_name, dtype):
    if kernel_name == 'implicit_gemm':
        ptrs = {'x_ptr': dtype, 'w_ptr': dtype, 'nb_ptr': 'i32', 'rows_ptr': 'i32', 'out_ptr': dtype}
        ints = ['num_out', 'c_out', 'num_offsets', 'stride_wk', 'stride_wi', 'stride_wo']
        blocks = ['C_IN', 'BLOCK_M', 'BLOCK_N', 'BLOCK_K']
    else:
        ptrs = {'x_ptr': dtype, 'g_ptr': dtype, 'in_idx_ptr': 'i32', 'out_idx_ptr': 'i32', 'bounds_ptr': 'i64',
                'partial_ptr': 'fp32'}
        ints = ['c_in', 'c_out', 'skip_k']
        blocks = ['NUM_SLICES', 'BLOCK_P', 'BLOCK_I', 'BLOCK_O']
    sig = {name: '*' + t for name, t in ptrs.items()}
    sig.update({name: 'i32' for name in ints})
    sig.update({name: 'constexpr' for name in blocks + ['DOT']})
    return sig, blocks


def compile_variant(kernel_name, c_in, config, dtype_name, arch):
    """Compile one variant for ``sm_<arch>`` (``c_in``: the implicit GEMM's C_IN constant); returns a dict of
    its resource usage."""
    dtype, dot = DTYPES[dtype_name]
    fn = kernels.implicit_gemm_kernel if kernel_name == 'implicit_gemm' else kernels.weight_grad_kernel
    sig, blocks = _signature(kernel_name, dtype)
    values = [c_in] + list(config[:3]) if kernel_name == 'implicit_gemm' else [8] + list(config[:3])
    constexprs = dict(zip(blocks, values), DOT=dot)
    t0 = time.perf_counter()
    compiled = triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=GPUTarget('cuda', arch, 32),
                              options={'num_warps': config[3], 'num_stages': config[4]})
    seconds = time.perf_counter() - t0
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(compiled.asm['cubin'])
        f.flush()
        usage = subprocess.run([_cuobjdump(), '--dump-resource-usage', f.name], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(re.findall(r'(REG|STACK|LOCAL):(\d+)', usage))
    ptx = compiled.asm['ptx']
    mma = 'wgmma' if 'wgmma.mma_async' in ptx else 'mma' if re.search(r'\bmma\.sync', ptx) else 'fma'
    return dict(regs=int(fields['REG']), local=int(fields['LOCAL']), stack=int(fields['STACK']),
                shared=int(compiled.metadata.shared), mma=mma, seconds=seconds)


def _cuobjdump():
    path = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')
    if not os.path.exists(path):
        sys.exit(f'no cuobjdump at {path}: this Triton wheel lacks its NVIDIA tools')
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='80,90', help='comma list of compute capabilities (80 = A100, 90 = H100)')
    p.add_argument('--dtype', default='fp32,tf32,fp16,bf16',
                   help='comma list: fp32 (IEEE), tf32, fp16, bf16 (inputs; accumulation is always fp32)')
    p.add_argument('--network', default='MinkUNet18A', help='whose layer shapes the fixed rule is applied to')
    p.add_argument('--candidates', action='store_true', help='also compile every autotuner candidate')
    p.add_argument('--check', action='store_true', help='exit 1 if a variant fails to compile, spills more than '
                                                        '--max-spill bytes or exceeds its shared memory')
    p.add_argument('--max-spill', type=int, default=0, help='bytes of stack / local memory per thread tolerated')
    args = p.parse_args()
    archs = [int(a) for a in args.arch.split(',')]
    dtypes = args.dtype.split(',')
    for d in dtypes:
        if d not in DTYPES:
            sys.exit(f'--dtype: unknown {d!r}, expected one of {sorted(DTYPES)}')
    shapes = layer_shapes(args.network)
    todo = variants(shapes, args.candidates)
    print(f'# bench/triton_kernels.py: triton {triton.__version__}, torch {torch.__version__}; {args.network} '
          f'layer shapes (K, C_in, C_out): {shapes}')
    print(f'{"kernel":>13} {"C_in":>4} {"config (blocks, warps, stages)":>30} {"arch":>4} {"dtype":>5} {"regs":>4} '
          f'{"spill_B":>7} {"shared_KiB":>10} {"mma":>5} {"compile_s":>9}')
    failures = []
    for arch in archs:
        for dtype in dtypes:
            for name, c_in, config in todo:
                c_in_text = str(c_in) if c_in else '-'
                label = f'{name} C_in {c_in_text} {config} sm_{arch} {dtype}'
                try:
                    r = compile_variant(name, c_in, config, dtype, arch)
                except Exception as err:  # report every failure, then fail once at the end
                    failures.append(f'{label}: {type(err).__name__}: {str(err).splitlines()[0][:200]}')
                    print(f'{name:>13} {c_in_text:>4} {str(config):>30} {arch:>4} {dtype:>5} compile FAILED',
                          flush=True)
                    continue
                spill = r['local'] + r['stack']
                print(f'{name:>13} {c_in_text:>4} {str(config):>30} {arch:>4} {dtype:>5} {r["regs"]:>4} {spill:>7} '
                      f'{r["shared"] / 1024:>10.1f} {r["mma"]:>5} {r["seconds"]:>9.1f}', flush=True)
                if spill > args.max_spill:
                    failures.append(f'{label}: uses {spill} bytes of stack / local memory per thread (spills)')
                if r['shared'] > SHARED_LIMIT.get(arch, 48 * 1024):
                    failures.append(f'{label}: needs {r["shared"]} bytes of shared memory')
    for f in failures:
        print('# problem:', f)
    if args.check and failures:
        sys.exit(1)


if __name__ == '__main__':
    main()
