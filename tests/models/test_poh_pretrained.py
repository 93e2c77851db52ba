"""models/poh.py with a pretrained encoder, offline: a tiny randomly initialised BERT and its
tokenizer are saved to a folder and loaded through the same code a run uses (poh.load_encoder).

    .venv/bin/python -m pytest -q tests/models/test_poh_pretrained.py
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from models import poh, treebank                        # noqa: E402
from tests.taskctx import StoppingContext, metrics_of   # noqa: E402

TINY = {"d_model": 32, "n_heads": 4, "d_ff": 64, "n_train_sents": 64, "n_dev_sents": 24, "epochs": 1,
        "batch_size": 16, "lr": 1e-3, "log_every": 2, "seed": 7}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A folder holding a 1-layer, 16-wide random BERT and a word-piece tokenizer over the synthetic lexicon."""
    folder = tmp_path_factory.mktemp("tiny encoder")
    words = sorted({w.lower() for ws in treebank.LEXICON.values() for w in ws} | {".", ",", "that"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words[:-8] + ["##s", "##ed"]   # some words split or unknown
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_words_read_their_first_subword(encoder_dir):
    _, tokenizer = poh.load_encoder(encoder_dir)
    forms = ["The", "dogs", "walked", "zzzz", "."]
    ids, first = poh.subwords(tokenizer, forms)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert first[0] == 0 and len(first) == len(forms) + 1
    got = [pieces[first[i + 1]] for i in range(len(forms))]
    assert (got[0], got[1], got[3], got[4]) == ("the", "dog", "[UNK]", ".")           # dogs = dog ##s
    assert first[1:] == sorted(first[1:]) and len(set(first[1:])) == len(forms)


def test_a_run_fine_tunes_the_pretrained_encoder(encoder_dir, tmp_path):
    cfg = {**TINY, "encoder": encoder_dir}
    before = poh.load_encoder(encoder_dir)[0].state_dict()
    m = poh.train(cfg, StoppingContext(tmp_path, cfg, every_steps=2))
    assert 0 <= m["dev_uas"] <= 1 and m["steps"] == 4 and m["train_sentences"] == 64
    enc, _ = poh.load_encoder(encoder_dir)
    model = poh.build_model(poh.resolve(cfg), 10, enc)
    assert not hasattr(model, "words") and isinstance(model.proj, torch.nn.Linear)     # 16 -> 32
    # the encoder is trained with the rest: its weights in the last checkpoint differ from the saved ones
    from jobs.runtime import checkpoint
    saved = checkpoint.load_latest(tmp_path / "checkpoints")[1]["state"]["model"]
    key = "embeddings.word_embeddings.weight"
    assert saved[f"pretrained.{key}"].shape == before[key].shape
    assert not torch.equal(saved[f"pretrained.{key}"], before[key])
    assert any("route_weights" in r for r in metrics_of(tmp_path))


def test_a_missing_encoder_is_named_and_nothing_is_downloaded(tmp_path):
    with pytest.raises(ValueError, match=r"encoder '.*no-such-encoder' is neither a folder .*runs never download"):
        poh.load_encoder(str(tmp_path / "no-such-encoder"))
    with pytest.raises(ValueError, match="encoder must be"):
        poh.resolve({"encoder": ""})
