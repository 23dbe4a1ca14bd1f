"""Shared test helpers for rlhfkit.ops: dtypes and tolerances against float64 references."""

import torch

# (dtype, atol, rtol) for comparing a fast op run in `dtype` with a float64 reference fed the
# same (already rounded) inputs.
DTYPES = [
    (torch.float64, 1e-10, 1e-10),
    (torch.float32, 1e-5, 1e-5),
]
DTYPES_BF16 = DTYPES + [(torch.bfloat16, 6e-2, 2e-2)]
DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16"}

SHAPES_2D = [(1, 1), (1, 7), (3, 5), (4, 13)]


def close(actual, expected, atol, rtol) -> None:
    actual = torch.as_tensor(actual).double()
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True)


def random_mask(shape, generator=None, p=0.7) -> torch.Tensor:
    """Bool mask with holes, empty rows and full rows mixed."""
    return torch.rand(shape, generator=generator) < p


def right_padded_mask(shape, generator=None) -> torch.Tensor:
    """Bool mask: each row a prefix of ones of random length 0..T."""
    B, T = shape
    lengths = torch.randint(0, T + 1, (B,), generator=generator)
    return torch.arange(T)[None, :] < lengths[:, None]
