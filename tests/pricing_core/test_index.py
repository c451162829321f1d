import numpy as np
from hypothesis import HealthCheck, given, settings

from pricing_core import evaluate as ev
from pricing_core.bench import synthetic_campaigns
from pricing_core.campaigns import CampaignTable
from pricing_core.opportunities import OpportunityBatch
from pricing_core.reference import _targeted

from tests.pricing_core.pricing_strategies import campaign_specs, opportunities


def _index_targeted(specs, opps):
    """The campaigns the targeting index lets through, per opportunity, as sets."""
    table = CampaignTable.from_specs(specs)
    batch = OpportunityBatch.encode(table, opps)
    n_words = table.kernel.words.shape[1]
    out = []
    for i in range(len(opps)):
        scratch = np.empty((2, n_words), np.uint64)
        words = scratch[ev._targeted_words(i, table.kernel.words, table.kernel.postings,
                                           batch.rows, scratch)]
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")
        assert not bits[len(specs):].any(), "index set a bit past the last campaign"
        out.append(set(np.flatnonzero(bits[:len(specs)]).tolist()))
    return out


def _reference_targeted(specs, opps):
    return [{c for c, spec in enumerate(specs) if _targeted(spec, o)} for o in opps]


@settings(max_examples=300, deadline=None)
@given(specs=campaign_specs(), opps=opportunities())
def test_index_never_prunes_an_eligible_campaign_and_admits_no_other(specs, opps):
    assert _index_targeted(specs, opps) == _reference_targeted(specs, opps)


# Large campaign sets are the point (as in test_evaluate's twin), so generation is slow.
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
@given(specs=campaign_specs(n_max=300), opps=opportunities(n_max=8))
def test_index_is_exact_past_one_word(specs, opps):
    # More than 64 campaigns: postings span several words, some of them empty.
    assert _index_targeted(specs, opps) == _reference_targeted(specs, opps)


def test_postings_hold_only_non_zero_words_in_order():
    ix = CampaignTable.from_specs(synthetic_campaigns(500)).index
    assert (ix.posting_bits != 0).all()
    for p in range(ix.n_postings):
        words = ix.posting_word[ix.posting_ptr[p]:ix.posting_ptr[p + 1]]
        assert (np.diff(words) > 0).all()
