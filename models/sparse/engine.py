"""Pick the sparse engine the models are built on: ``builtin`` (this package, default) or ``minkowski``.

``get_engine(name)`` returns a namespace with the same names for either engine, so the MinkUNet code is
written once (``ME.MinkowskiConvolution(...)``, ``ME.cat(...)``). The minkowski engine is used only when
asked for and importable: asking for it without MinkowskiEngine is an error, never a silent switch to the
built-in engine. (Which implementation runs the built-in engine's convolutions is another setting:
``settings.py``.)
"""
from types import SimpleNamespace

ENGINES = ('builtin', 'minkowski')


def _namespace(SparseTensor, Convolution, ConvolutionTranspose, BatchNorm, ReLU, cat, name):
    return SimpleNamespace(
        name=name, SparseTensor=SparseTensor, Convolution=Convolution,
        ConvolutionTranspose=ConvolutionTranspose, BatchNorm=BatchNorm, ReLU=ReLU, cat=cat,
        MinkowskiConvolution=Convolution, MinkowskiConvolutionTranspose=ConvolutionTranspose,
        MinkowskiBatchNorm=BatchNorm, MinkowskiReLU=ReLU)


def get_engine(name='builtin'):
    name = 'builtin' if name is None else str(name).lower()
    if name == 'builtin':
        from models.sparse import modules, tensor
        return _namespace(tensor.SparseTensor, modules.Convolution, modules.ConvolutionTranspose,
                          modules.BatchNorm, modules.ReLU, modules.cat, 'builtin')
    if name == 'minkowski':
        try:
            import MinkowskiEngine as ME
        except Exception as e:  # a broken build raises OSError / RuntimeError as often as ImportError
            raise ImportError(
                f'sparse engine "minkowski" was requested but MinkowskiEngine cannot be imported ({e}). '
                'Install it (https://github.com/NVIDIA/MinkowskiEngine, needs a matching CUDA/PyTorch '
                'build) or set `sparse_engine: builtin` in the config to use the built-in engine.') from e
        return _namespace(ME.SparseTensor, ME.MinkowskiConvolution, ME.MinkowskiConvolutionTranspose,
                          ME.MinkowskiBatchNorm, ME.MinkowskiReLU, ME.cat, 'minkowski')
    raise ValueError(f'unknown sparse engine {name!r}; choose one of {ENGINES}')
