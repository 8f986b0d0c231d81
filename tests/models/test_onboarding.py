"""Onboarding a domain: only its adapter trains, everything the other domains use stays bit-identical."""
import numpy as np
import pytest
import tensorflow as tf

from models import model as model_lib
from models import onboarding
from models.features import DOMAIN_INDEX
from tests.models import zoo
from tests.models.test_warm_start import NEW_SPEC, OLD_SPEC, OLD_VOCABULARIES, _TransformOutput, _sizes


@pytest.fixture(scope='module')
def production(tmp_path_factory):
  """A production MLoRA model on the three old domains, its adapters trained (non-zero), and its folder."""
  model = zoo.build(adaptation='mlora', freeze_backbone=True, spec=OLD_SPEC, vocab_sizes=_sizes(OLD_VOCABULARIES),
                    options={'alpha': 4})
  rng = np.random.default_rng(1)
  for weight in model_lib.adaptation_weights(model):
    weight.assign(rng.normal(size=weight.shape) * 0.3)
  serving_dir = tmp_path_factory.mktemp('production') / 'Format-Serving'
  (serving_dir / 'assets').mkdir(parents=True)
  for column, tokens in OLD_VOCABULARIES.items():
    (serving_dir / 'assets' / column).write_bytes(b''.join(t + b'\n' for t in tokens))
  return model, str(serving_dir)


def _onboard(production, new_domains=('d',)):
  model, serving_dir = production
  return onboarding.onboarding_model(NEW_SPEC, _sizes(OLD_VOCABULARIES), new_domains, model,
                                     _TransformOutput(OLD_VOCABULARIES), serving_dir, zoo.HIDDEN,
                                     zoo.EMBEDDING_DIM, 'mlp', {'alpha': 4})


def test_only_the_new_domains_adapter_trains(production):
  old_model, _ = production
  model = _onboard(production)
  features = zoo.features(n=256, num_domains=NEW_SPEC.num_domains)
  old_domains = features[DOMAIN_INDEX].numpy() < 3
  before = model(features).numpy()
  old_features = {k: tf.boolean_mask(v, old_domains) for k, v in features.items()}
  np.testing.assert_allclose(before[old_domains], old_model(old_features).numpy(), rtol=1e-6)

  zoo.fit(model, features, zoo.coin_flips(256, seed=2), epochs=2, batch_size=64)

  after = model(features).numpy()
  np.testing.assert_array_equal(after[old_domains], before[old_domains])  # old domains: bit-identical scores
  assert not np.allclose(after[~old_domains], before[~old_domains])
  old_layers = {layer.name: layer for layer in old_model.layers}
  for layer in model.layers:
    for weight in layer.weights:
      name = weight.name.split('/')[-1].split(':')[0]
      old = {w.name.split('/')[-1].split(':')[0]: w.numpy() for w in old_layers[layer.name].weights}[name]
      if name == 'lora_a':  # [d_in, domains * rank]: the old domains' columns kept
        np.testing.assert_array_equal(weight.numpy()[:, :old.shape[1]], old)
      elif name == 'lora_b':  # [domains * rank, units]: the old domains' rows kept, the new one's trained
        np.testing.assert_array_equal(weight.numpy()[:old.shape[0]], old)
        assert np.abs(weight.numpy()[old.shape[0]:]).sum() > 0
      elif layer.name == 'embedding_domain_index':
        np.testing.assert_array_equal(weight.numpy()[:4], old)  # a, b, c and 'd' = the old unknown row
      else:
        np.testing.assert_array_equal(weight.numpy(), old)


def test_wrong_domains_are_refused(production):
  with pytest.raises(ValueError, match='not in the feature spec'):
    _onboard(production, ['e'])
  with pytest.raises(ValueError, match=r"\['d'\], are the ones to onboard"):
    _onboard(production, ['c'])


def test_a_production_model_without_adapters_is_refused(production):
  backbone = zoo.build(spec=OLD_SPEC, vocab_sizes=_sizes(OLD_VOCABULARIES))
  with pytest.raises(ValueError, match='needs an MLoRA production model'):
    _onboard((backbone, production[1]))


def test_a_calibrated_production_model_keeps_its_calibration_and_the_new_domain_starts_from_the_unknown_row(
    production):
  calibrated = zoo.build(adaptation='mlora', freeze_backbone=True, spec=OLD_SPEC, vocab_sizes=_sizes(OLD_VOCABULARIES),
                         options={'alpha': 4, 'calibrate': True})
  old = np.random.default_rng(3).normal(size=(OLD_SPEC.num_domains + 1, 2)).astype(np.float32)
  model_lib.calibration_layer(calibrated).calibration.assign(old)
  model = _onboard((calibrated, production[1]))
  new = model_lib.calibration_layer(model).calibration.numpy()
  np.testing.assert_array_equal(new[:3], old[:3])
  np.testing.assert_array_equal(new[3], old[3])  # 'd' starts from the production model's unknown-domain row
  np.testing.assert_array_equal(new[4], old[3])  # which stays the unknown domain's
