"""Engine configuration: nested sections, dotted keys and the first engine's flat names; type checks naming the
key; files and overrides in one loader; state files of the first engine version."""
import json

import pytest

from ixgs_ros.core.config import ConfigError, flatten, from_mapping, parse_overrides, read_file
from ixgs_ros.engine import EngineConfig, EngineError, load_engine_config
from ixgs_ros.engine.config import LEGACY_KEYS, REMOVED_KEYS


def test_nested_dotted_and_legacy_keys_give_the_same_config():
    nested = EngineConfig.from_dict({"init": {"passes": 12, "tv_weight": 0.02}, "optimiser": {"lr_density": 5e-3}})
    dotted = EngineConfig.from_dict({"init.passes": 12, "init.tv_weight": 0.02, "optimiser.lr_density": 5e-3})
    legacy = EngineConfig.from_dict({"init_sart_iterations": 12, "init_tv_weight": 0.02, "lr_density": 5e-3},
                                    warn_legacy=False)
    assert nested == dotted == legacy
    assert nested.init.passes == 12 and nested.exterior.passes == 24  # the rest keeps its defaults


def test_every_legacy_key_maps_to_a_field_and_densify_to_a_strategy():
    fields = set(flatten(EngineConfig().to_dict()))
    assert set(LEGACY_KEYS.values()) <= fields
    assert EngineConfig.from_dict({"densify": True}, warn_legacy=False).densification.strategy == "split_clone"
    assert EngineConfig.from_dict({"densify": False}, warn_legacy=False).densification.strategy == "none"


def test_legacy_keys_are_read_with_a_warning_naming_the_new_path(caplog):
    with caplog.at_level("WARNING"):
        EngineConfig.from_dict({"init_fine_passes": 4})
    assert "exterior.refine_passes" in caplog.text


def test_removed_options_are_accepted_only_at_their_old_default():
    assert EngineConfig.from_dict(dict(REMOVED_KEYS), warn_legacy=False) == EngineConfig()
    with pytest.raises(EngineError, match="placement='sample' was removed"):
        EngineConfig.from_dict({"placement": "sample"})
    with pytest.raises(EngineError, match="context=False was removed"):
        EngineConfig.from_dict({"context": False})


@pytest.mark.parametrize("data, match", [
    ({"iterations": 2.5}, "iterations must be an integer"),
    ({"init.passes": "many"}, "init.passes must be an integer"),
    ({"optimiser": {"lr_density": True}}, "optimiser.lr_density must be a number"),
    ({"init": {"support": 1}}, "init.support must be true or false"),
    ({"init.tv_weight_final": "x"}, "init.tv_weight_final must be float | None"),
    ({"lattice.spacings": 2}, "unknown configuration key.*lattice.spacings"),
    ({"lr_everything": 1.0}, "unknown configuration key.*lr_everything"),
    ({"backend": "opencl"}, "backend must be one of"),
    ({"init.relaxation": 2.5}, "init.relaxation must be in"),
])
def test_wrong_types_and_ranges_name_the_key(data, match):
    with pytest.raises(EngineError, match=match):
        EngineConfig.from_dict(data)


def test_ints_are_accepted_for_floats_and_converted():
    cfg = EngineConfig.from_dict({"optimiser.lambda_tv": 0, "init.tv_weight": 1})
    assert isinstance(cfg.optimiser.lambda_tv, float) and cfg.init.tv_weight == 1.0


def test_load_engine_config_layers_file_overrides_and_values(tmp_path):
    f = tmp_path / "engine.yaml"
    f.write_text("engine:\n  init:\n    passes: 10\n  optimiser:\n    lr_density: 0.002\n  seed: 4\n")
    cfg = load_engine_config(f, ["init.passes=12", "lattice_sigma=0.5"], iterations=30, seed=None)
    assert (cfg.init.passes, cfg.optimiser.lr_density, cfg.seed, cfg.lattice.sigma, cfg.iterations) == \
        (12, 0.002, 4, 0.5, 30)
    j = tmp_path / "engine.json"
    j.write_text(json.dumps({"init": {"passes": 7}}))
    assert load_engine_config(j).init.passes == 7
    with pytest.raises(EngineError, match="not found"):
        load_engine_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("init: [unclosed\n")
    with pytest.raises(EngineError, match="not valid YAML"):
        load_engine_config(tmp_path / "bad.yaml")
    with pytest.raises(EngineError, match="KEY=VALUE"):
        load_engine_config(None, ["init.passes"])


def test_generic_helpers():
    assert parse_overrides(["a.b=1", "c=text", "d=[1, 2]"]) == {"a.b": 1, "c": "text", "d": [1, 2]}
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_mapping(EngineConfig, [1, 2])


def test_read_file_refuses_non_mappings(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        read_file(f)


def test_a_state_of_the_first_engine_is_read_and_one_of_an_unknown_version_refused(tmp_path):
    """A version-1 state (flat configuration, as the first engine wrote it) loads; its config is mapped; a
    state of an unknown version names the versions this engine reads."""
    import numpy as np
    from safetensors.torch import save_file
    import torch

    from ixgs_ros.core.volume import Grid
    from ixgs_ros.engine import ReconstructionEngine

    grid = Grid.centered(8, 2.0, (0, 0, 0))
    flat = {**{k: v for k, v in REMOVED_KEYS.items()}, "iterations": 7, "seed": 2, "device": "cpu",
            "backend": "auto", "init_sart_iterations": 5, "densify": False, "mu_ref": 0.0195}
    meta = {"format": "ixgs-engine-state", "version": 1, "config": flat, "grid": grid.to_dict(),
            "frame": {"center": [0, 0, 0], "scale": 8.0, "mu_ref": 0.0195}, "views": [], "iteration": 0,
            "history": [], "wall_time": 0.0, "order": [], "last_loss": float("nan"), "model_meta": None,
            "exterior_grid": None, "tensors_file": "state.safetensors"}
    (tmp_path / "state.json").write_text(json.dumps(meta))
    save_file({"rng": torch.Generator().manual_seed(2).get_state()}, str(tmp_path / "state.safetensors"))
    eng = ReconstructionEngine.load(tmp_path)
    assert eng.config.init.passes == 5 and eng.config.iterations == 7 and np.array_equal(eng.grid.affine, grid.affine)
    meta["version"] = 9
    (tmp_path / "state.json").write_text(json.dumps(meta))
    with pytest.raises(EngineError, match="v9 .*reads ixgs-engine-state v1, v2"):
        ReconstructionEngine.load(tmp_path)
