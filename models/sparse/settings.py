"""The sparse convolution's settings: which implementation runs, and the Triton path's two knobs.

One validated, immutable value, read by the convolutions when they run. It is set from a config
(``pipeline.stage.sparse_settings(cfg)``: keys ``sparse_conv``, ``sparse_conv_row_order``, ``sparse_conv_autotune``)
or from code (``configure(conv='triton')``, ``using(...)`` for a block); ``current()`` reads it. Nothing
is read from the environment. See docs/sparse_engine.md.
"""
import contextlib
import dataclasses

CONVS = ('reference', 'triton', 'spconv')  # the implementations the package ships (dispatch.py imports them by name)
ROW_ORDERS = ('mask', 'memory')
CONFIG_KEYS = {'conv': 'sparse_conv', 'row_order': 'sparse_conv_row_order', 'autotune': 'sparse_conv_autotune'}


@dataclasses.dataclass(frozen=True)
class SparseConvSettings:
    """``conv``: the implementation (``reference``: gather, matmul, scatter per offset, CPU and CUDA;
    ``triton``: implicit-GEMM kernels, CUDA). ``row_order``: how the Triton path tiles output rows (``mask``:
    grouped by neighbour mask, ``memory``: memory order). ``autotune``: let Triton's autotuner pick the tile
    shapes (False: a fixed rule, bitwise reproducible)."""
    conv: str = 'reference'
    row_order: str = 'mask'
    autotune: bool = False

    def __post_init__(self):
        _check('conv', self.conv, CONVS)
        _check('row_order', self.row_order, ROW_ORDERS)
        _check('autotune', self.autotune, (False, True))

    def describe(self):
        return f'{self.conv} (row order {self.row_order}, autotune {"on" if self.autotune else "off"})'

    def __str__(self):
        return f'sparse_conv {self.describe()}'



def _check(field, value, allowed):
    # a bool is also 0 / 1: compare types too, so `autotune: 1` is refused as the config rule refuses it
    if not any(value == a and type(value) is type(a) for a in allowed):
        raise ValueError(f"{CONFIG_KEYS[field]} must be one of {', '.join(map(str, allowed))}, found {value!r}")


_current = SparseConvSettings()


def current():
    return _current


def configure(**changes):
    """Replace the named settings (``conv``, ``row_order``, ``autotune``); returns the new settings."""
    global _current
    _current = dataclasses.replace(_current, **changes)
    return _current


@contextlib.contextmanager
def using(**changes):
    """``configure(**changes)`` for the block, then the previous settings again."""
    global _current
    previous = _current
    try:
        yield configure(**changes)
    finally:
        _current = previous

