import pytest

from vqzoo.configs import ConvConfig, MLPConfig, ModelConfig, QuantizerConfig, TrainConfig


def test_round_trip_is_exact():
  for config in (ModelConfig(), ModelConfig(arch="conv", image_shape=(32, 32, 3),
                                            quantizer=QuantizerConfig(128, 16, ema=True))):
    assert ModelConfig.from_dict(config.to_dict()) == config
  assert TrainConfig.from_dict(TrainConfig(steps=7).to_dict()) == TrainConfig(steps=7)


def test_seed_defaults():
  config = ModelConfig()
  assert config.mlp == MLPConfig((128, 64), (128,))
  assert (config.quantizer.num_embeddings, config.quantizer.embedding_dim) == (512, 64)
  assert config.quantizer.commitment_cost == 0.25


@pytest.mark.parametrize("data, field", [
    ({"arch": "mlp", "typo": 1}, "typo"),
    ({"quantizer": {"num_embeddings": 4, "colour": 2}}, "colour"),
])
def test_unknown_keys_are_refused(data, field):
  with pytest.raises(ValueError, match=field):
    ModelConfig.from_dict(data)


@pytest.mark.parametrize("make, field", [
    (lambda: QuantizerConfig(num_embeddings=0), "num_embeddings"),
    (lambda: QuantizerConfig(embedding_dim=-3), "embedding_dim"),
    (lambda: QuantizerConfig(decay=1.5), "decay"),
    (lambda: QuantizerConfig(decay=-0.1), "decay"),
    (lambda: QuantizerConfig(commitment_cost=-0.25), "commitment_cost"),
    (lambda: QuantizerConfig(epsilon=0.0), "epsilon"),
    (lambda: ModelConfig(arch="transformer"), "arch"),
    (lambda: ModelConfig(arch="conv", image_shape=(30, 30, 1)), "image_shape"),
    (lambda: ModelConfig(image_shape=(28, 28)), "image_shape"),
    (lambda: ModelConfig(arch="mlp", conv=ConvConfig()), "conv"),
    (lambda: ModelConfig(arch="conv", mlp=MLPConfig()), "mlp"),
    (lambda: MLPConfig(encoder_sizes=(128, 0)), "encoder_sizes"),
    (lambda: ConvConfig(num_hiddens=33), "num_hiddens"),
    (lambda: TrainConfig(batch_size=0), "batch_size"),
])
def test_invalid_configs_name_the_field(make, field):
  with pytest.raises(ValueError, match=field):
    make()
