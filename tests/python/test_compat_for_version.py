"""compat.for_version routing and the shims' exported surface."""

from __future__ import annotations

import pytest

import natten_mlx.compat as compat


@pytest.mark.parametrize(
    "version,module",
    [
        ("0.10.0", "v014"), ("0.14.1", "v014"), ("0.14.6", "v014"),
        ("0.15.0", "v015"), ("0.15.1", "v015"),
        ("0.16.0", "v017"), ("0.17.0", "v017"), ("0.17.5", "v017"),
        ("0.18", "v020"), ("0.20.0", "v020"), ("0.21.6", "v020"), ("0.21.7.dev1", "v020"),
        ("1.0", "v020"),
    ],
)
def test_for_version_routing(version, module):
    assert compat.for_version(version).__name__ == f"natten_mlx.compat.{module}"


def test_for_version_rejects_garbage():
    from packaging.version import InvalidVersion

    with pytest.raises(InvalidVersion):
        compat.for_version("garbage")


def test_submodules_as_attributes():
    assert compat.v014.__name__ == "natten_mlx.compat.v014"
    assert compat.v020.__name__ == "natten_mlx.compat.v020"
    with pytest.raises(AttributeError):
        compat.v099  # noqa: B018


@pytest.mark.parametrize("name", ["v014", "v015", "v017", "v020"])
def test_all_names_exist(name):
    mod = compat.for_version({"v014": "0.14", "v015": "0.15", "v017": "0.17", "v020": "0.20"}[name])
    for sym in mod.__all__:
        assert hasattr(mod, sym), f"{name}.{sym}"


def test_upstream_names_per_version():
    v014, v015, v017 = compat.v014, compat.v015, compat.v017
    for n in ("natten1dqkrpb", "natten1dqk", "natten1dav", "natten2dqkrpb", "natten2dqk", "natten2dav",
              "NeighborhoodAttention1D", "NeighborhoodAttention2D", "add_natten_handle"):
        assert n in v014.__all__
    for n in ("na1d_qk_with_bias", "na3d_qk", "na3d_av", "natten3dqkrpb", "NeighborhoodAttention3D",
              "has_gemm", "enable_gemm_na"):
        assert n in v015.__all__
    for n in ("use_fused_na", "is_fused_na_enabled", "has_fused_na", "na3d", "NeighborhoodAttention3D"):
        assert n in v017.__all__
    v017.use_fused_na(True)
    assert v017.is_fused_na_enabled() and v017.is_fna_enabled()
    v017.use_fused_na(False)
    assert not v017.is_fused_na_enabled()
    assert v015.has_mlx() and not v015.has_cuda() and v015.has_half() and v015.has_bfloat()
    assert v014.add_natten_handle("counter") == "counter"
