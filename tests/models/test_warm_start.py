"""Cross-run warm start: the production model's backbone weights go into the next span's backbone."""
import dataclasses

import numpy as np
import pytest

from models import model as model_lib
from models import warm_start
from tests.models import zoo

OLD_SPEC = zoo.SPEC
NEW_SPEC = dataclasses.replace(OLD_SPEC, domains=['a', 'b', 'c', 'd'])  # a domain onboarded
OLD_VOCABULARIES = {'item': [f'i{k}'.encode() for k in range(19)], 'tags': [f't{k}'.encode() for k in range(7)]}
# The next span: item frequencies changed the order, i18 is gone and i99 is new; tags lost t6.
NEW_VOCABULARIES = {'item': [b'i99'] + OLD_VOCABULARIES['item'][:18][::-1], 'tags': OLD_VOCABULARIES['tags'][:6]}


def _sizes(vocabularies):  # as models.preprocessing.vocabulary_sizes lays the tables out: OOV, padding
  return {'item': len(vocabularies['item']) + 1, 'user': 50, 'tags': len(vocabularies['tags']) + 2}


class _TransformOutput:
  def __init__(self, vocabularies):
    self.vocabularies = vocabularies

  def vocabulary_by_name(self, name):
    return self.vocabularies[name]


@pytest.fixture(scope='module', params=zoo.BACKBONE_NAMES)
def warm_started(request, tmp_path_factory):
  """(production MLoRA model on OLD_SPEC, next span's backbone after warm_start, its weights before).

  The production model is the session's fine-tuned MLoRA model (its adapters trained), read only."""
  assert _sizes(OLD_VOCABULARIES) == zoo.VOCAB_SIZES  # the production model's tables
  base = zoo.fine_tuned(request.param, 'mlora').model
  serving_dir = tmp_path_factory.mktemp('production') / 'Format-Serving'
  assets = serving_dir / 'assets'
  assets.mkdir(parents=True)
  for column, tokens in OLD_VOCABULARIES.items():
    (assets / column).write_bytes(b''.join(t + b'\n' for t in tokens))
  model = zoo.build(request.param, spec=NEW_SPEC, vocab_sizes=_sizes(NEW_VOCABULARIES))
  fresh = {w.name: w.numpy() for w in model.weights}
  warm_start.warm_start(model, base, NEW_SPEC, _TransformOutput(NEW_VOCABULARIES), str(serving_dir))
  return base, model, fresh


def _table(model, name):
  return model.get_layer(name).weights[0].numpy()


def test_vocabulary_rows_follow_tokens():
  rows = warm_start.vocabulary_rows([b'a', b'b', b'c'], [b'c', b'a', b'new'])
  np.testing.assert_array_equal(rows, [2, 0, -1, 3])  # the OOV bucket onto the old one
  np.testing.assert_array_equal(warm_start.vocabulary_rows([b'a', b'b'], [b'b', b'a'], padding=1), [0, 2, 1, 3])
  # Onboarding: a new token starts where the old model put it, in the OOV row.
  rows = warm_start.vocabulary_rows([b'a', b'b', b'c'], [b'c', b'a', b'new'], new_tokens_as_oov=True)
  np.testing.assert_array_equal(rows, [2, 0, 3, 3])


def test_domain_rows_keep_known_domains_and_start_new_ones_as_unknown():
  np.testing.assert_array_equal(warm_start.domain_rows(3, 4), [0, 1, 2, 3, 3])
  np.testing.assert_array_equal(warm_start.domain_rows(3, 3), [0, 1, 2, 3])


def test_dense_weights_are_copied_and_adapters_left_behind(warm_started):
  base, model, _ = warm_started
  assert model_lib.adaptation_weights(model) == []
  for name in ('dense_0', 'dense_1', 'logit'):
    base_weights = {w.name: w.numpy() for w in base.get_layer(name).weights}
    for weight in model.get_layer(name).weights:
      old = base_weights[weight.name]  # a per-domain weight (STAR's) grew by the new domain: the old ones first
      np.testing.assert_array_equal(weight.numpy()[tuple(slice(0, n) for n in old.shape)], old)


def test_vocabulary_embeddings_move_with_their_tokens(warm_started):
  base, model, fresh = warm_started
  old, new = _table(base, 'embedding_item_xf'), _table(model, 'embedding_item_xf')
  for row, token in enumerate(NEW_VOCABULARIES['item'][1:], start=1):
    np.testing.assert_array_equal(new[row], old[OLD_VOCABULARIES['item'].index(token)])
  np.testing.assert_array_equal(new[0], fresh['embedding_item_xf/embeddings:0'][0])  # i99: new this span
  np.testing.assert_array_equal(new[-1], old[-1])  # OOV
  old_tags, new_tags = _table(base, 'embedding_tags_xf'), _table(model, 'embedding_tags_xf')
  np.testing.assert_array_equal(new_tags[:7], old_tags[:7])  # padding and t0..t5 keep their rows
  np.testing.assert_array_equal(new_tags[-1], old_tags[-1])


def test_hashed_ids_are_copied_as_they_are(warm_started):
  base, model, _ = warm_started
  np.testing.assert_array_equal(_table(model, 'embedding_user_xf'), _table(base, 'embedding_user_xf'))


def test_new_domain_starts_from_the_unknown_domain_row(warm_started):
  base, model, _ = warm_started
  old, new = _table(base, 'embedding_domain_index'), _table(model, 'embedding_domain_index')
  assert new.shape[0] == NEW_SPEC.num_domains + 1
  np.testing.assert_array_equal(new[:3], old[:3])
  np.testing.assert_array_equal(new[3], old[3])  # 'd' was unknown to the production model
  np.testing.assert_array_equal(new[4], old[3])  # the unknown-domain row
