import json

import pytest
from conftest import CONFIGS_DIR

from jaxgen import config as config_lib
from jaxgen.errors import UserError


def _config():
    return config_lib.load_config("moment_stab_mnist", CONFIGS_DIR)


def test_study_defaults_match_the_reference():
    c = _config()
    assert c.exp == "moment_stab_mnist"
    assert (c.epochs, c.batch_size, c.z_dim, c.val_examples) == (20, 100, 100, 5000)
    assert c.learning_rates == (0.01, 0.001, 0.0001) and c.moment_weights == (0.0, 0.1)
    assert (c.model.bn_momentum, c.model.bn_epsilon, c.loss.real_label) == (0.99, 1e-3, 0.9)
    quick = config_lib.load_config("moment_stab_mnist_quick", CONFIGS_DIR)
    assert quick.learning_rates == c.learning_rates and quick.epochs < c.epochs


def test_the_moment_study_experiments_are_the_issued_designs():
    """The three CPU-scale experiments of the study: the arms, seeds, lengths and evaluation
    cadence their reports state, each one full MNIST training split and a paired design."""
    designs = {"moment_stab_claim2": ((0.0001,), 5, 5, 275),
               "moment_stab_claims13": ((0.01, 0.001), 4, 3, 165),
               "moment_stab_horizon": ((0.0001,), 1, 20, 0)}
    for exp, (lrs, seeds, epochs, every) in designs.items():
        c = config_lib.load_config(exp, CONFIGS_DIR)
        assert (c.learning_rates, len(c.seeds), c.epochs, c.eval_every_steps) == (
            lrs, seeds, epochs, every), exp
        assert c.moment_weights == (0.0, 0.1) and c.train_examples == -1 and c.data_seed == -1
        assert c.eval_samples == 2000 and c.fd_threshold == 50.0


def test_overrides_are_typed():
    c = config_lib.apply_overrides(_config(), {
        "epochs": "3", "learning_rates": "(0.1, 1)", "model.d_channels": "(8,16)",
        "g_optimizer.b1": "0", "tensorboard": "false", "d_optimizer.name": "sgd", "seeds": "0",
        "g_optimizer.schedule.warmup_steps": "7"})
    assert c.epochs == 3 and c.learning_rates == (0.1, 1.0) and c.model.d_channels == (8, 16)
    assert c.g_optimizer.b1 == 0.0 and isinstance(c.g_optimizer.b1, float)
    assert c.d_optimizer.b1 == 0.9 and c.g_optimizer.schedule.warmup_steps == 7
    assert c.tensorboard is False and c.d_optimizer.name == "sgd" and c.seeds == (0,)


@pytest.mark.parametrize("overrides, message", [
    ({"epoch": "3"}, r"Unknown config key --config.epoch .*Did you mean --config.epochs"),
    ({"model.g_hiden": "3"}, "Did you mean --config.model.g_hidden"),
    ({"epochs": "2.5"}, "wrong type.*expected int"),
    ({"epochs": "many"}, "wrong type"),
    ({"tensorboard": "maybe"}, "expected true or false"),
    ({"learning_rates": "('a',)"}, "expected a list of float"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(UserError, match=message):
        config_lib.apply_overrides(_config(), overrides)


def test_locked_against_typos():
    c = _config()
    with pytest.raises(AttributeError):
        c.epoch = 3


def test_unknown_experiment_lists_known_ones():
    with pytest.raises(UserError, match="moment_stab_mnist.*Known experiments: .*moment_stab"):
        config_lib.load_config("moment_stab_mnst", CONFIGS_DIR)


def test_workdir_guard(tmp_path):
    c = _config()
    config_lib.check_workdir(str(tmp_path / "new"), c)  # a new workdir is fine
    config_lib.write_config(str(tmp_path), c)
    more = config_lib.apply_overrides(_config(), {"epochs": "40", "seeds": "(0, 1, 2)"})
    config_lib.check_workdir(str(tmp_path), more)  # continuing and adding runs is fine
    other = _config()
    with other.unlocked():
        other.exp = "another_study"
    with pytest.raises(UserError, match="holds the experiment 'moment_stab_mnist'"):
        config_lib.check_workdir(str(tmp_path), other)
    wider = config_lib.apply_overrides(_config(), {"model.g_hidden": "512"})
    with pytest.raises(UserError, match="model"):
        config_lib.check_workdir(str(tmp_path), wider)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["g_hidden"] == 1024
