"""Pick the sparse engine the models are built on: ``torch`` (ours, default) or ``minkowski``.

``get_sparse_backend(name)`` returns a namespace with the same names for either engine, so the
MinkUNet code is written once (``ME.MinkowskiConvolution(...)``, ``ME.cat(...)``). The minkowski
backend is used only when asked for and importable: asking for it without MinkowskiEngine is an error,
never a silent switch to the torch engine.
"""
from types import SimpleNamespace

BACKENDS = ('torch', 'minkowski')


def _namespace(SparseTensor, Convolution, ConvolutionTranspose, BatchNorm, ReLU, cat, name):
    return SimpleNamespace(
        name=name, SparseTensor=SparseTensor, Convolution=Convolution,
        ConvolutionTranspose=ConvolutionTranspose, BatchNorm=BatchNorm, ReLU=ReLU, cat=cat,
        MinkowskiConvolution=Convolution, MinkowskiConvolutionTranspose=ConvolutionTranspose,
        MinkowskiBatchNorm=BatchNorm, MinkowskiReLU=ReLU)


def get_sparse_backend(name='torch'):
    name = 'torch' if name is None else str(name).lower()
    if name == 'torch':
        from models.sparse import modules, tensor
        return _namespace(tensor.SparseTensor, modules.Convolution, modules.ConvolutionTranspose,
                          modules.BatchNorm, modules.ReLU, modules.cat, 'torch')
    if name == 'minkowski':
        try:
            import MinkowskiEngine as ME
        except Exception as e:  # a broken build raises OSError / RuntimeError as often as ImportError
            raise ImportError(
                f'sparse backend "minkowski" was requested but MinkowskiEngine cannot be imported ({e}). '
                'Install it (https://github.com/NVIDIA/MinkowskiEngine, needs a matching CUDA/PyTorch '
                'build) or set `sparse_backend: torch` in the config to use the built-in engine.') from e
        return _namespace(ME.SparseTensor, ME.MinkowskiConvolution, ME.MinkowskiConvolutionTranspose,
                          ME.MinkowskiBatchNorm, ME.MinkowskiReLU, ME.cat, 'minkowski')
    raise ValueError(f'unknown sparse backend {name!r}; choose one of {BACKENDS}')
